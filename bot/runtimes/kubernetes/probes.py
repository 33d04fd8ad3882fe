"""The diff's probes, sent into the cluster through the API server's service proxy.

`/api/v1/namespaces/{ns}/services/{name}:{port}/proxy{path}` reaches a ready pod of the Service from
inside the cluster; a tagged probe carries the baggage member so the mesh (at the pod's sidecar and at
every later hop) treats it as the sandbox's. The answer is kept as the service gave it: status, headers
(names lower-cased) and the body's bytes. The request goes out on the client's own connection pool with
the client's credentials, but not through `ApiClient.call_api`, which would add a JSON content type,
encode the body as JSON, follow redirects and raise on non-2xx answers.

What the API server answers itself -- a `Status` object saying the Service has no ready endpoint, does
not exist, or may not be proxied to -- is not the service's answer: ProbeError.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import kubernetes.client
import urllib3

from bot.runtimes.kubernetes.jobs import one_line
from bot.runtimes.protocol import ProbeAnswer, ProbeError, ProbeRequest

PROBE_TIMEOUT_S = 30.0
"""As the local runtime's probes."""

PROBE_MAX_BYTES = 64 * 1024 * 1024
"""An answer body above this is not read (a runaway service, not a response to compare)."""

_OWN_STATUS_REASONS = {"ServiceUnavailable", "NotFound", "Forbidden", "Unauthorized"}
"""Reasons of the API server's own `Status` answers at the proxy (no ready endpoint, no such Service,
RBAC refusing services/proxy, credentials refused)."""

_API_SERVER_HEADERS = ("authorization", "impersonate-")
"""The API server consumes these itself (authentication, impersonation): they never reach the service."""


def send(
    api: kubernetes.client.ApiClient,
    *,
    namespace: str,
    service_name: str,
    port: int,
    request: ProbeRequest,
    headers: Mapping[str, str],
) -> ProbeAnswer:
    """Send `request` to the Service `namespace/service_name:port` with `request.headers` and
    `headers` (e.g. the sandbox's baggage; these win); ProbeError (one line) when no answer came back
    from the service."""
    given = {name.lower() for name in headers}
    sent = {**{k: v for k, v in request.headers.items() if k.lower() not in given}, **headers}
    for name in sent:
        if name.lower().startswith(_API_SERVER_HEADERS):
            raise ProbeError(
                f"header {name!r} cannot reach the service through the API server's service proxy,"
                " which consumes it"
            )
    path = request.path if request.path.startswith("/") else "/" + request.path
    url = (
        str(api.configuration.host).rstrip("/")
        + f"/api/v1/namespaces/{quote(namespace, safe='')}/services/"
        + f"{quote(service_name, safe='')}:{int(port)}/proxy{path}"
    )
    query: list[tuple[str, str]] = []
    api.update_params_for_auth(sent, query, ["BearerToken"])
    if query:  # an auth setting that travels in the query string (none does today)
        raise ProbeError(
            "the client's credentials would travel in the query string; not supported for probes"
        )
    try:
        response = api.rest_client.pool_manager.request(
            request.method.upper(),
            url,
            body=request.body,
            headers=sent,
            preload_content=False,
            redirect=False,
            retries=False,
            timeout=urllib3.Timeout(total=PROBE_TIMEOUT_S),
        )
    except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        raise ProbeError(one_line(f"{type(exc).__name__}: {exc}")) from None
    try:
        status, answer_headers, body = _read(response)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise ProbeError(one_line(f"{type(exc).__name__}: {exc}")) from None
    finally:
        response.release_conn()
    own = _api_server_status(status, answer_headers, body, service_name)
    if own is not None:
        raise ProbeError(own)
    return ProbeAnswer(status=status, headers=answer_headers, body=body)


def _read(response: Any) -> tuple[int, dict[str, str], bytes]:
    """Status, lower-cased headers (repeated ones joined with ", ") and the body, bounded."""
    headers: dict[str, str] = {}
    for name, value in response.headers.items():
        key = str(name).lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else str(value)
    body = response.read(PROBE_MAX_BYTES + 1, decode_content=True)
    if len(body) > PROBE_MAX_BYTES:
        raise ProbeError(f"the answer's body is over {PROBE_MAX_BYTES // (1024 * 1024)} MiB")
    return int(response.status), headers, bytes(body)


def _api_server_status(status: int, headers: Mapping[str, str], body: bytes, service_name: str) -> str | None:
    """The API server's own refusal at the proxy, as one line; None when the answer is the service's."""
    if status < 400 or not headers.get("content-type", "").startswith("application/json"):
        return None
    if len(body) > 64 * 1024:
        return None
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not (
        isinstance(obj, dict)
        and obj.get("kind") == "Status"
        and obj.get("apiVersion") == "v1"
        and obj.get("status") == "Failure"
        and obj.get("reason") in _OWN_STATUS_REASONS
    ):
        return None
    details = obj.get("details")
    details = details if isinstance(details, dict) else {}
    if obj["reason"] in ("NotFound", "Forbidden") and details.get("kind") != "services":
        return None  # a Status-shaped answer about something else: the service's own
    message = obj.get("message") if isinstance(obj.get("message"), str) else obj["reason"]
    return one_line(f"the API server answered for {service_name!r}: {message}")
