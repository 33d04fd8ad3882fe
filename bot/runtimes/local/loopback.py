"""One keep-alive HTTP client for the local runtime's own requests to loopback (health checks, diff
probes): making an httpx client costs ~30 ms of CPU (its TLS context), more than the requests it sends,
and a verify sends dozens. It is thread-safe; Envoy routes each request by its own headers, so one
connection serves every sandbox."""

from __future__ import annotations

import threading

import httpx

_CLIENT: httpx.Client | None = None
_LOCK = threading.Lock()


def client() -> httpx.Client:
    global _CLIENT
    with _LOCK:
        if _CLIENT is None:
            _CLIENT = httpx.Client(timeout=30.0, trust_env=False)
        return _CLIENT
