"""Reading a container's log: bounded in size, and, for a suite, its end read again when the test output
filled the limit before the JUnit report; `tail` bounds what a report shows of it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import kubernetes.client
import kubernetes.watch
from kubernetes.client.exceptions import ApiException

from bot.config import InfrastructureError
from bot.runtimes.kubernetes.jobobjects import junit_end
from bot.runtimes.kubernetes.rawapi import API_TIMEOUT_S, Obj, api_message

LOG_LIMIT_BYTES = 100 * 1024 * 1024
"""At most this much of a pod's log is read (the API server's `limitBytes`)."""

TAIL_LINES_FOR_REPORT = 2_000_000
"""When the log is over LOG_LIMIT_BYTES: the last this many lines are read again to find the JUnit
report at its end (a 64 MiB report is about 1.2 million lines of base64)."""

TAIL_LINES = 60
TAIL_CHARS = 8_000


def read_pod_log(
    api: kubernetes.client.ApiClient,
    *,
    namespace: str,
    pod: str,
    container: str,
    limit_bytes: int = LOG_LIMIT_BYTES,
    since_seconds: int | None = None,
    tail_lines: int | None = None,
) -> str | None:
    """A container's log as text (undecodable bytes replaced); None when the pod or container is gone
    or has no log yet."""
    core = kubernetes.client.CoreV1Api(api)
    kwargs: dict[str, Any] = {"container": container, "limit_bytes": limit_bytes}
    if since_seconds is not None:
        kwargs["since_seconds"] = since_seconds
    if tail_lines is not None:
        kwargs["tail_lines"] = tail_lines
    try:
        response = core.read_namespaced_pod_log(
            pod, namespace, _preload_content=False, _request_timeout=API_TIMEOUT_S, **kwargs
        )
    except ApiException as exc:
        if exc.status in (400, 404):  # gone, or "container … is waiting to start" / "not valid"
            return None
        raise InfrastructureError(
            f"cannot read the log of pod {namespace}/{pod}: {api_message(exc)}"
        ) from None
    try:
        data = response.data
    finally:
        with contextlib.suppress(Exception):
            response.release_conn()
    if isinstance(data, bytes):
        return data.decode("utf-8", errors="replace")
    return str(data)


def tail(text: str, *, lines: int = TAIL_LINES, limit: int = TAIL_CHARS) -> str:
    """The end of a log, bounded in lines and characters (as the local runtime bounds its tails)."""
    return "\n".join(text[-limit:].splitlines()[-lines:])


def _pod_log(
    api: kubernetes.client.ApiClient, namespace: str, pod: Obj, container: str, nonce: str | None
) -> str:
    name = str(pod["metadata"]["name"])
    try:
        log = read_pod_log(api, namespace=namespace, pod=name, container=container)
    except InfrastructureError:
        return ""
    if log is None:
        return ""
    end = junit_end(nonce) if nonce else None
    if len(log.encode("utf-8", errors="replace")) >= LOG_LIMIT_BYTES and end and end not in log:
        # The test output filled the limit before the report: read the end of the log instead.
        with contextlib.suppress(InfrastructureError):
            ending = read_pod_log(
                api, namespace=namespace, pod=name, container=container, tail_lines=TAIL_LINES_FOR_REPORT
            )
            if ending and end in ending:
                return "[loopgate] the log is over 100 MiB: only its end was read\n" + ending
    return log
