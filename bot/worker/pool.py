"""Worker loops: claim a queued run (or, when none waits, a baseline warm-up), execute it, repeat;
and conclude what a crash left in flight.

Runs are claimed through the store (row locks on PostgreSQL), so any number of loops in any number of
processes take each run exactly once. Besides its workers, every replica runs two loops: the reaper
concludes runs whose heartbeat stopped (their worker or its replica died), periodically rather than
only at start-up, since a replica that dies may never start again; the dispatcher delivers the outbox.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import timedelta

import psutil

from bot.config.schema import Agents
from bot.evidence import ErrorKind, Evidence, GitRef, Verdict, utcnow
from bot.github.publish import Published, Target, check_conclusion, gate_and_render, render_check_report
from bot.store import LostClaim
from bot.store.snapshots import RunSnapshot, RunStatus, WarmupSnapshot, WarmupStatus
from bot.worker.executor import RunEnvironment, RunExecutor
from bot.worker.outbox import check_report, reports_of
from bot.worker.warmup import WarmUp

log = logging.getLogger("loopgate.worker")
IDLE_S = 0.3
RESTARTED = "loopgate restarted while this run was in flight; re-run the check to verify the change"
REAPED = "the worker verifying this run stopped answering; re-run the check to verify the change"


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
            self._spawn(f"loopgate-worker-{index}", self._loop, name)
        self._spawn("loopgate-reaper", self._every, self.env.settings.reap_every_s, self._reap)
        self._spawn("loopgate-outbox", self._every, self.env.settings.outbox_poll_s, self._dispatch)
        self._spawn("loopgate-gc", self._every, self.env.settings.gc_every_s, self._collect)

    def _spawn(self, name: str, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _every(self, interval_s: float, job: Callable[[], object]) -> None:
        while not self._stop.wait(interval_s):
            try:
                job()
            except Exception:  # the database or GitHub may be briefly away; keep the loop alive
                log.exception("%s failed", threading.current_thread().name)

    def _reap(self) -> None:
        for run_id in reap(self.env, f"{worker_prefix()}:reaper"):
            log.warning("concluded run %s: its worker stopped sending heartbeats", run_id)

    def _collect(self) -> None:
        """What crashed runs (of any replica) left behind and what outlived its expiry: a cluster keeps
        forks and routes until someone removes them."""
        for line in self.env.runtime.gc():
            log.info("gc removed %s", line)

    def _dispatch(self) -> None:
        self.env.outbox.deliver_due()

    def alive(self) -> bool:
        return all(thread.is_alive() for thread in self._threads)

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=timeout)

    def _loop(self, name: str) -> None:
        executor, warm = RunExecutor(self.env), WarmUp(self.env)
        while not self._stop.is_set():
            try:
                run = self.env.store.claim(name)
                # Runs first: a warm-up is taken only when no queued run can be (`bot.store.warmups`).
                warmup = self.env.store.claim_warmup(name) if run is None else None
            except Exception:  # the database may be briefly away; keep the loop alive
                log.exception("claiming a run failed")
                self._stop.wait(IDLE_S * 5)
                continue
            if warmup is not None:
                try:
                    warm.execute(warmup)
                except Exception:  # its outcome could not be stored; the reaper concludes it
                    log.exception("warm-up %s of %s failed", warmup.id, warmup.repo)
                continue
            if run is None:
                self._stop.wait(IDLE_S)
                continue
            try:
                executor.execute(run)
            except LostClaim:
                log.warning("run %s was taken over by another replica; not reporting it here", run.id)
            except Exception as exc:
                log.exception("run %s failed", run.id)
                _conclude_quietly(self.env, run, f"loopgate could not finish this run: {exc}")


def recover(env: RunEnvironment) -> list[str]:
    """At start: conclude runs whose worker is gone (this host's dead processes, or silent too long
    elsewhere) and reclaim their sandboxes. Queued runs simply wait for a worker."""
    concluded = []
    host = socket.gethostname()
    me = f"{worker_prefix()}:recovery"
    stale = {run.id for run in env.store.stale_running(timedelta(seconds=env.settings.stale_after_s))}
    for run in env.store.in_flight():
        if run.status != RunStatus.RUNNING:
            continue
        if run.id in stale or _claimed_by_dead_local_process(run, host):
            taken = env.store.take_over(run, me)
            if taken is not None and _conclude_quietly(env, taken, RESTARTED):
                concluded.append(run.id)
    stale_warmups = {w.id for w in env.store.stale_warmups(timedelta(seconds=env.settings.stale_after_s))}
    for warmup in env.store.running_warmups():
        if warmup.id in stale_warmups or _claimed_by_dead_local_process(warmup, host):
            _interrupted(env, warmup, "loopgate restarted while it ran")
    env.runtime.gc()
    return concluded


def _interrupted(env: RunEnvironment, warmup: WarmupSnapshot, why: str) -> None:
    """A warm-up whose worker is gone ends `failed`: queued ones are untouched (they wait for a
    worker), and the next push of the default branch, or the next run, starts the baseline."""
    if env.store.finish_warmup(
        warmup.id, WarmupStatus.FAILED, f"interrupted: {why}", claimed_by=warmup.claimed_by
    ):
        log.warning("warm-up %s of %s interrupted: %s", warmup.id, warmup.repo, why)


def reap(env: RunEnvironment, reaper: str) -> list[str]:
    """Conclude the running runs whose heartbeat stopped, on any replica. Each is taken over first
    (only if still silent), so two reapers never conclude one run and its old worker, should it wake,
    no longer holds it: its heartbeats stop counting and it stops without reporting."""
    concluded = []
    for run in env.store.stale_running(timedelta(seconds=env.settings.stale_after_s)):
        taken = env.store.take_over(run, reaper)
        if taken is not None and _conclude_quietly(env, taken, REAPED):
            concluded.append(run.id)
    for warmup in env.store.stale_warmups(timedelta(seconds=env.settings.stale_after_s)):
        _interrupted(env, warmup, "its worker stopped answering")
    return concluded


def _conclude_quietly(env: RunEnvironment, run: RunSnapshot, reason: str) -> bool:
    """False when another replica took the run over first (it concludes it)."""
    try:
        conclude_interrupted(env, run, reason)
    except LostClaim:
        log.warning("run %s was taken over by another replica before it could be concluded", run.id)
        return False
    return True


def _claimed_by_dead_local_process(run: RunSnapshot | WarmupSnapshot, host: str) -> bool:
    if not run.claimed_by:
        return True
    parts = run.claimed_by.split(":")
    if len(parts) < 2 or parts[0] != host or not parts[1].isdigit():
        return False
    return int(parts[1]) != os.getpid() and not psutil.pid_exists(int(parts[1]))


def conclude_interrupted(env: RunEnvironment, run: RunSnapshot, reason: str) -> None:
    """Finish a run that cannot continue: verdict `error` (infrastructure), check completed.

    Gating is tried (a failing verdict may draft the PR) but may fail with GitHub away; the check's
    conclusion goes out through the outbox either way, so no check stays `in_progress`. Only the
    worker or reaper holding the run's claim concludes it (LostClaim otherwise)."""
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
    published = _gated(env, run, evidence)
    reports = []
    if published is not None:
        reports = reports_of(run, published)
        if published.pr_number is not None:
            env.store.set_pr(run.id, published.pr_number)
    elif run.check_run_id is not None:
        report = render_check_report(evidence, run.check_run_id, check_conclusion(evidence))
        reports = [check_report(run, report)]
    conclusion = published.conclusion if published is not None else check_conclusion(evidence)
    env.store.complete(
        run.id,
        Verdict.ERROR.value,
        conclusion,
        evidence.model_dump_json(),
        reports=reports,
        claimed_by=run.claimed_by,
    )
    env.outbox.deliver_soon(run.id)


def _gated(env: RunEnvironment, run: RunSnapshot, evidence: Evidence) -> Published | None:
    """Gate an interrupted run's verdict and render its reports; None when it has no check or GitHub
    cannot be asked now (the check is concluded regardless)."""
    if run.check_run_id is None:
        return None
    target = Target(
        run.branch,
        run.head_sha,
        run.base_ref or "",
        run.check_run_id,
        comment_id=run.comment_id,
        run_id=run.id,
    )
    try:
        client = env.github.repo(run.repo, run.installation_id)
        return gate_and_render(client, evidence, Agents(open_pr=False), target, env.store)
    except Exception:
        log.exception("could not gate run %s on GitHub; its check is concluded all the same", run.id)
        return None
