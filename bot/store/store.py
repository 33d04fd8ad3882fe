"""The Store: every read and write of deliveries, installations and runs, one transaction each."""

from __future__ import annotations

import re
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, fields
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from sqlalchemy import Engine, Select, func, insert, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bot.config import RuntimeSettings
from bot.evidence import Verdict, utcnow
from bot.store import claim as claiming
from bot.store import database, migrate
from bot.store.models import Delivery, Installation, PullComment, PullDraft, Report, Run
from bot.store.snapshots import (
    FINISHED,
    IN_FLIGHT,
    AcceptedPush,
    CommentSlot,
    DeliverySnapshot,
    InstallationSnapshot,
    NewReport,
    NewRun,
    ReportSnapshot,
    RunSnapshot,
    RunStatus,
)

DeliveryOutcome = Literal["processed", "rejected", "failed"]
ROUTING_KEY = re.compile(r"^[a-z0-9]{6,16}$")
_KEY = ("repo", "head_sha", "check_name", "attempt")
_QUEUED, _RUNNING, _CANCELLED = RunStatus.QUEUED.value, RunStatus.RUNNING.value, RunStatus.CANCELLED.value
_IN_FLIGHT = [status.value for status in IN_FLIGHT]


class UnknownRun(LookupError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run {run_id!r} in the store")


class LostClaim(RuntimeError):
    """The worker no longer holds the run (it was reaped and taken over): it must not report it."""

    def __init__(self, run_id: str, worker_id: str) -> None:
        super().__init__(f"run {run_id!r} is no longer claimed by {worker_id!r}")


class Store:
    """The durable state of the App. Thread-safe; open one per process and share it."""

    def __init__(self, engine: Engine, url: URL) -> None:
        self._engine = engine
        self._url = url
        self._read = sessionmaker(bind=engine, expire_on_commit=False)
        # On SQLite a write transaction begins IMMEDIATE (see bot.store.database._begin).
        writer = engine.execution_options(**{database.WRITE_OPTION: True})
        self._write = sessionmaker(bind=writer, expire_on_commit=False)
        self.backend = engine.dialect.name
        self._sqlite_writers = threading.Lock()

    @classmethod
    def open(cls, url: str | None = None, *, state_dir: Path | None = None) -> Store:
        """Connect and migrate to head. Without a URL: SQLite in `state_dir` (`LOOPGATE_STATE_DIR`)."""
        if url is None:
            url = database.default_url(state_dir or RuntimeSettings().state_dir)
        parsed = database.normalise(url)
        engine = database.create(parsed)
        try:
            with database.translated(parsed, "connecting and migrating"):
                migrate.upgrade(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, parsed)

    @property
    def url(self) -> str:
        """The database URL without its password."""
        return database.redact(self._url)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _session(self, doing: str, *, write: bool = False) -> Iterator[Session]:
        factory = self._write if write else self._read
        # SQLite lets one writer in at a time and makes the others sleep and retry with growing
        # pauses (its busy handler); queueing this process's writers on a lock instead keeps the
        # webhook's tail latency to the commits themselves. Other processes still meet the busy timeout.
        queue = self._sqlite_writers if write and self.backend == "sqlite" else nullcontext()
        with queue, database.translated(self._url, doing), factory() as session, session.begin():
            yield session

    def _insert(
        self, model: type[Delivery | Installation | Run | PullDraft | PullComment]
    ) -> postgresql.Insert | sqlite.Insert:
        return postgresql.insert(model) if self.backend == "postgresql" else sqlite.insert(model)

    # Deliveries

    def record_delivery(
        self,
        delivery_id: str,
        event: str,
        action: str | None,
        repo: str | None,
        installation_id: int | None,
        payload_text: str,
        *,
        outcome: DeliveryOutcome | None = None,
        error: str | None = None,
    ) -> bool:
        """Persist a webhook delivery: True when new, False when GitHub redelivered it. With an
        `outcome` (a rejected delivery) it is recorded as already handled, so it is never replayed."""
        now = utcnow()
        values = {
            "id": delivery_id,
            "event": event,
            "action": action,
            "repo": repo,
            "installation_id": installation_id,
            "received_at": now,
            "processed_at": now if outcome else None,
            "payload": payload_text,
            "outcome": outcome,
            "error": error,
        }
        stmt = self._insert(Delivery).values(values).on_conflict_do_nothing(index_elements=["id"])
        with self._session("recording a delivery", write=True) as session:
            return session.execute(stmt.returning(Delivery.id)).first() is not None

    def accept_push(
        self,
        delivery_id: str,
        payload_text: str,
        run: NewRun,
        installation_id: int | None,
        *,
        replaces: str,
    ) -> AcceptedPush:
        """One transaction for a gated push: record the delivery, supersede the runs of the commit
        the push moved the branch from (`replaces`, the push's `before`), and queue the new run — or
        attach to the branch's run of that SHA already queued or running. Either all of it happens or
        none, so a crash can never leave a recorded delivery without its run.

        Only `before` supersedes: a delivery arriving late, after a newer push, names an older
        `before` and cancels nothing newer (the worker concludes its run when it finds it is not the
        branch head). Statements take their values as parameters so SQLAlchemy compiles each once:
        this is the webhook's hot path."""
        now = utcnow()
        delivery = {
            "id": delivery_id,
            "event": "push",
            "action": None,
            "repo": run.repo,
            "installation_id": installation_id,
            "received_at": now,
            "processed_at": now,
            "payload": payload_text,
            "outcome": "processed",
        }
        insert_delivery = (
            self._insert(Delivery).on_conflict_do_nothing(index_elements=["id"]).returning(Delivery.id)
        )
        with self._session("accepting a push", write=True) as session:
            if session.execute(insert_delivery, [delivery]).first() is None:
                return AcceptedPush(new_delivery=False, run=None, created=False, superseded=[])
            self._lock_key(session, run.repo, run.head_sha, run.check_name)
            superseded = _stop(
                session,
                _replaced(run.repo, run.branch, run.head_sha, [replaces]),
                reason=f"superseded by {run.head_sha}",
                by_sha=run.head_sha,
            )
            same = select(Run).where(
                Run.repo == run.repo,
                Run.branch == run.branch,
                Run.head_sha == run.head_sha,
                Run.check_name == run.check_name,
                Run.status.in_(_IN_FLIGHT),
                Run.cancel_requested.is_(False),
            )
            existing = session.scalars(same.limit(1)).first()
            if existing is not None:
                return AcceptedPush(True, _run(existing), False, superseded)
            return AcceptedPush(True, _insert_next(session, run, now), True, superseded)

    def mark_delivery_processed(self, delivery_id: str) -> None:
        """The delivery's runs are enqueued: a restart need not handle it again."""
        self.mark_delivery(delivery_id, "processed")

    def mark_delivery(self, delivery_id: str, outcome: DeliveryOutcome, error: str | None = None) -> None:
        """The delivery is handled (`processed`) or never will be (`failed`, with its error)."""
        with self._session("marking a delivery handled", write=True) as session:
            delivery = session.get(Delivery, delivery_id)
            if delivery is not None and delivery.processed_at is None:
                delivery.processed_at = utcnow()
                delivery.outcome = outcome
                delivery.error = error

    def unprocessed_deliveries(self, limit: int = 100) -> list[DeliverySnapshot]:
        """Deliveries received but never marked processed (a crash between 202 and enqueue)."""
        query = (
            select(Delivery)
            .where(Delivery.processed_at.is_(None))
            .order_by(Delivery.received_at, Delivery.id)
            .limit(limit)
        )
        with self._session("listing unprocessed deliveries") as session:
            return [_delivery(row) for row in session.scalars(query)]

    def delivery(self, delivery_id: str) -> DeliverySnapshot | None:
        with self._session("reading a delivery") as session:
            row = session.get(Delivery, delivery_id)
            return None if row is None else _delivery(row)

    # Installations

    def upsert_installation(
        self, installation_id: int, account: str, repositories: Sequence[str], suspended: bool = False
    ) -> InstallationSnapshot:
        values: dict[str, Any] = {
            "account": account,
            "repositories": list(repositories),
            "suspended": suspended,
            "updated_at": utcnow(),
        }
        stmt = (
            self._insert(Installation)
            .values({"id": installation_id, **values})
            .on_conflict_do_update(index_elements=["id"], set_=values)
        )
        with self._session("recording an installation", write=True) as session:
            session.execute(stmt)
            row = session.get_one(Installation, installation_id, populate_existing=True)
            return _installation(row)

    def remove_installation(self, installation_id: int) -> bool:
        """Forget an uninstalled App installation; False when it was not known."""
        with self._session("removing an installation", write=True) as session:
            row = session.get(Installation, installation_id)
            if row is None:
                return False
            session.delete(row)
            return True

    def installation(self, installation_id: int) -> InstallationSnapshot | None:
        with self._session("reading an installation") as session:
            row = session.get(Installation, installation_id)
            return None if row is None else _installation(row)

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

    def _lock_key(self, session: Session, repo: str, head_sha: str, check_name: str) -> None:
        """Serialise attempt allocation for one key. PostgreSQL: a transaction-scoped advisory
        lock (no row exists yet to lock); SQLite: every write transaction already holds the file."""
        if self.backend == "postgresql":
            key = f"loopgate-run:{repo}:{head_sha}:{check_name}"
            session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key})

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

    # Pull requests loopgate drafted

    def mark_drafted(self, repo: str, number: int, run_id: str | None) -> None:
        """Loopgate made PR #number a draft: a later pass of its branch may mark it ready."""
        values = {"run_id": run_id, "drafted_at": utcnow()}
        stmt = (
            self._insert(PullDraft)
            .values({"repo": repo, "number": number, **values})
            .on_conflict_do_update(index_elements=["repo", "number"], set_=values)
        )
        with self._session("recording a draft", write=True) as session:
            session.execute(stmt)

    def clear_drafted(self, repo: str, number: int) -> bool:
        """The PR is ready (loopgate or its author made it so); False when loopgate had not drafted it."""
        with self._session("clearing a draft", write=True) as session:
            row = session.get(PullDraft, (repo, number))
            if row is None:
                return False
            session.delete(row)
            return True

    def drafted_by_us(self, repo: str, number: int) -> bool:
        with self._session("reading a draft") as session:
            return session.get(PullDraft, (repo, number)) is not None

    # Runs: the worker's side

    def claim(self, worker_id: str) -> RunSnapshot | None:
        """Take the oldest queued run whose branch has none running; None when there is none.

        See `bot.store.claim` for how this stays exactly-once on each backend.
        """
        for _ in range(claiming.TRIES):
            try:
                with self._session("claiming a run", write=True) as session:
                    run = session.scalars(claiming.next_run(self.backend)).first()
                    if run is None:
                        return None
                    now = utcnow()
                    run.status = _RUNNING
                    run.claimed_by = worker_id
                    run.claimed_at = now
                    run.heartbeat_at = now
                    run.updated_at = now
                    session.flush()
                    return _run(run)
            except IntegrityError:
                continue  # another worker started a run of this branch an instant ago
        return None

    def heartbeat(self, run_id: str, worker_id: str) -> bool:
        """Mark a running run alive, only for the worker that holds its claim. Returns whether the
        worker should stop (cancellation requested, or the claim lost), so it learns in one trip."""
        with self._session("recording a heartbeat", write=True) as session:
            run = _locked(session, run_id)
            if run.status != _RUNNING or run.claimed_by != worker_id:
                return True
            run.heartbeat_at = utcnow()
            return _should_stop(run)

    def holds(self, run_id: str, worker_id: str) -> bool:
        """Is the run still running under this worker's claim?"""
        with self._session("reading a run") as session:
            run = _get(session, run_id)
            return run.status == _RUNNING and run.claimed_by == worker_id

    def take_over(self, run: RunSnapshot, by: str) -> RunSnapshot | None:
        """Claim a stale running run for its reaper, only if nobody touched it since `run` was read
        (same claim, same heartbeat): of two reapers, one wins; a worker that beat meanwhile keeps it."""
        with self._session("taking over a run", write=True) as session:
            row = _locked(session, run.id)
            unchanged = row.claimed_by == run.claimed_by and row.heartbeat_at == run.heartbeat_at
            if row.status != _RUNNING or not unchanged:
                return None
            now = utcnow()
            row.claimed_by, row.claimed_at, row.heartbeat_at, row.updated_at = by, now, now, now
            session.flush()
            return _run(row)

    def cancel_requested(self, run_id: str) -> bool:
        """Should the worker stop? True when cancellation was requested or the run was cancelled."""
        with self._session("reading a run") as session:
            return _should_stop(_get(session, run_id))

    def set_check_run(self, run_id: str, check_run_id: int) -> RunSnapshot:
        return self._set(run_id, check_run_id=check_run_id)

    def set_comment(self, run_id: str, comment_id: int) -> RunSnapshot:
        return self._set(run_id, comment_id=comment_id)

    def set_pr(self, run_id: str, number: int) -> RunSnapshot:
        return self._set(run_id, pr_number=number)

    def set_routing_key(self, run_id: str, key: str) -> RunSnapshot:
        if not ROUTING_KEY.match(key):
            raise ValueError(f"routing key {key!r} is not [a-z0-9]{{6,16}}")
        return self._set(run_id, routing_key=key)

    def _set(self, run_id: str, **values: object) -> RunSnapshot:
        with self._session("updating a run", write=True) as session:
            run = _locked(session, run_id)
            for name, value in values.items():
                setattr(run, name, value)
            run.updated_at = utcnow()
            session.flush()
            return _run(run)

    def complete(
        self,
        run_id: str,
        verdict: str | None,
        conclusion: str,
        evidence_json: str | None,
        status: str = RunStatus.COMPLETED.value,
        *,
        reports: Sequence[NewReport] = (),
        claimed_by: str | None = None,
    ) -> RunSnapshot:
        """Conclude a run: `completed` with its verdict, or `cancelled` (superseded, deleted).

        `reports` (its check conclusion, its comment) join the outbox in the same transaction, so a
        concluded run always has them on their way. With `claimed_by`, only that worker's claim
        concludes the run; otherwise LostClaim, and nothing is written."""
        finished = RunStatus(status)
        if finished not in FINISHED:
            raise ValueError(f"a run concludes completed or cancelled, not {status!r}")
        if verdict is not None:
            verdict = Verdict(verdict).value
        now = utcnow()
        with self._session("concluding a run", write=True) as session:
            run = _locked(session, run_id)
            if claimed_by is not None and (run.status != _RUNNING or run.claimed_by != claimed_by):
                raise LostClaim(run_id, claimed_by)
            _add_reports(session, reports, now)
            run.status = finished.value
            run.verdict = verdict
            run.conclusion = conclusion
            run.evidence = evidence_json
            run.finished_at = now
            run.updated_at = now
            session.flush()
            return _run(run)

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

    # The outbox: reports that must reach GitHub

    def enqueue_reports(self, reports: Sequence[NewReport]) -> None:
        """Reports not tied to a run's conclusion (a superseded run's check, a refreshed comment)."""
        if reports:
            with self._session("queueing reports", write=True) as session:
                _add_reports(session, reports, utcnow())

    def claim_reports(
        self, lease: timedelta, *, limit: int = 10, run_id: str | None = None
    ) -> list[ReportSnapshot]:
        """Take due reports (oldest first) for `lease`: another dispatcher skips them until it ends,
        so a dispatcher that dies mid-delivery only delays them. PostgreSQL skips rows another
        replica is claiming (SKIP LOCKED); SQLite's claim holds the write lock."""
        now = utcnow()
        query = (
            select(Report)
            .where(Report.delivered_at.is_(None), Report.next_attempt_at <= now)
            .order_by(Report.id)
            .limit(limit)
        )
        if run_id is not None:
            query = query.where(Report.run_id == run_id)
        if self.backend == "postgresql":
            query = query.with_for_update(skip_locked=True)
        with self._session("claiming reports", write=True) as session:
            rows = session.scalars(query).all()
            for row in rows:
                row.attempts += 1
                row.next_attempt_at = now + lease
            session.flush()
            return [_report(row) for row in rows]

    def report_pending(self, report_id: int) -> bool:
        """False once the report was delivered or replaced by a newer one for the same target."""
        with self._session("reading a report") as session:
            row = session.get(Report, report_id)
            return row is not None and row.delivered_at is None

    def report_delivered(self, report_id: int, outcome: str = "delivered", error: str | None = None) -> None:
        """GitHub accepted the report (or it can never be delivered: `outcome` says which)."""
        with self._session("recording a delivered report", write=True) as session:
            row = session.get(Report, report_id, with_for_update=True)
            if row is not None and row.delivered_at is None:
                row.delivered_at, row.outcome, row.last_error = utcnow(), outcome, error

    def report_failed(self, report_id: int, error: str, retry_in: timedelta) -> None:
        with self._session("recording a failed report", write=True) as session:
            row = session.get(Report, report_id, with_for_update=True)
            if row is not None and row.delivered_at is None:
                row.last_error, row.next_attempt_at = error, utcnow() + retry_in

    def reports(self, *, pending: bool = False) -> list[ReportSnapshot]:
        query = select(Report).order_by(Report.id)
        if pending:
            query = query.where(Report.delivered_at.is_(None))
        with self._session("listing reports") as session:
            return [_report(row) for row in session.scalars(query)]

    # Sticky comments

    @contextmanager
    def comment_lock(self, repo: str, number: int) -> Iterator[CommentSlot]:
        """Hold PR #number's sticky comment across replicas while it is found or created.

        PostgreSQL: a transaction-scoped advisory lock, held until the comment id is stored. SQLite
        serves one machine; the adapter's in-process lock serialises the upsert there, and holding
        a write transaction across a GitHub call would stall every other writer, so none is held."""
        if self.backend != "postgresql":
            slot = CommentSlot(repo, number, self.comment_id(repo, number))
            yield slot
            if slot.comment_id is not None:
                with self._session("storing a comment id", write=True) as session:
                    _store_comment(session, self._insert(PullComment), slot)
            return
        with self._session("locking a sticky comment", write=True) as session:
            key = f"loopgate-comment:{repo}:{number}"
            session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key})
            row = session.get(PullComment, (repo, number))
            slot = CommentSlot(repo, number, row.comment_id if row else None)
            yield slot
            if slot.comment_id is not None:
                _store_comment(session, self._insert(PullComment), slot)

    def comment_id(self, repo: str, number: int) -> int | None:
        with self._session("reading a comment id") as session:
            row = session.get(PullComment, (repo, number))
            return None if row is None else row.comment_id

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

    def ping(self) -> bool:
        """Readiness: can the database answer right now? Never raises."""
        try:
            with self._engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False


def _get(session: Session, run_id: str) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise UnknownRun(run_id)
    return run


def _locked(session: Session, run_id: str) -> Run:
    """The run, row-locked on PostgreSQL for this read-modify-write (SQLite holds the whole file)."""
    run = session.get(Run, run_id, with_for_update=True)
    if run is None:
        raise UnknownRun(run_id)
    return run


def _add_reports(session: Session, reports: Sequence[NewReport], now: datetime) -> None:
    """Queue reports; a pending one for the same target is replaced, since the newer says it all."""
    for report in reports:
        session.execute(
            update(Report)
            .where(
                Report.repo == report.repo,
                Report.kind == report.kind,
                Report.target == report.target,
                Report.delivered_at.is_(None),
            )
            .values(delivered_at=now, outcome="replaced")
        )
        session.add(Report(**asdict(report), attempts=0, next_attempt_at=now, created_at=now))
    session.flush()


def _store_comment(session: Session, insert_: postgresql.Insert | sqlite.Insert, slot: CommentSlot) -> None:
    values = {"comment_id": slot.comment_id, "updated_at": utcnow()}
    stmt = insert_.values({"repo": slot.repo, "number": slot.number, **values}).on_conflict_do_update(
        index_elements=["repo", "number"], set_=values
    )
    session.execute(stmt)


def _report(row: Report) -> ReportSnapshot:
    return ReportSnapshot(**{field.name: getattr(row, field.name) for field in fields(ReportSnapshot)})


def _replaced(repo: str, branch: str, by_sha: str, heads: Collection[str] | None) -> Select[Run]:
    query = select(Run).where(Run.repo == repo, Run.branch == branch, Run.head_sha != by_sha)
    return query if heads is None else query.where(Run.head_sha.in_(list(heads)))


def _should_stop(run: Run) -> bool:
    return run.cancel_requested or run.status == _CANCELLED


def _stop(session: Session, query: Select[Run], reason: str, by_sha: str | None = None) -> list[RunSnapshot]:
    # FOR UPDATE: a claim committing meanwhile is waited for and seen, so a run that just started is
    # asked to stop rather than overwritten as a cancelled queued one.
    runs = session.scalars(query.where(Run.status.in_(_IN_FLIGHT)).with_for_update()).all()
    now = utcnow()
    affected = []
    for run in runs:
        if run.status == _RUNNING and run.cancel_requested:
            continue  # already asked to stop; its first reason stands
        if run.status == _QUEUED:
            run.status = _CANCELLED
            run.conclusion = "cancelled"
            run.finished_at = now
        else:
            run.cancel_requested = True
        run.superseded_by = by_sha
        run.cancel_reason = reason
        run.updated_at = now
        affected.append(run)
    session.flush()
    return [_run(run) for run in affected]


def _insert_next(session: Session, run: NewRun, now: datetime) -> RunSnapshot:
    """Insert `run` as the key's next attempt; the caller holds the key's lock."""
    attempts = select(func.max(Run.attempt)).where(
        Run.repo == run.repo, Run.head_sha == run.head_sha, Run.check_name == run.check_name
    )
    values = {
        **asdict(run),
        "attempt": (session.scalar(attempts) or 0) + 1,
        "status": _QUEUED,
        "cancel_requested": False,
        "created_at": now,
        "updated_at": now,
    }
    session.execute(insert(Run), [values])
    return _snapshot_of_new(values)


def _snapshot_of_new(values: dict[str, object]) -> RunSnapshot:
    """The snapshot of a run just inserted, from its values, without reading it back."""
    known = {f.name: values.get(f.name) for f in fields(RunSnapshot)}
    known["status"] = RunStatus(str(values["status"]))
    return RunSnapshot(**known)  # type: ignore[arg-type]


def _run(row: Run) -> RunSnapshot:
    values = {
        field.name: getattr(row, field.name)
        for field in fields(RunSnapshot)
        if field.name not in ("status", "evidence_json")
    }
    return RunSnapshot(**values, status=RunStatus(row.status), evidence_json=row.evidence)


def _installation(row: Installation) -> InstallationSnapshot:
    return InstallationSnapshot(
        id=row.id,
        account=row.account,
        repositories=tuple(row.repositories),
        suspended=row.suspended,
        updated_at=row.updated_at,
    )


def _delivery(row: Delivery) -> DeliverySnapshot:
    return DeliverySnapshot(
        id=row.id,
        event=row.event,
        action=row.action,
        repo=row.repo,
        installation_id=row.installation_id,
        received_at=row.received_at,
        processed_at=row.processed_at,
        payload=row.payload,
        outcome=row.outcome,
        error=row.error,
    )
