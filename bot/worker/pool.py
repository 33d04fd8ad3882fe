"""Worker loops: claim a queued run, execute it, repeat; and conclude what a crash left in flight.

Runs are claimed through the store (row locks on PostgreSQL), so any number of loops in any number of
processes take each run exactly once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import timedelta

import psutil

from bot.config.schema import Agents
from bot.evidence import ErrorKind, Evidence, GitRef, Verdict, utcnow
from bot.github.publish import Target, publish
from bot.store.snapshots import RunSnapshot, RunStatus
from bot.worker.executor import HEARTBEAT_S, RunEnvironment, RunExecutor

log = logging.getLogger("loopgate.worker")
IDLE_S = 0.3
RESTARTED = "loopgate restarted while this run was in flight; re-run the check to verify the change"


def worker_prefix() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class WorkerPool:
    def __init__(self, env: RunEnvironment, count: int) -> None:
        self.env = env
        self.count = count
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for index in range(self.count):
            name = f"{worker_prefix()}:{index}"
            thread = threading.Thread(
                target=self._loop, args=(name,), name=f"loopgate-worker-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def alive(self) -> bool:
        return all(thread.is_alive() for thread in self._threads)

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=timeout)

    def _loop(self, name: str) -> None:
        executor = RunExecutor(self.env)
        while not self._stop.is_set():
            try:
                run = self.env.store.claim(name)
            except Exception:  # the database may be briefly away; keep the loop alive
                log.exception("claiming a run failed")
                self._stop.wait(IDLE_S * 5)
                continue
            if run is None:
                self._stop.wait(IDLE_S)
                continue
            try:
                executor.execute(run)
            except Exception as exc:
                log.exception("run %s failed", run.id)
                conclude_interrupted(self.env, run, f"loopgate could not finish this run: {exc}")


def recover(env: RunEnvironment) -> list[str]:
    """At start: conclude runs whose worker is gone (this host's dead processes, or silent too long
    elsewhere) and reclaim their sandboxes. Queued runs simply wait for a worker."""
    concluded = []
    host = socket.gethostname()
    stale = {run.id for run in env.store.stale_running(timedelta(seconds=HEARTBEAT_S * 6))}
    for run in env.store.in_flight():
        if run.status != RunStatus.RUNNING:
            continue
        if run.id in stale or _claimed_by_dead_local_process(run, host):
            conclude_interrupted(env, run, RESTARTED)
            concluded.append(run.id)
    env.runtime.gc()
    return concluded


def _claimed_by_dead_local_process(run: RunSnapshot, host: str) -> bool:
    if not run.claimed_by:
        return True
    parts = run.claimed_by.split(":")
    if len(parts) < 2 or parts[0] != host or not parts[1].isdigit():
        return False
    return int(parts[1]) != os.getpid() and not psutil.pid_exists(int(parts[1]))


def conclude_interrupted(env: RunEnvironment, run: RunSnapshot, reason: str) -> None:
    """Finish a run that cannot continue: verdict `error` (infrastructure), check completed."""
    evidence = run.evidence() or Evidence(
        run_id=run.id,
        repo=run.repo,
        base=GitRef(ref=run.base_ref or "?"),
        head=GitRef(ref=run.branch, sha=run.head_sha),
    )
    evidence.verdict, evidence.error_kind, evidence.reasons = (
        Verdict.ERROR,
        ErrorKind.INFRASTRUCTURE,
        [reason],
    )
    evidence.finished_at = utcnow()
    conclusion = "failure"
    try:
        if run.check_run_id is not None:
            client = env.github.repo(run.repo, run.installation_id)
            target = Target(
                run.branch,
                run.head_sha,
                run.base_ref or "",
                run.check_run_id,
                comment_id=run.comment_id,
                run_id=run.id,
            )
            conclusion = publish(client, evidence, Agents(open_pr=False), target, env.store).conclusion
    except Exception:
        log.exception("could not report run %s on GitHub", run.id)
    env.store.complete(run.id, Verdict.ERROR.value, conclusion, evidence.model_dump_json())
