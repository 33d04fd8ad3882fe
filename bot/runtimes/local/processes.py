"""Child processes of the local runtime: started in their own session, identified beyond their pid.

A pid alone can be reused after a crash; `ProcessRef` pairs it with the process's start time, so
`loopgate gc` never signals a stranger that happens to have inherited a dead owner's pid.

Every child is started from one long-lived thread: bubblewrap's `--die-with-parent` (PR_SET_PDEATHSIG)
fires when the *thread* that started the child exits, and a fork started from a short-lived worker
thread would otherwise die as soon as that thread's pool finished.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
from pydantic import BaseModel

from bot.config.schema import HealthCheck
from bot.runtimes.local import grpchealth, loopback
from bot.runtimes.local.confine import Confinement

_LAUNCHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loopgate-launcher")


class ProcessRef(BaseModel):
    pid: int
    create_time: float

    @classmethod
    def of(cls, pid: int) -> ProcessRef:
        return cls(pid=pid, create_time=psutil.Process(pid).create_time())

    @classmethod
    def current(cls) -> ProcessRef:
        return cls.of(os.getpid())

    def alive(self) -> bool:
        try:
            process = psutil.Process(self.pid)
            return (
                abs(process.create_time() - self.create_time) < 0.01
                and process.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.Error:
            return False


def spawn(
    command: str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    log: Path,
    confinement: Confinement | None = None,
    writable: Sequence[Path] = (),
    readonly: Sequence[Path] = (),
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start `sh -c command` as the leader of a new session, so its whole tree can be stopped at once;
    with a `confinement`, inside it, able to write only `writable` (those that exist)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = ["sh", "-c", command]
    if confinement is not None:
        argv = confinement.command(
            argv,
            cwd=cwd,
            writable=[p for p in writable if p.exists()],
            readonly=[p for p in readonly if p.exists()],
            die_with_parent=die_with_parent,
        )
    return _LAUNCHER.submit(_popen, argv, cwd, dict(env), log).result()


def _popen(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


STOP_GRACE_S = 0.5
"""How long a stopped process group may take to exit on SIGTERM before it gets SIGKILL. Nothing of a
sandbox or a baseline needs a graceful exit (their state copies are thrown away, a baseline's are
replaced when it starts again), and Envoy closed its connections to them first: a service still
running after this is waiting for a request no one will finish, or ignores SIGTERM."""

_POLL_MIN_S = 0.002
_POLL_MAX_S = 0.02


def stop_group(ref: ProcessRef, *, grace: float = STOP_GRACE_S) -> bool:
    """SIGTERM the process group led by `ref`, SIGKILL what is left after `grace` seconds; True when
    SIGKILL was needed."""
    return bool(stop_groups([ref], grace=grace))


def stop_groups(refs: list[ProcessRef], *, grace: float = STOP_GRACE_S) -> list[ProcessRef]:
    """Stop several process groups at once: each gets its grace period concurrently, not in turn.

    Returns the groups that were still running after `grace` and got SIGKILL (empty when every one
    exited on SIGTERM)."""
    members: dict[int, psutil.Process] = {}
    leaders: dict[int, ProcessRef] = {}
    living = [ref for ref in refs if ref.alive()]
    groups = _group_members({ref.pid for ref in living})  # one pass over the process table for all
    for ref in refs:
        if ref in living:
            for member in groups.get(ref.pid, []) + _descendants(ref.pid):
                members.setdefault(member.pid, member)
                leaders.setdefault(member.pid, ref)
            _kill_group(ref.pid, signal.SIGTERM)
        else:
            _kill_group(ref.pid, signal.SIGKILL)  # orphans of a dead leader may still hold its group
    alive = _wait_gone(list(members.values()), grace)
    killed = list({leaders[p.pid].pid: leaders[p.pid] for p in alive}.values())
    if alive:
        for ref in refs:
            _kill_group(ref.pid, signal.SIGKILL)
        for process in alive:  # a descendant in a group or namespace of its own
            with contextlib.suppress(psutil.Error):
                process.kill()
        _wait_gone(alive, 2)
    for ref in refs:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(ref.pid, os.WNOHANG)  # reap our own child if it is one
    return killed


def stop_writers(roots: Path | Sequence[Path], *, grace: float = STOP_GRACE_S) -> int:
    """Stop the process group of every process whose stdout or stderr is a file under one of `roots`.

    Every process loopgate spawns writes to a log in the directory of its env or sandbox, so this finds
    one whose pid never reached any record (loopgate was killed between spawn and record); a shell's
    `tail -f` of such a log reads it, it does not write to it, and is left alone. Several roots are
    searched in one pass over the process table. Returns how many processes were found."""
    found = _writers([roots] if isinstance(roots, Path) else list(roots))
    if not found:
        return 0
    own = os.getpgrp()
    groups = {pgid for pgid in (_pgid(p.pid) for p in found) if pgid is not None and pgid != own}
    for pgid in groups:
        _kill_group(pgid, signal.SIGTERM)
    for process in found:
        if _pgid(process.pid) == own:
            with contextlib.suppress(psutil.Error):
                process.terminate()
    alive = _wait_gone(found, grace)
    for pgid in groups:
        _kill_group(pgid, signal.SIGKILL)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    _wait_gone(alive, 2)
    return len(found)


def _wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited; returns those still running at `timeout`.

    A zombie counts as gone: the child of a loopgate process that was killed is reparented to init,
    and an init that never reaps (a container's `sleep`) would otherwise keep it "alive" for the whole
    grace period. Our own children are reaped on the way. Polls start fast and back off: most groups
    are gone within milliseconds of SIGTERM (a confined one dies with its bubblewrap)."""
    deadline = time.monotonic() + timeout
    delay = _POLL_MIN_S
    while True:
        alive = [p for p in processes if _running(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, _POLL_MAX_S)


def _running(process: psutil.Process) -> bool:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(process.pid, os.WNOHANG)  # reap it if it is our own child
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _writers(roots: list[Path]) -> list[psutil.Process]:
    prefixes = tuple(str(root.resolve()).rstrip("/") + "/" for root in roots)
    found: list[psutil.Process] = []
    if not prefixes:
        return found
    for process in psutil.process_iter(["pid"]):
        if process.pid == os.getpid():
            continue
        for fd in (1, 2):
            try:
                target = os.readlink(f"/proc/{process.pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(prefixes):
                found.append(process)
                break
    return found


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _group_members(pgids: set[int]) -> dict[int, list[psutil.Process]]:
    """The members of each of the process groups `pgids`, by group."""
    members: dict[int, list[psutil.Process]] = {}
    if not pgids:
        return members
    for process in psutil.process_iter(["pid"]):
        try:
            pgid = os.getpgid(process.pid)
        except (ProcessLookupError, PermissionError):
            continue
        if pgid in pgids:
            members.setdefault(pgid, []).append(process)
    return members


def _descendants(pid: int) -> list[psutil.Process]:
    """Every process below `pid`, whatever its group: a confined job's processes live in a PID
    namespace the kernel tears down only after its init dies, so they are waited for by name, not only
    reached through the group (the caller must not return while one of them still runs)."""
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_healthy(
    process: subprocess.Popen[bytes], port: int, check: HealthCheck, timeout: float
) -> str | None:
    """Poll the service on `port` until `check` passes; return None when healthy, else why not.

    Polls start at 5 ms and back off to 50 ms: a fast service is seen ready within milliseconds, a slow
    one is not kept busy answering."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    last = "no answer"
    url = f"http://127.0.0.1:{port}{check.path}"
    accepted = check.statuses
    with contextlib.nullcontext(loopback.client()) as client:  # shared: a new client costs ~30 ms
        while time.monotonic() < deadline:
            code = process.poll()
            if code is not None:
                return f"exited with code {code} before becoming healthy"
            if check.tcp or check.grpc is not None:
                # A gRPC check is asked only once the port is the service's own, so a port someone else
                # took never answers SERVING for it.
                problem = _tcp_problem(process, port)
                if problem is None and check.grpc is not None:
                    problem = grpchealth.health_problem(port, check.grpc)
                if problem is None:
                    return None
                last = problem
            else:
                try:
                    status = client.get(url, timeout=1.0).status_code
                    if (200 <= status < 300) if accepted is None else status in accepted:
                        return None
                    last = f"health check answered {status}"
                except httpx.HTTPError as exc:
                    last = f"health check failed: {type(exc).__name__}"
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)
    return f"not healthy after {timeout:g}s ({last})"


def _tcp_problem(process: subprocess.Popen[bytes], port: int) -> str | None:
    """None once the port accepts a connection *and* the listener is the service's own: a port taken
    by someone else between choosing and binding it must not pass for the service being ready."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            pass
    except OSError as exc:
        return f"port {port} refused a connection: {exc.strerror or type(exc).__name__}"
    if _listens(process.pid, port) is False:
        return f"port {port} accepts connections, but another process listens on it"
    return None


def _listens(pid: int, port: int) -> bool | None:
    """Whether `pid` or a descendant listens on `port`; None when that cannot be seen here."""
    try:
        root = psutil.Process(pid)
        for member in [root, *root.children(recursive=True)]:
            for conn in member.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                    return True
    except psutil.AccessDenied:
        return None
    except psutil.Error:
        return False
    return False


def tail(path: Path, *, lines: int = 60, limit: int = 8_000) -> str:
    """The end of a log, bounded in lines and bytes so a chatty process cannot flood the Evidence."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            data = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


_CAUSE = re.compile(r"^\s*(?:[A-Za-z_][\w.]*(?:Error|Exception|Exit)|Error|FATAL|PANIC)\b\S*:")
"""A line that states a cause: a Python or Node exception (`TimeoutError: timed out`, `Error: …`) or
a PostgreSQL FATAL/PANIC, not a framework's closing words after it."""


def cause_line(log: Path) -> str:
    """The one line of a log's end that best says why the process stopped: the last one stating a
    cause (uvicorn ends a failed startup with "Application startup failed. Exiting.", which names
    none), else the last line."""
    lines = [line.strip() for line in tail(log, lines=40).splitlines() if line.strip()]
    if not lines:
        return "(no output)"
    causes = [line for line in lines if _CAUSE.match(line)]
    return (causes or lines)[-1][:300]
