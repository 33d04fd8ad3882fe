"""The webhook's own writes, on one DBAPI connection with statements written once: the hot path.

Why not the ORM here: a push recorded with its run through a Session cost ~1.9 ms of CPU (session
and transaction objects, cache keys, result rows as objects), against ~0.1 ms for the same
statements on the driver, most of which is the commit's own fsync. So the acknowledgement of a
delivery — record it, and for a push also supersede and queue its run, all in one transaction as
`Deliveries.accept_push` does — runs plain SQL on a connection kept for the writer's life. SQLite
caches the prepared statements per connection; psycopg prepares a statement on the server after it
ran a few times. Several acknowledgements waiting together commit together (one fsync), each still
all-or-nothing with its own rows.

The rules are `Deliveries.accept_push`'s for a push and `Runs.enqueue_next(reuse=True)`'s for a pull
request (tests run both on both backends): the delivery row is the idempotency key; only the push's
`before` is superseded; a push of the default branch also queues its baseline's warm-up (one
upsert, `bot.store.warmups`); a push attaches to the branch's run of its SHA in flight, a pull request to
the commit's run not cancelled; a new run takes the key's next attempt under the key's lock.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Engine
from sqlalchemy.engine import URL

from bot.config import InfrastructureError
from bot.evidence import utcnow
from bot.store import database
from bot.store.base import WARMUP_UPSERT as _UPSERT_WARMUP
from bot.store.snapshots import NewRun, NewWarmup, RunStatus

_QUEUED, _RUNNING, _CANCELLED = RunStatus.QUEUED.value, RunStatus.RUNNING.value, RunStatus.CANCELLED.value


@dataclass(frozen=True, slots=True)
class PushAck:
    """A push that queues a run: the delivery, the run to queue, and the commit it replaces."""

    delivery_id: str
    payload: str
    run: NewRun
    replaces: str
    warmup: NewWarmup | None = None
    """Set for a push of the default branch: its baseline is warmed (`bot.store.warmups`)."""


@dataclass(frozen=True, slots=True)
class RecordAck:
    """A delivery answered without acting (an event not used, a tag push, a ping): recorded as
    processed, so neither a redelivery nor a restart acts on it."""

    delivery_id: str
    event: str
    action: str | None
    repo: str | None
    installation_id: int | None
    payload: str


@dataclass(frozen=True, slots=True)
class PullAck:
    """A pull request whose head commit needs a check: it attaches to the commit's run that is not
    cancelled (queued, running or completed — its push made one), or queues one; as
    `Runs.enqueue_next(run, reuse=True)` does."""

    delivery_id: str
    action: str
    payload: str
    run: NewRun


Ack = PushAck | PullAck | RecordAck


class Acked(NamedTuple):
    """What one acknowledgement did. `new_delivery` False: a redelivery, nothing else happened."""

    new_delivery: bool
    run_id: str | None = None
    created: bool = False
    superseded: tuple[str, ...] = ()


_INSERT_DELIVERY = (
    "INSERT INTO deliveries (id, event, action, repo, installation_id, received_at, processed_at,"
    " payload, outcome, error) VALUES (:id, :event, :action, :repo, :installation_id, :now, :now,"
    " :payload, 'processed', NULL) ON CONFLICT (id) DO NOTHING RETURNING id"
)
_LOCK_KEY = "SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"
_REPLACED = (
    "SELECT id, status, cancel_requested FROM runs WHERE repo = :repo AND branch = :branch"
    " AND head_sha <> :sha AND head_sha = :before AND status IN (:queued, :running)"
)
_CANCEL_QUEUED = (
    "UPDATE runs SET status = :cancelled, conclusion = 'cancelled', finished_at = :now,"
    " superseded_by = :sha, cancel_reason = :reason, updated_at = :now WHERE id = :id"
)
_ASK_TO_STOP = (
    "UPDATE runs SET cancel_requested = :yes, superseded_by = :sha, cancel_reason = :reason,"
    " updated_at = :now WHERE id = :id"
)
_SAME_IN_FLIGHT = (
    "SELECT id FROM runs WHERE repo = :repo AND branch = :branch AND head_sha = :sha"
    " AND check_name = :check AND status IN (:queued, :running) AND cancel_requested = :no LIMIT 1"
)
_LIVE_OF_KEY = (
    "SELECT id FROM runs WHERE repo = :repo AND head_sha = :sha AND check_name = :check"
    " AND status <> :cancelled AND cancel_requested = :no ORDER BY attempt DESC LIMIT 1"
)
_LAST_ATTEMPT = "SELECT max(attempt) FROM runs WHERE repo = :repo AND head_sha = :sha AND check_name = :check"
_INSERT_RUN = (
    "INSERT INTO runs (id, repo, branch, head_sha, check_name, attempt, base_ref, clone_url,"
    " installation_id, delivery_id, trigger, status, cancel_requested, pr_number, created_at, updated_at)"
    " VALUES (:id, :repo, :branch, :sha, :check, :attempt, :base_ref, :clone_url, :installation_id,"
    " :delivery_id, :trigger, :queued, :no, :pr_number, :now, :now)"
)
_NAMED = re.compile(r":([a-z_]+)")


class AckWriter:
    """Writes acknowledgements in batches, one transaction per batch. One thread uses it at a time
    (the webhook's writer thread); on SQLite it queues on the Store's writer lock like every other
    write of this process."""

    def __init__(self, engine: Engine, url: URL, sqlite_writers: threading.Lock) -> None:
        self._engine = engine
        self._url = url
        self._postgres = engine.dialect.name == "postgresql"
        self._writers = None if self._postgres else sqlite_writers
        self._sql = {name: self._dialect(sql) for name, sql in _STATEMENTS.items()}
        if self._postgres:
            self._sql["replaced"] += " FOR UPDATE"
        self._fairy: Any = None
        dbapi = engine.dialect.dbapi
        self._infrastructure: tuple[type[BaseException], ...] = (
            (dbapi.OperationalError, dbapi.InterfaceError) if dbapi is not None else ()
        )

    def _dialect(self, sql: str) -> str:
        """sqlite3 takes `:name`; psycopg takes `%(name)s`."""
        return _NAMED.sub(r"%(\1)s", sql) if self._postgres else sql

    def close(self) -> None:
        if self._fairy is not None:
            self._fairy.close()
            self._fairy = None

    def write(self, acks: Sequence[Ack]) -> list[Acked | Exception]:
        """Acknowledge `acks` in one transaction; what failed for one is returned in its place. If the
        batch fails for any reason but the database's absence, each is tried again alone, so one
        delivery the database refuses fails only itself."""
        try:
            return list(self._transaction(acks))
        except InfrastructureError as exc:
            return [exc] * len(acks)
        except Exception as exc:
            if len(acks) == 1:
                return [exc]
        results: list[Acked | Exception] = []
        for ack in acks:
            try:
                results.append(self._transaction([ack])[0])
            except Exception as exc:
                results.append(exc)
        return results

    def _connection(self) -> Any:
        if self._fairy is None:
            self._fairy = self._engine.raw_connection()
        return self._fairy.dbapi_connection

    def _transaction(self, acks: Sequence[Ack]) -> list[Acked]:
        lock = self._writers or _NO_LOCK
        with lock:
            try:
                connection = self._connection()
                cursor = connection.cursor()
                if not self._postgres:
                    cursor.execute("BEGIN IMMEDIATE")
                try:
                    now = utcnow()
                    results = [self._one(cursor, ack, now) for ack in acks]
                except BaseException:
                    connection.rollback()
                    raise
                connection.commit()
                return results
            except self._infrastructure as exc:
                self._invalidate()
                cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise InfrastructureError(
                    f"database {database.redact(self._url)}: acknowledging a delivery failed: {cause}"
                ) from exc

    def _invalidate(self) -> None:
        if self._fairy is not None:
            try:
                self._fairy.invalidate()
            finally:
                self._fairy = None

    def _stamp(self, now: datetime) -> datetime | str:
        """SQLite keeps naive UTC in SQLAlchemy's fixed-width text format (see `UTCDateTime`)."""
        return now if self._postgres else now.replace(tzinfo=None).isoformat(" ", "microseconds")

    def _one(self, cursor: Any, ack: Ack, now: datetime) -> Acked:
        if isinstance(ack, RecordAck):
            params: dict[str, Any] = {
                "id": ack.delivery_id,
                "event": ack.event,
                "action": ack.action,
                "repo": ack.repo,
                "installation_id": ack.installation_id,
                "payload": ack.payload,
                "now": self._stamp(now),
            }
            cursor.execute(self._sql["delivery"], params)
            return Acked(cursor.fetchone() is not None)
        run = ack.run
        params = {
            "id": ack.delivery_id,
            "event": "push" if isinstance(ack, PushAck) else "pull_request",
            "action": ack.action if isinstance(ack, PullAck) else None,
            "repo": run.repo,
            "installation_id": run.installation_id,
            "payload": ack.payload,
            "now": self._stamp(now),
            "branch": run.branch,
            "sha": run.head_sha,
            "check": run.check_name,
            "queued": _QUEUED,
            "running": _RUNNING,
            "cancelled": _CANCELLED,
            "yes": True,
            "no": False,
        }
        cursor.execute(self._sql["delivery"], params)
        if cursor.fetchone() is None:
            return Acked(False)
        if self._postgres:
            key = f"loopgate-run:{run.repo}:{run.head_sha}:{run.check_name}"
            cursor.execute(self._sql["lock"], {"key": key})
        if isinstance(ack, PullAck):
            cursor.execute(self._sql["live"], params)
            existing = cursor.fetchone()
            if existing is not None:
                return Acked(True, existing[0], False)
            return Acked(True, self._insert_run(cursor, run, params), True)
        return self._push(cursor, ack, params)

    def _push(self, cursor: Any, ack: PushAck, params: dict[str, Any]) -> Acked:
        """Supersede the runs of `before`, then attach to the branch's run of this SHA in flight, or
        queue the next attempt."""
        params = {**params, "before": ack.replaces, "reason": f"superseded by {ack.run.head_sha}"}
        if ack.warmup is not None:
            self._warm(cursor, ack.warmup, params)
        cursor.execute(self._sql["replaced"], params)
        superseded = []
        for run_id, status, cancel_requested in cursor.fetchall():
            if status == _RUNNING and cancel_requested:
                continue  # already asked to stop; its first reason stands
            cursor.execute(self._sql["cancel" if status == _QUEUED else "stop"], {**params, "id": run_id})
            superseded.append(run_id)
        cursor.execute(self._sql["same"], params)
        existing = cursor.fetchone()
        if existing is not None:
            return Acked(True, existing[0], False, tuple(superseded))
        return Acked(True, self._insert_run(cursor, ack.run, params), True, tuple(superseded))

    def _warm(self, cursor: Any, warmup: NewWarmup, params: dict[str, Any]) -> None:
        """Queue the warm-up of the default branch's new head, or fold it into the queued one: one
        upsert, on the default branch's pushes only."""
        values = {
            "repo": warmup.repo,
            "branch": warmup.branch,
            "sha": warmup.head_sha,
            "clone_url": warmup.clone_url,
            "installation_id": warmup.installation_id,
            "delivery_id": warmup.delivery_id,
            "now": params["now"],
        }
        cursor.execute(self._sql["warmup"], values)

    def _insert_run(self, cursor: Any, run: NewRun, params: dict[str, Any]) -> str:
        """Insert `run` as its key's next attempt (the caller holds the key's lock)."""
        cursor.execute(self._sql["attempt"], params)
        attempt = (cursor.fetchone()[0] or 0) + 1
        values = {
            **params,
            "id": run.id,
            "attempt": attempt,
            "base_ref": run.base_ref,
            "clone_url": run.clone_url,
            "delivery_id": run.delivery_id,
            "trigger": run.trigger,
            "pr_number": run.pr_number,
        }
        cursor.execute(self._sql["run"], values)
        return run.id


_STATEMENTS = {
    "delivery": _INSERT_DELIVERY,
    "lock": _LOCK_KEY,
    "replaced": _REPLACED,
    "cancel": _CANCEL_QUEUED,
    "stop": _ASK_TO_STOP,
    "same": _SAME_IN_FLIGHT,
    "live": _LIVE_OF_KEY,
    "attempt": _LAST_ATTEMPT,
    "run": _INSERT_RUN,
    "warmup": _UPSERT_WARMUP,
}


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


_NO_LOCK = _NoLock()
