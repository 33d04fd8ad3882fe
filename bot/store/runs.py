"""The Store's run queue: enqueueing, superseding, recovery and reading runs."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict
from datetime import timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError

from bot.evidence import utcnow
from bot.store.base import StoreBase
from bot.store.models import Run
from bot.store.rows import (
    _CANCELLED,
    _IN_FLIGHT,
    _KEY,
    _QUEUED,
    _RUNNING,
    _insert_next,
    _locked,
    _replaced,
    _run,
    _stop,
)
from bot.store.snapshots import NewRun, RunSnapshot


class Runs(StoreBase):
    """Queueing runs, superseding and cancelling them, and reading them back."""

    # Runs: enqueueing and superseding

    def enqueue(self, run: NewRun) -> tuple[RunSnapshot, bool]:
        """Queue a run; when (repo, head_sha, check_name, attempt) exists, that run and False."""
        if run.attempt < 1:
            raise ValueError(f"attempt must be 1 or more, not {run.attempt}")
        now = utcnow()
        values = {
            **asdict(run),
            "status": _QUEUED,
            "cancel_requested": False,
            "created_at": now,
            "updated_at": now,
        }
        stmt = self._insert(Run).values(values).on_conflict_do_nothing(index_elements=list(_KEY))
        try:
            with self._session("enqueueing a run", write=True) as session:
                inserted = session.execute(stmt.returning(Run.id)).first() is not None
                existing = session.scalars(
                    select(Run).where(*(getattr(Run, name) == getattr(run, name) for name in _KEY))
                ).one()
                return _run(existing), inserted
        except IntegrityError:
            # The key is free, so the id collided: ids are meant to be unguessable, hence unique.
            raise ValueError(f"run id {run.id!r} is already taken by another run") from None

    def enqueue_next(self, run: NewRun, *, reuse: bool = False) -> tuple[RunSnapshot, bool]:
        """Queue the next attempt of (repo, head_sha, check_name), numbered inside the transaction
        that inserts it, under a per-key lock, so two replicas never compute the same attempt.

        The run this delivery already made (a replay after a crash) is returned instead. With
        `reuse`, so is a run of the key that is queued, running or completed: an event that only
        needs a check on the commit (a pull request's) attaches to the commit's run."""
        now = utcnow()
        with self._session("enqueueing a run", write=True) as session:
            self._lock_key(session, run.repo, run.head_sha, run.check_name)
            key = (Run.repo == run.repo, Run.head_sha == run.head_sha, Run.check_name == run.check_name)
            mine = select(Run).where(*key, Run.delivery_id == run.delivery_id)
            if run.delivery_id is not None and (existing := session.scalars(mine.limit(1)).first()):
                return _run(existing), False
            live = select(Run).where(*key, Run.status != _CANCELLED, Run.cancel_requested.is_(False))
            if reuse and (existing := session.scalars(live.order_by(Run.attempt.desc()).limit(1)).first()):
                return _run(existing), False
            return _insert_next(session, run, now), True

    def next_attempt(self, repo: str, head_sha: str, check_name: str) -> int:
        query = select(func.max(Run.attempt)).where(
            Run.repo == repo, Run.head_sha == head_sha, Run.check_name == check_name
        )
        with self._session("reading attempts") as session:
            return (session.scalar(query) or 0) + 1

    def supersede(
        self, repo: str, branch: str, by_sha: str, *, heads: Collection[str] | None = None
    ) -> list[RunSnapshot]:
        """`by_sha` replaces the branch's other runs — only those of `heads` when given (the commits
        known to be older): queued ones are cancelled now, running ones asked to stop. Returns those
        runs so the caller cancels checks and tears down."""
        with self._session("superseding runs", write=True) as session:
            return _stop(
                session,
                _replaced(repo, branch, by_sha, heads),
                reason=f"superseded by {by_sha}",
                by_sha=by_sha,
            )

    def supersede_runs(self, run_ids: Collection[str], by_sha: str) -> list[RunSnapshot]:
        """Like `supersede`, for exactly these runs (those seen before the branch head was read)."""
        if not run_ids:
            return []
        query = select(Run).where(Run.id.in_(list(run_ids)), Run.head_sha != by_sha)
        with self._session("superseding runs", write=True) as session:
            return _stop(session, query, reason=f"superseded by {by_sha}", by_sha=by_sha)

    def active_runs(self, repo: str, branch: str) -> list[RunSnapshot]:
        """The branch's queued and running runs, oldest first."""
        query = (
            select(Run)
            .where(Run.repo == repo, Run.branch == branch, Run.status.in_(_IN_FLIGHT))
            .order_by(Run.created_at, Run.id)
        )
        with self._session("listing a branch's runs") as session:
            return [_run(row) for row in session.scalars(query)]

    def cancel_branch(self, repo: str, branch: str, reason: str) -> list[RunSnapshot]:
        """Like `supersede`, for every run of the branch: it was deleted."""
        with self._session("cancelling a branch", write=True) as session:
            return _stop(session, select(Run).where(Run.repo == repo, Run.branch == branch), reason=reason)

    # Runs: recovery

    def in_flight(self) -> list[RunSnapshot]:
        """Queued or running runs, oldest first: what a restart must resume or conclude."""
        query = select(Run).where(Run.status.in_(_IN_FLIGHT)).order_by(Run.created_at, Run.id)
        with self._session("listing runs in flight") as session:
            return [_run(row) for row in session.scalars(query)]

    def stale_running(self, older_than: timedelta) -> list[RunSnapshot]:
        """Running runs whose worker has not sent a heartbeat for `older_than`: it died."""
        cutoff = utcnow() - older_than
        query = (
            select(Run)
            .where(Run.status == _RUNNING, or_(Run.heartbeat_at < cutoff, Run.heartbeat_at.is_(None)))
            .order_by(Run.created_at, Run.id)
        )
        with self._session("listing stale runs") as session:
            return [_run(row) for row in session.scalars(query)]

    def requeue(self, run_id: str) -> RunSnapshot:
        """Put a running run back in the queue, at its old place; other statuses are left as they are."""
        with self._session("requeueing a run", write=True) as session:
            run = _locked(session, run_id)
            if run.status == _RUNNING:
                run.status = _QUEUED
                run.claimed_by = None
                run.claimed_at = None
                run.heartbeat_at = None
                run.updated_at = utcnow()
                session.flush()
            return _run(run)

    # Runs: reading

    def get(self, run_id: str) -> RunSnapshot | None:
        with self._session("reading a run") as session:
            row = session.get(Run, run_id)
            return None if row is None else _run(row)

    def find(
        self, repo: str | None = None, branch: str | None = None, sha: str | None = None, limit: int = 50
    ) -> list[RunSnapshot]:
        """Runs newest first; `sha` may be a prefix of the head SHA."""
        query = select(Run)
        if repo is not None:
            query = query.where(Run.repo == repo)
        if branch is not None:
            query = query.where(Run.branch == branch)
        if sha is not None:
            query = query.where(Run.head_sha.startswith(sha, autoescape=True))
        query = query.order_by(Run.created_at.desc(), Run.id.desc()).limit(limit)
        with self._session("finding runs") as session:
            return [_run(row) for row in session.scalars(query)]

    def latest_for_branch(self, repo: str, branch: str) -> RunSnapshot | None:
        runs = self.find(repo=repo, branch=branch, limit=1)
        return runs[0] if runs else None

    def counts_by_verdict(self) -> dict[str, int]:
        query = select(Run.verdict, func.count()).where(Run.verdict.is_not(None)).group_by(Run.verdict)
        with self._session("counting verdicts") as session:
            return {str(verdict): int(count) for verdict, count in session.execute(query)}

    def queue_depth(self) -> int:
        query = select(func.count()).select_from(Run).where(Run.status == _QUEUED)
        with self._session("counting the queue") as session:
            return int(session.scalar(query) or 0)
