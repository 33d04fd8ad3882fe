"""The tables: webhook deliveries, App installations, verification runs.

These models describe the schema the migrations build; a change here needs a new revision in
`bot/store/migrations/versions/` (see `bot.store.migrate`). The store hands out snapshots, never
these objects, so no caller ever holds a session.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

RUNNING = "status = 'running'"


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on both backends.

    PostgreSQL keeps `timestamptz`; SQLite has no time zones, so values are stored as naive UTC in
    SQLAlchemy's fixed-width text format, which also sorts and compares correctly as text.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value} given to the store; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


class Delivery(Base):
    """One webhook delivery, keyed by `X-GitHub-Delivery`: a redelivery finds its row and stops."""

    __tablename__ = "deliveries"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    event: Mapped[str] = mapped_column(String(64))
    action: Mapped[str | None] = mapped_column(String(64))
    repo: Mapped[str | None] = mapped_column(String(256))
    installation_id: Mapped[int | None] = mapped_column(BigInteger)
    received_at: Mapped[datetime]
    # Handled means its runs are enqueued; a delivery received but not handled before a crash is
    # found again at start, since GitHub's redelivery of it is (rightly) a no-op.
    processed_at: Mapped[datetime | None]
    # The body exactly as received: it is what the signature covered. A rejected body that is not
    # UTF-8 JSON is kept with its undecodable bytes and NULs replaced (it is never acted on).
    payload: Mapped[str] = mapped_column(Text)
    # None while unhandled; then `processed`, `rejected` (malformed, answered 400) or `failed` (its
    # handler raised on replay). Rows processed before revision 0003 keep None with a processed_at.
    outcome: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)


class Installation(Base):
    __tablename__ = "installations"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    account: Mapped[str] = mapped_column(String(256))
    repositories: Mapped[list[str]] = mapped_column(JSON)
    suspended: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime]


class Run(Base):
    """One verification of (repo, head SHA, check name, attempt), from queued to concluded."""

    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("repo", "head_sha", "check_name", "attempt", name="uq_runs_key"),
        # The claim query: oldest queued first.
        Index("ix_runs_status_created_at", "status", "created_at"),
        Index("ix_runs_repo_branch", "repo", "branch"),
        # At most one running run per branch, enforced by the database itself, so that two
        # PostgreSQL workers claiming two runs of one branch at the same instant cannot both win.
        Index(
            "uq_runs_one_running_per_branch",
            "repo",
            "branch",
            unique=True,
            sqlite_where=text(RUNNING),
            postgresql_where=text(RUNNING),
        ),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    repo: Mapped[str] = mapped_column(String(256))
    branch: Mapped[str] = mapped_column(String(256))
    head_sha: Mapped[str] = mapped_column(String(64))
    check_name: Mapped[str] = mapped_column(String(128))
    attempt: Mapped[int] = mapped_column(Integer)
    base_ref: Mapped[str | None] = mapped_column(String(256))
    clone_url: Mapped[str | None] = mapped_column(String(1024))
    installation_id: Mapped[int | None] = mapped_column(BigInteger)
    delivery_id: Mapped[str | None] = mapped_column(String(64))
    trigger: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    verdict: Mapped[str | None] = mapped_column(String(16))
    conclusion: Mapped[str | None] = mapped_column(String(32))
    evidence: Mapped[str | None] = mapped_column(Text)
    check_run_id: Mapped[int | None] = mapped_column(BigInteger)
    comment_id: Mapped[int | None] = mapped_column(BigInteger)
    pr_number: Mapped[int | None] = mapped_column(Integer)
    routing_key: Mapped[str | None] = mapped_column(String(16))
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    superseded_by: Mapped[str | None] = mapped_column(String(64))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    cancel_reason: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class PullDraft(Base):
    """A pull request loopgate turned into a draft, so a later pass may mark it ready again.

    Kept as data, one row per PR: a draft the author chose has no row and stays a draft. The row goes
    when loopgate marks the PR ready or the author does.
    """

    __tablename__ = "pull_drafts"

    repo: Mapped[str] = mapped_column(String(256), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    run_id: Mapped[str | None] = mapped_column(String(64))
    drafted_at: Mapped[datetime]


class PullComment(Base):
    """The sticky comment of one PR, once GitHub gave it an id, so later upserts edit it directly.

    On PostgreSQL the find-or-create of the comment also holds an advisory lock on (repo, PR), so two
    replicas refreshing one PR at the same instant post one comment between them.
    """

    __tablename__ = "pull_comments"

    repo: Mapped[str] = mapped_column(String(256), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    comment_id: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime]


class Report(Base):
    """A check-run conclusion or sticky comment that must reach GitHub: the outbox.

    Written in the transaction that concludes the run, delivered by any replica's dispatcher (rows
    claimed with SKIP LOCKED and leased until `next_attempt_at`), retried with backoff until GitHub
    accepts it. Deliveries are idempotent: a check is a PATCH of a known id, a comment an upsert.
    """

    __tablename__ = "reports"
    __table_args__ = (
        # The dispatcher's query: pending rows whose next attempt is due.
        Index("ix_reports_delivered_at_next_attempt_at", "delivered_at", "next_attempt_at"),
        Index("ix_reports_repo_kind_target", "repo", "kind", "target"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str | None] = mapped_column(String(64))
    repo: Mapped[str] = mapped_column(String(256))
    installation_id: Mapped[int | None] = mapped_column(BigInteger)
    # `check` (target: the check run id) or `comment` (target: the PR number).
    kind: Mapped[str] = mapped_column(String(16))
    target: Mapped[int] = mapped_column(BigInteger)
    payload: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    # Set once GitHub accepted it, or once a newer report for the same target replaced it.
    delivered_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(16))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]


QUEUED = "status = 'queued'"


class Warmup(Base):
    """A baseline to start before any run asks for it: the default branch of `repo` moved.

    At most one queued warm-up per repository (a partial unique index), so a newer push of the
    default branch folds into the queued row (`pushes` counts them) rather than queueing a second
    one: only the latest head is warmed. At most one runs per repository at a time. A worker takes
    one only when no run is waiting (`bot.store.warmups`); it is never a check on GitHub.
    """

    __tablename__ = "warmups"
    __table_args__ = (
        Index("ix_warmups_status_created_at", "status", "created_at"),
        Index(
            "uq_warmups_one_queued_per_repo",
            "repo",
            unique=True,
            sqlite_where=text(QUEUED),
            postgresql_where=text(QUEUED),
        ),
        Index(
            "uq_warmups_one_running_per_repo",
            "repo",
            unique=True,
            sqlite_where=text(RUNNING),
            postgresql_where=text(RUNNING),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    repo: Mapped[str] = mapped_column(String(256))
    branch: Mapped[str] = mapped_column(String(256))
    head_sha: Mapped[str] = mapped_column(String(64))
    """The pushed head; the worker warms the branch head it finds in the mirror (the newest)."""
    clone_url: Mapped[str] = mapped_column(String(1024))
    installation_id: Mapped[int | None] = mapped_column(BigInteger)
    delivery_id: Mapped[str | None] = mapped_column(String(64))
    pushes: Mapped[int] = mapped_column(Integer)
    # queued, running, then ready, failed (detail: the one-line cause) or skipped (detail: why).
    status: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)
    warmed_sha: Mapped[str | None] = mapped_column(String(64))
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
