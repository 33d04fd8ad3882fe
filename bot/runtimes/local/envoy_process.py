"""The data plane's files and processes: ``state.json`` and the xDS files (read back, written
atomically), and the Envoy process they record."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bot.runtimes.local import xds
from bot.runtimes.local.envoy_admin import EnvoyError
from bot.runtimes.local.xds import DataPlaneSpec, Upstream

_LOG_PREFIX = re.compile(r"^\[[^\]]*\]\[\d+\]\[\w+\]\[[\w-]+\] (?:\[[^\]]*\] )?")
_INIT_ERROR = re.compile(r"error `(.+)` initializing config")


@dataclass(frozen=True)
class _State:
    pid: int
    create_time: float
    version: int
    spec: DataPlaneSpec
    acked: Mapping[str, str] = field(default_factory=dict)
    """Stat prefix of each EDS subscription -> the version this Envoy acknowledged when ``spec`` was
    last applied in full; empty when an apply stopped midway."""


_last_loaded: dict[Path, tuple[tuple[int, int, int], _State]] = {}
"""The last state read or written per path, by the file's (inode, mtime, size): the file is replaced by
a rename on every write, so an unchanged key is an unchanged file. Parsing and validating the spec of
a thousand sandboxes would otherwise cost each apply more than its route update."""


def _file_key(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _load_state(path: Path) -> _State | None:
    """The recorded state; None when there is none."""
    try:
        key = _file_key(path)
        cached = _last_loaded.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        _last_loaded.pop(path, None)
        return None
    except (OSError, ValueError) as exc:
        raise EnvoyError(f"{path} is unreadable ({exc}); stop envoy by hand and delete it") from exc
    state = _parse_state(raw)
    _last_loaded[path] = (key, state)
    return state


def _parse_state(raw: Mapping[str, Any]) -> _State:
    return _State(
        pid=int(raw["pid"]),
        create_time=float(raw["create_time"]),
        version=int(raw["version"]),
        spec=_spec_from_json(raw["spec"]),
        acked={str(k): str(v) for k, v in raw.get("acked", {}).items()},
    )


def _save_state(path: Path, state: _State, text: str | None = None) -> None:
    """Write ``state`` (as ``text`` when :func:`_state_text` already made it)."""
    _write_text_atomic(path, text if text is not None else _state_text(state))
    with contextlib.suppress(OSError):
        _last_loaded[path] = (_file_key(path), state)


def _state_text(state: _State) -> str:
    raw = {
        "pid": state.pid,
        "create_time": state.create_time,
        "version": state.version,
        "spec": _spec_to_json(state.spec),
        "acked": dict(state.acked),
    }
    # Compact: with an indent, Python's JSON encoder leaves its C implementation, and with a thousand
    # sandboxes this file alone would cost more than the route update it records.
    return json.dumps(raw, separators=(",", ":")) + "\n"


def _instances(service: str, spec: DataPlaneSpec) -> tuple[Upstream, dict[str, Upstream]]:
    """What the cluster of ``service`` depends on: its baseline and its forks."""
    return spec.baseline[service], xds.forks_of(service, spec)


def _await_unused(pid: int, instances: Collection[Upstream], until: float) -> None:
    """Wait until no TCP connection to ``instances`` is open in Envoy's network namespace, or give up
    at ``until``.

    Read from the kernel's socket table rather than Envoy's per-endpoint stats: those would make
    every stats read walk every sandbox's endpoint. A connection from anyone else to the instance
    counts too, which can only make the wait longer.
    """
    wanted = {_proc_address(up) for up in instances}
    delay = 0.001
    while _connected(pid, wanted) and time.monotonic() < until:
        time.sleep(delay)
        delay = min(delay * 1.5, 0.02)


def _proc_address(up: Upstream) -> str:
    """``up`` as /proc/net/tcp{,6} writes a remote address: the address's 32-bit words in host
    order, hex, then the port."""
    family = socket.AF_INET6 if ":" in up.host else socket.AF_INET
    packed = socket.inet_pton(family, up.host)
    words = "".join(
        f"{int.from_bytes(packed[i : i + 4], sys.byteorder):08X}" for i in range(0, len(packed), 4)
    )
    return f"{words}:{up.port:04X}"


def _connected(pid: int, addresses: set[str]) -> bool:
    tables = ("tcp", "tcp6") if any(len(address) > 13 for address in addresses) else ("tcp",)
    for table in tables:
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split(None, 4)
            # ESTABLISHED, or closing but not yet closed by Envoy (CLOSE_WAIT).
            if len(fields) > 3 and fields[2] in addresses and fields[3] in ("01", "08"):
                return True
    return False


def _write_atomic(path: Path, document: Mapping[str, Any]) -> None:
    # Compact JSON: the fastest to write here and, by the .json name, to parse in Envoy.
    _write_text_atomic(path, json.dumps(document, separators=(",", ":")) + "\n")


def _write_text_atomic(path: Path, text: str) -> None:
    """Write beside the target and rename: Envoy reacts to the rename and never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.rename(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    """A file this module wrote; anything else (missing, edited by hand) reads as empty, so the next
    apply rewrites it."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR ignores sockets in TIME_WAIT but still fails against a listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise EnvoyError(f"envoy: port {port} already in use") from exc


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _live_process(state: _State) -> psutil.Process | None:
    """The recorded Envoy if it still runs; a pid reused by another program does not count."""
    try:
        proc = psutil.Process(state.pid)
        if abs(proc.create_time() - state.create_time) > 1 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    return proc


def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    """Wait for exit; reaps our own child, and counts another parent's unreaped zombie as gone."""
    end = time.monotonic() + timeout
    while True:
        try:
            proc.wait(timeout=0.05)
            return True
        except psutil.TimeoutExpired:
            pass
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > end:
            return False


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # Envoy leads its own session (start_new_session), so its group id is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _last_problem(lines: list[str]) -> str:
    """The most telling log line, without Envoy's timestamp/thread/source prefix."""
    for level in ("[critical]", "[error]", ""):
        for line in reversed(lines):
            if level in line and line.strip():
                text = " ".join(_LOG_PREFIX.sub("", line).split())
                quoted = _INIT_ERROR.search(text)
                return quoted.group(1) if quoted else text
    return "no output"


def _spec_to_json(spec: DataPlaneSpec) -> dict[str, Any]:
    def address(up: Upstream) -> dict[str, Any]:
        return {"host": up.host, "port": up.port}

    return {
        "listeners": dict(spec.listeners),
        "baseline": {name: address(up) for name, up in spec.baseline.items()},
        # Inline, not address(): a thousand sandboxes make this the largest part of writing the state.
        "forks": {
            key: {name: {"host": up.host, "port": up.port} for name, up in svcs.items()}
            for key, svcs in spec.forks.items()
        },
        "baggage_member": spec.baggage_member,
        "header": spec.header,
        "http2": sorted(spec.http2),
    }


def _spec_from_json(raw: Mapping[str, Any]) -> DataPlaneSpec:
    def upstreams(items: Mapping[str, Any]) -> dict[str, Upstream]:
        return {name: Upstream(str(up["host"]), int(up["port"])) for name, up in items.items()}

    return DataPlaneSpec(
        listeners={name: int(port) for name, port in raw["listeners"].items()},
        baseline=upstreams(raw["baseline"]),
        forks={key: upstreams(svcs) for key, svcs in raw["forks"].items()},
        baggage_member=str(raw["baggage_member"]),
        header=str(raw["header"]),
        http2=frozenset(str(name) for name in raw.get("http2", ())),  # absent: written before HTTP/2
    )
