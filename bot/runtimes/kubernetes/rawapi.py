"""The edge of the official Kubernetes client for Jobs, pods and their logs: it is untyped, so every
response is read as raw JSON (`_preload_content=False`) into plain dicts here, and the API server's
refusals become one line of its own words.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, cast

import urllib3
from kubernetes.client.exceptions import ApiException

from bot.config import InfrastructureError

Obj = dict[str, Any]

API_TIMEOUT_S = 60.0
"""Client-side bound on one ordinary API request."""

_TRANSIENT = (urllib3.exceptions.HTTPError, OSError)


def as_obj(response: Any) -> Obj:
    """A raw (`_preload_content=False`) response's JSON object."""
    try:
        data = json.loads(response.data)
    finally:
        with contextlib.suppress(Exception):
            response.release_conn()
    if not isinstance(data, dict):
        raise InfrastructureError(f"the API server answered {type(data).__name__}, not an object")
    return cast(Obj, data)


def api_message(exc: ApiException) -> str:
    """The API server's own words for a refusal: its Status message, else the HTTP reason."""
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if isinstance(body, str) and body:
        try:
            status = json.loads(body)
        except ValueError:
            status = None
        if isinstance(status, dict) and isinstance(status.get("message"), str):
            return one_line(status["message"])
        return one_line(body[:500])
    return one_line(f"{exc.status} {exc.reason}")


def one_line(text: str, limit: int = 1000) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
