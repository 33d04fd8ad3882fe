"""What the data plane saw in the cluster: the mesh's JSON access log of each pod, read back as
ObservedRequest records (the Kubernetes side of `observed_requests`).

With `access_log_container` (default `istio-proxy`), each pod's sidecar logs one JSON object per request
in the format of docs/kubernetes.md (k8s spec "Mesh access log format"). The serving pod tells the
service and the target (the fork's key, None for a baseline pod); the line tells the tag: the baggage
member `<routing.baggage_member>=<key>` (an exact member, never a substring: `abc123` is not
`abc1234`), else the `x-loopgate-sandbox` header when it is a routing key -- as the local runtime reads
Envoy's log (bot/runtimes/local/accesslog.py).

Without a mesh log, a fork's own container log is the evidence: each line shaped like a common access
log (`"GET /path HTTP/1.1" 200` as uvicorn, gunicorn, nginx, Apache or morgan print it) is one request
tagged for that fork. Those lines are written by the fork's code itself, so they prove less than the
mesh's own.

Logs are hostile input (a service's output, other sandboxes' traffic): no line may crash the reader or
count for a sandbox it was not tagged for.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import kubernetes.client

from bot.config.schema import Routing
from bot.runtimes.baggage import baggage_member
from bot.runtimes.kubernetes.jobs import Obj, read_pod_log
from bot.runtimes.protocol import ObservedRequest

log = logging.getLogger(__name__)

LOG_LIMIT_BYTES = 32 * 1024 * 1024
"""At most this much of one pod's log is read per call."""

MAX_LINE_CHARS = 64 * 1024
"""A longer line is no access-log line loopgate asked for: skipped unparsed."""

ROUTING_KEY_RE = re.compile(r"[a-z0-9]{6,16}")
"""DESIGN "Routing": a routing key (the same rule as bot.runtimes.local.xds.ROUTING_KEY_RE)."""

_METHODS = "GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS|TRACE|CONNECT"
_APP_ACCESS_LINE = re.compile(
    rf'(?:^|[\s"\]-])"?(?P<method>{_METHODS}) (?P<path>/\S{{0,4096}}?)'
    r'(?: HTTP/\d(?:\.\d)?)?"? (?P<status>[1-5]\d\d)\b'
)
"""`"GET /orders?id=1 HTTP/1.1" 200` (uvicorn, gunicorn, nginx/Apache combined, morgan combined/short)
and `GET /orders 200 3.1 ms` (morgan dev/tiny)."""

_OUTBOUND_CLUSTER = ("outbound|", "PassthroughCluster", "BlackHoleCluster")
"""Istio's upstream clusters of a sidecar's outbound traffic (inbound ones: `inbound|<port>||`,
`InboundPassthroughCluster…`). A format that logs `upstream_cluster` (or only server-side requests:
Telemetry `accessLogging.match.mode: SERVER`) keeps callers' lines from counting as served."""


def parse_line(line: str, *, header: str = "x-loopgate-sandbox") -> dict[str, Any] | None:
    """One mesh access-log line as plain fields, or None when it is not one (blank, not JSON, not an
    object, no method or path, an outbound request, too long):

    `{"method": str, "path": str, "status": int, "duration_ms": int, "started_at": str,
    "baggage": str | None, "traceparent": str | None, "sandbox_header": str | None}`

    Envoy's `-` (and null, "") mean missing; numbers may be numbers or strings; anything of the wrong
    type counts as missing. `header` is the routing header (`routing.header`), whose value the log
    carries under `x_loopgate_sandbox` (or the header's own name, `-` and all, or with `_`).
    """
    if len(line) > MAX_LINE_CHARS:
        return None
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        raw = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(raw, dict):
        return None
    method, path = _text(raw.get("method")), _text(raw.get("path"))
    if method is None or path is None:
        return None
    direction = _text(raw.get("direction"))
    cluster = _text(raw.get("upstream_cluster"))
    if (direction is not None and direction.lower() == "outbound") or (
        cluster is not None and cluster.startswith(_OUTBOUND_CLUSTER)
    ):
        return None  # the caller's sidecar logging its own call: the serving pod logs it inbound
    tag = None
    for name in dict.fromkeys(("x_loopgate_sandbox", header, header.replace("-", "_"))):
        tag = _text(raw.get(name))
        if tag is not None:
            break
    return {
        "method": method,
        "path": path,
        "status": _int(raw.get("response_code")),
        "duration_ms": _int(raw.get("duration")),
        "started_at": _text(raw.get("start_time")) or "",
        "baggage": _text(raw.get("baggage")),
        "traceparent": _text(raw.get("traceparent")),
        "sandbox_header": tag,
    }


def routing_key(fields: dict[str, Any], routing: Routing) -> str | None:
    """The sandbox a parsed line was tagged for: the baggage member, else the header when it holds a
    routing key; None when untagged."""
    key = baggage_member(fields.get("baggage"), routing.baggage_member)
    if key is None:
        tag = fields.get("sandbox_header")
        if isinstance(tag, str) and ROUTING_KEY_RE.fullmatch(tag):
            key = tag
    return key


def parse_app_line(line: str) -> tuple[str, str, int] | None:
    """(method, path, status) of a service's own access-log line, or None."""
    if len(line) > MAX_LINE_CHARS:
        return None
    match = _APP_ACCESS_LINE.search(line)
    if match is None:
        return None
    return match["method"], match["path"], int(match["status"])


def read(
    api: kubernetes.client.ApiClient,
    *,
    pods: Sequence[tuple[Obj, str, str | None]],
    container: str | None,
    since: datetime,
    routing: Routing,
    key: str,
) -> list[ObservedRequest]:
    """The requests the pods served since `since` that belong to sandbox `key` or to none (untagged,
    which show where a tag was lost), never another sandbox's. `pods` are (pod, service name, the
    fork's key or None for a baseline pod). With `container` None only forks are read (their own
    request lines: each a request tagged for that fork). A pod whose log cannot be read (gone, no such
    container) adds nothing."""
    since_seconds = _since_seconds(since)
    observed: list[ObservedRequest] = []
    for pod, service, fork_key in pods:
        metadata = pod.get("metadata") or {}
        namespace, name = metadata.get("namespace"), metadata.get("name")
        if not isinstance(namespace, str) or not isinstance(name, str):
            continue
        if container is None:
            if fork_key is None:
                continue
            text = _log(api, namespace, name, _app_container(pod), since_seconds)
            observed.extend(_app_requests(text, service, fork_key))
        else:
            text = _log(api, namespace, name, container, since_seconds)
            observed.extend(_mesh_requests(text, service, fork_key, routing))
    return [r for r in observed if r.routing_key in (key, None)]


# ------------------------------------------------------------------------------------------- helpers


def _mesh_requests(text: str, service: str, fork_key: str | None, routing: Routing) -> list[ObservedRequest]:
    records = []
    for line in text.splitlines():
        fields = parse_line(line, header=routing.header)
        if fields is None:
            continue
        records.append(
            ObservedRequest(
                service=service,
                routing_key=routing_key(fields, routing),
                target=fork_key,
                method=fields["method"],
                path=fields["path"],
                status=fields["status"],
                traceparent=fields["traceparent"],
                started_at=fields["started_at"],
                duration_ms=fields["duration_ms"],
            )
        )
    return records


def _app_requests(text: str, service: str, fork_key: str) -> list[ObservedRequest]:
    records = []
    for line in text.splitlines():
        parsed = parse_app_line(line)
        if parsed is None:
            continue
        method, path, status = parsed
        records.append(
            ObservedRequest(
                service=service,
                routing_key=fork_key,
                target=fork_key,
                method=method,
                path=path,
                status=status,
                traceparent=None,
                started_at="",
                duration_ms=0,
            )
        )
    return records


def _log(api: kubernetes.client.ApiClient, namespace: str, pod: str, container: str, since_s: int) -> str:
    text = read_pod_log(
        api,
        namespace=namespace,
        pod=pod,
        container=container,
        limit_bytes=LOG_LIMIT_BYTES,
        since_seconds=since_s,
    )
    if text is None:
        log.info("no log of container %s in pod %s/%s", container, namespace, pod)
        return ""
    return text


def _app_container(pod: Obj) -> str:
    """The pod's default container (`kubectl.kubernetes.io/default-container`), else its first."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    chosen = annotations.get("kubectl.kubernetes.io/default-container")
    if isinstance(chosen, str) and chosen:
        return chosen
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    return str(containers[0].get("name") or "")


def _since_seconds(since: datetime) -> int:
    """Whole seconds back to `since` (at least 1: the API refuses 0), rounded up."""
    moment = since if since.tzinfo is not None else since.replace(tzinfo=UTC)
    return max(1, math.ceil((datetime.now(UTC) - moment).total_seconds()) + 1)


def _text(value: Any) -> str | None:
    """A string field; Envoy writes a missing value as `-` (or null); other types count as missing."""
    if not isinstance(value, str) or value in ("", "-"):
        return None
    return value


def _int(value: Any) -> int:
    """A number field given as a number or a string; 0 when missing or malformed."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\d{1,12}", value.strip()):
        return int(value.strip())
    return 0
