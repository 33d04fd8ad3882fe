"""What the store takes and gives: plain frozen values, detached from any session."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from bot.evidence import Evidence


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


IN_FLIGHT = (RunStatus.QUEUED, RunStatus.RUNNING)
FINISHED = (RunStatus.COMPLETED, RunStatus.CANCELLED)


@dataclass(frozen=True, slots=True)
class NewRun:
    """A run to enqueue. `id` is the caller's, unguessable: it appears in evidence page URLs."""

    id: str
    repo: str
    branch: str
    head_sha: str
    check_name: str
    trigger: str
    attempt: int = 1
    base_ref: str | None = None
    clone_url: str | None = None
    installation_id: int | None = None
    delivery_id: str | None = None
    pr_number: int | None = None


@dataclass(frozen=True, slots=True)
class RunSnapshot:
    id: str
    repo: str
    branch: str
    head_sha: str
    check_name: str
    attempt: int
    base_ref: str | None
    clone_url: str | None
    installation_id: int | None
    delivery_id: str | None
    trigger: str
    status: RunStatus
    verdict: str | None
    conclusion: str | None
    evidence_json: str | None
    check_run_id: int | None
    comment_id: int | None
    pr_number: int | None
    routing_key: str | None
    claimed_by: str | None
    claimed_at: datetime | None
    heartbeat_at: datetime | None
    superseded_by: str | None
    cancel_requested: bool
    cancel_reason: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @property
    def in_flight(self) -> bool:
        return self.status in IN_FLIGHT

    def evidence(self) -> Evidence | None:
        """The stored Evidence, parsed (None while the run has none)."""
        return None if self.evidence_json is None else Evidence.model_validate_json(self.evidence_json)


@dataclass(frozen=True, slots=True)
class AcceptedPush:
    """What a push delivery did: `run` is the run queued (`created`) or the one it attached to;
    both are None/False for a redelivery."""

    new_delivery: bool
    run: RunSnapshot | None
    created: bool
    superseded: list[RunSnapshot]


@dataclass(frozen=True, slots=True)
class InstallationSnapshot:
    id: int
    account: str
    repositories: tuple[str, ...]
    suspended: bool
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class DeliverySnapshot:
    id: str
    event: str
    action: str | None
    repo: str | None
    installation_id: int | None
    received_at: datetime
    processed_at: datetime | None
    payload: str
    outcome: str | None = None
    """None while unhandled; `processed`, `rejected` or `failed` after."""
    error: str | None = None


@dataclass(frozen=True, slots=True)
class NewReport:
    """What must reach GitHub: a check conclusion (`target` = check run id) or a sticky comment
    (`target` = PR number), its payload rendered as JSON."""

    repo: str
    installation_id: int | None
    kind: str
    target: int
    payload: str
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class ReportSnapshot:
    id: int
    run_id: str | None
    repo: str
    installation_id: int | None
    kind: str
    target: int
    payload: str
    attempts: int
    next_attempt_at: datetime
    delivered_at: datetime | None
    outcome: str | None
    last_error: str | None


@dataclass(slots=True)
class CommentSlot:
    """A PR's sticky comment id as the store knows it, held under the PR's lock; set `comment_id`
    inside the lock and the store keeps it."""

    repo: str
    number: int
    comment_id: int | None


class WarmupStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    READY = "ready"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class NewWarmup:
    """A push moved `branch`, the repository's default branch, to `head_sha`: warm its baseline."""

    repo: str
    branch: str
    head_sha: str
    clone_url: str
    installation_id: int | None
    delivery_id: str | None


@dataclass(frozen=True, slots=True)
class WarmupSnapshot:
    id: int
    repo: str
    branch: str
    head_sha: str
    clone_url: str
    installation_id: int | None
    delivery_id: str | None
    pushes: int
    """How many default-branch pushes this warm-up stands for: the older ones were superseded."""
    status: WarmupStatus
    detail: str | None
    warmed_sha: str | None
    claimed_by: str | None
    claimed_at: datetime | None
    heartbeat_at: datetime | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
