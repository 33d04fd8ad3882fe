"""Free helpers of the local runtime: the infrastructure guard, waiting, builds, ports, parallel starts."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from bot.config import InfrastructureError, Service
from bot.runtimes.guard import infrastructure_errors
from bot.runtimes.local.allowlist import with_port
from bot.runtimes.local.ports import free_port
from bot.runtimes.local.processes import ProcessRef, stop_group, wait_healthy

PORT_ATTEMPTS = 4
"""A port chosen free can be taken before the process binds it: that many fresh ports are tried."""
_ADDRESS_IN_USE = re.compile(r"address already in use|EADDRINUSE|errno 98\b", re.IGNORECASE)
NOT_STARTED = "not started"
"""How a service held back by a failed prerequisite (`after:`) reports itself."""


infrastructure = infrastructure_errors("local runtime")


def _wait(process: subprocess.Popen[bytes], timeout: float, should_stop: Callable[[], bool] | None) -> bool:
    """Wait for exit; False when the time ran out or the caller asked to stop."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            process.wait(timeout=min(0.5, max(0.0, deadline - time.monotonic())))
            return True
        except subprocess.TimeoutExpired:
            if should_stop is not None and should_stop():
                return False
    return process.poll() is not None


def _start_on_free_port(
    spec: Service,
    launch: Callable[..., subprocess.Popen[bytes]],
    log: Path,
    port: int,
    started: Callable[[subprocess.Popen[bytes], int], None],
    env: Mapping[str, str] | None = None,
) -> str | None:
    """Start the service on `port` and wait until healthy; None when it is, else why not.

    A port chosen free can be bound by someone else before the service binds it: a start that ends
    with "address in use" in its log is retried on a fresh port, and after `PORT_ATTEMPTS` of them it
    is an infrastructure error, never the change's fault. `started` records each process as it runs.
    With `env`, each attempt starts with it, `{port}` in the service's `env:` values replaced.
    """
    local = spec.local_spec
    ported = [name for name, value in local.env.items() if "{port}" in value]
    for _ in range(PORT_ATTEMPTS):
        offset = log.stat().st_size if log.exists() else 0
        command = local.run.replace("{port}", str(port))
        options = {} if env is None else {"env": with_port(env, ported, port)}
        process = launch(command, **options)
        started(process, port)
        why = wait_healthy(process, port, local.health_check, local.ready_timeout)
        if why is None or process.poll() is None or not _address_in_use(log, offset):
            return why
        port = free_port()
    raise InfrastructureError(f"{local.run.split()[0]}: every port tried was already in use")


def _in_order(
    jobs: dict[str, Callable[[], str | None]], after: Mapping[str, Sequence[str]]
) -> dict[str, str | None]:
    """Run `jobs` in parallel, each once those it is `after` succeeded (None); one whose prerequisite
    failed does not run. The loader refused cycles and unknown names, so every wait ends."""
    futures: dict[str, Future[str | None]] = {}
    ready = threading.Event()  # every future exists before any job looks one up

    def run(name: str) -> str | None:
        ready.wait()
        for other in after.get(name, ()):
            if other in jobs and futures[other].result() is not None:
                return f"{NOT_STARTED}: {other}, which it starts after, did not start"
        return jobs[name]()

    with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        futures.update({name: pool.submit(run, name) for name in jobs})
        ready.set()
        return {name: future.result() for name, future in futures.items()}


def _address_in_use(log: Path, offset: int) -> bool:
    try:
        with log.open("rb") as handle:
            handle.seek(offset)
            return bool(_ADDRESS_IN_USE.search(handle.read().decode(errors="replace")))
    except FileNotFoundError:
        return False


def _run_build(
    spec: Service,
    launch: Callable[[str], subprocess.Popen[bytes]],
    track: Callable[[ProcessRef], AbstractContextManager[None]] = lambda _ref: nullcontext(),
) -> str | None:
    assert spec.local_spec.build is not None
    process = launch(spec.local_spec.build)
    ref = ProcessRef.of(process.pid)
    with track(ref):
        try:
            code = process.wait(timeout=spec.local_spec.build_timeout)
        except subprocess.TimeoutExpired:
            return f"build timed out after {spec.local_spec.build_timeout:g}s"
        finally:
            stop_group(ref, grace=2)
    return f"build exited with code {code}" if code != 0 else None

