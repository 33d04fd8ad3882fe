"""Envoy's admin API over its Unix socket: the few endpoints the data plane reads, and the stat
names it reads them by."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlencode

from bot.runtimes.local import xds
from bot.runtimes.local.xds import DataPlaneSpec

# Envoy acks a file in about a millisecond and answers a filtered stats read in well under one;
# polls start that fast and back off, so a slow wait (DNS, long requests) does not keep it busy.
_POLL_S = 0.001
_POLL_MAX_S = 0.02
_ADMIN_TIMEOUT_S = 2.0


class EnvoyError(Exception):
    """Envoy could not be started, reconfigured or stopped; the message says what to do about it."""


def _eds_prefix(service: str) -> str:
    return f"cluster.{xds.service_cluster_name(service)}"


def _prefixes(spec: DataPlaneSpec) -> list[str]:
    """Stat prefixes of every xDS subscription: one EDS per service."""
    return [_eds_prefix(service) for service in sorted(spec.listeners)]


class LogProgress(NamedTuple):
    """Where Envoy's access log stands, by Envoy's own counters since it started.

    Envoy logs a request when its stream ends, which is before the response's last bytes leave for
    the client; the entry goes to an in-memory buffer that a flush thread writes to the file every
    ``--file-flush-interval-msec`` (or sooner when it grows large). Only the access log writes through
    that buffer (Envoy's own log is its stdout)."""

    answered: int
    """Requests answered at every service listener (``downstream_rq_completed``, summed)."""
    entries: int
    """Access log entries handed to the file writer (``filesystem.write_buffered``)."""
    pending: int
    """Bytes of them not written to the file yet (``filesystem.write_total_buffered``)."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix socket: the standard client, only `connect` differs."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        # Through /proc/self/fd: the socket's full path may be longer than a socket address allows.
        directory = os.open(self._path.parent, os.O_PATH | os.O_DIRECTORY)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(f"/proc/self/fd/{directory}/{self._path.name}")
        except OSError:
            sock.close()
            raise
        finally:
            os.close(directory)
        self.sock = sock


class _Admin:
    """Just the few admin endpoints the data plane reads, over one keep-alive connection."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: http.client.HTTPConnection | None = None

    def __enter__(self) -> _Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def is_live(self) -> bool:
        try:
            status, text = self._request("/ready")
        except (OSError, http.client.HTTPException):
            return False
        return status == 200 and text.strip() == "LIVE"

    def xds_stats(self) -> dict[str, str]:
        """Version text readouts of every EDS subscription (one per service): text readouts alone,
        which Envoy lists without walking its counters and gauges."""
        pattern = r"^cluster\.[^.]+\.version_text$"
        params = {"usedonly": "", "type": "TextReadouts"}
        text = self._get("/stats", {**params, "filter": pattern})
        out: dict[str, str] = {}
        for line in text.splitlines():
            name, sep, value = line.partition(": ")
            if not sep:
                continue
            value = value.strip()
            if value.startswith('"'):
                value = json.loads(value)
            out[name.strip()] = value
        return out

    def in_flight(self, services: Collection[str]) -> int:
        """Requests in flight to (or queued for) any instance of ``services``."""
        names = "|".join(re.escape(xds.service_cluster_name(service)) for service in services)
        pattern = rf"^cluster\.(?:{names})\.upstream_rq_(?:pending_)?active$"
        text = self._get("/stats", {"usedonly": "", "type": "Gauges", "filter": pattern})
        return sum(
            int(value) for _, sep, value in (line.partition(": ") for line in text.splitlines()) if sep
        )

    def log_progress(self) -> LogProgress:
        """Envoy's own count of answered requests and of access log entries, and how much of those is
        still in its write buffer (see :class:`LogProgress`)."""
        prefix = re.escape(xds.stat_prefix(""))
        pattern = (
            r"^(?:filesystem\.(?:write_buffered|write_total_buffered)"
            rf"|http\.{prefix}[^.]+\.downstream_rq_completed)$"
        )
        answered = entries = pending = 0
        for line in self._get("/stats", {"usedonly": "", "filter": pattern}).splitlines():
            name, sep, value = line.partition(": ")
            if not sep or not value.strip().isdigit():
                continue
            if name.endswith(".downstream_rq_completed"):
                answered += int(value)
            elif name == "filesystem.write_buffered":
                entries = int(value)
            elif name == "filesystem.write_total_buffered":
                pending = int(value)
        return LogProgress(answered=answered, entries=entries, pending=pending)

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> str:
        try:
            status, text = self._request(path + ("?" + urlencode(params) if params else ""))
        except (OSError, http.client.HTTPException) as exc:
            raise EnvoyError(f"envoy admin {path} failed: {exc}") from exc
        if status != 200:
            raise EnvoyError(f"envoy admin {path} failed: HTTP {status}: {text.strip()[:200]}")
        return text

    def _request(self, target: str) -> tuple[int, str]:
        reused = self._conn is not None
        if self._conn is None:
            self._conn = _UnixHTTPConnection(self._path, timeout=_ADMIN_TIMEOUT_S)
        try:
            self._conn.request("GET", target)
            response = self._conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            if not reused:
                raise
            return self._request(target)  # the kept-alive connection had been closed; once more
        if response.will_close:
            self.close()
        return response.status, body.decode(errors="replace")


def _await_logged(admin: _Admin, log: Path, until: float) -> bool:
    """Wait until every request Envoy had answered when called is in the access log file, or give up
    at ``until``; True when it is.

    First until Envoy has logged as many entries as it had answered requests (an entry is made as a
    request's stream ends, an instant after the answer counted), then until those entries' bytes are
    in the file: the buffer is empty, or the file has grown to the size it had plus what was buffered
    when the entries were counted (read before the file's size, so it bounds from above what must be
    written; more traffic only writes more). Entries from other sandboxes' traffic count too, which
    can only make the wait longer, never short of this sandbox's own."""
    progress = admin.log_progress()
    wanted = progress.answered
    size_wanted: int | None = None
    delay = _POLL_S
    while True:
        if size_wanted is None and progress.entries >= wanted:
            if progress.pending == 0:
                return True
            size_wanted = _file_size(log) + progress.pending
        elif size_wanted is not None and (progress.pending == 0 or _file_size(log) >= size_wanted):
            return True
        if time.monotonic() >= until:
            return False
        time.sleep(delay)
        delay = min(delay * 1.5, _POLL_MAX_S)
        progress = admin.log_progress()


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
