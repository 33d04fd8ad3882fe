"""What the Store's parts share: the engine, one transaction per call, and its errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from types import TracebackType
from typing import Self

from sqlalchemy import Engine, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bot.evidence import utcnow
from bot.store import database
from bot.store.models import Delivery, Installation, PullComment, PullDraft, Run
from bot.store.snapshots import NewWarmup

WARMUP_UPSERT = (
    "INSERT INTO warmups (repo, branch, head_sha, clone_url, installation_id, delivery_id, pushes,"
    " status, created_at, updated_at) VALUES (:repo, :branch, :sha, :clone_url, :installation_id,"
    " :delivery_id, 1, 'queued', :now, :now) ON CONFLICT (repo) WHERE status = 'queued' DO UPDATE SET"
    " branch = excluded.branch, head_sha = excluded.head_sha, clone_url = excluded.clone_url,"
    " installation_id = excluded.installation_id, delivery_id = excluded.delivery_id,"
    " pushes = warmups.pushes + 1, updated_at = excluded.updated_at"
)
"""Queue a warm-up, or fold the push into the repository's queued one (`bot.store.warmups`). One
statement, in sqlite3's parameter style (`:name`); `bot.store.acks` rewrites it for psycopg."""


class UnknownRun(LookupError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run {run_id!r} in the store")


class LostClaim(RuntimeError):
    """The worker no longer holds the run (it was reaped and taken over): it must not report it."""

    def __init__(self, run_id: str, worker_id: str) -> None:
        super().__init__(f"run {run_id!r} is no longer claimed by {worker_id!r}")


class StoreBase:
    """The connection and transactions every part of the Store shares."""

    def __init__(self, engine: Engine, url: URL) -> None:
        self._engine = engine
        self._url = url
        self._read = sessionmaker(bind=engine, expire_on_commit=False)
        # On SQLite a write transaction begins IMMEDIATE (see bot.store.database._begin).
        writer = engine.execution_options(**{database.WRITE_OPTION: True})
        self._write = sessionmaker(bind=writer, expire_on_commit=False)
        self.backend = engine.dialect.name
        self._sqlite_writers = threading.Lock()

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

    def _lock_key(self, session: Session, repo: str, head_sha: str, check_name: str) -> None:
        """Serialise attempt allocation for one key. PostgreSQL: a transaction-scoped advisory
        lock (no row exists yet to lock); SQLite: every write transaction already holds the file."""
        if self.backend == "postgresql":
            key = f"loopgate-run:{repo}:{head_sha}:{check_name}"
            session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key})

    def _upsert_warmup(self, session: Session, warmup: NewWarmup) -> None:
        """Queue a warm-up or fold it into the repository's queued one (`bot.store.warmups.UPSERT`).
        Raw SQL bypasses the column types, so SQLite gets `UTCDateTime`'s naive UTC text itself."""
        now = utcnow()
        naive = now.replace(tzinfo=None).isoformat(" ", "microseconds")
        stamp = now if self.backend == "postgresql" else naive
        params = {**asdict(warmup), "sha": warmup.head_sha, "now": stamp}
        session.execute(text(WARMUP_UPSERT), params)

    def ping(self) -> bool:
        """Readiness: can the database answer right now? Never raises."""
        try:
            with self._engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False
