"""The Evidence: the one record every stage extends and every report renders.

It is a public contract for agents (`schema_version` 1, JSON Schema in docs/evidence.schema.json):
changing a field's meaning bumps the version; adding an optional field does not.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION: Literal[1] = 1


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"
    INCONCLUSIVE = "inconclusive"


class ErrorKind(StrEnum):
    CONFIG = "config"
    INFRASTRUCTURE = "infrastructure"


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GitRef(Record):
    ref: str
    sha: str | None = None
    subject: str | None = Field(default=None, description="The commit's subject line (untrusted text).")


class ServiceResult(Record):
    name: str
    forked: bool
    reason: str = Field(description="Why the service was or was not forked, e.g. the changed paths.")
    image_or_source: str | None = Field(default=None, description="What the fork ran: a commit and dir.")
    ready_ms: int | None = Field(default=None, description="Fork start to healthy, build excluded.")
    build_ms: int | None = None
    tagged_requests: int = Field(
        default=0,
        description="Requests tagged for this sandbox that the service received: for a fork, those the"
        " fork served; for any other service, those that passed it on their way to its baseline.",
    )
    status: Literal["baseline", "ready", "build_failed", "start_failed"] = "baseline"
    url: str | None = Field(default=None, description="The fork's own address while it runs.")
    log_tail: str | None = None


class Counts(Record):
    tests: int = 0
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0


class TestFailure(Record):
    __test__ = False  # not a pytest test class, whatever its name says
    test: str
    message: str
    file: str | None = None
    line: int | None = None
    pre_existing: bool = Field(
        default=False,
        description="The same test also fails on the baseline (the suite run untagged): not the change's.",
    )
    failed_runs: int | None = Field(
        default=None,
        ge=1,
        description="In how many of the suite's `runs` on the sandbox this test failed; None when the suite"
        " ran once. Fewer than `runs`: intermittent, and still counted.",
    )


class SuiteResult(Record):
    name: str
    source: Literal["base", "head"]
    status: Literal["passed", "failed", "errored", "timed_out"]
    gating: bool = True
    exit_code: int | None = None
    counts: Counts = Field(default_factory=Counts)
    duration_ms: int = 0
    failures: list[TestFailure] = Field(default_factory=list)
    log_tail: str = ""
    baseline_status: Literal["passed", "failed", "errored", "timed_out"] | None = Field(
        default=None,
        description="The same suite run untagged against the baseline; only run when a gating suite"
        " failed or errored on the sandbox (not after a timeout), None when it was not run.",
    )
    pre_existing: bool = Field(
        default=False,
        description="Every failure also shows on the baseline (per test, or the same status without"
        " JUnit): reported, not counted against the change.",
    )
    runs: int = Field(
        default=1,
        ge=1,
        description="Runs on the sandbox: a gating suite with sandbox-only failures runs again"
        " (`repeat_failed`) to tell how often each one fails.",
    )


class Finding(Record):
    kind: str
    pointer: str
    baseline: str | None = None
    sandbox: str | None = None
    breaking: bool


class DiffResult(Record):
    request: str
    service: str
    findings: list[Finding] = Field(default_factory=list)
    against: Literal["baseline", "control"] = Field(
        default="baseline",
        description="What the sandbox's answer was compared with: the shared baseline's (a finding's"
        " `baseline` is its value), or the control's, the base code on a copy of the same data (the"
        " finding's `baseline` is the control's value).",
    )
    noise: list[str] = Field(
        default_factory=list,
        description="Where values differed between the two control answers (array indices as `*`): never"
        " findings.",
    )


class Propagation(Record):
    service: str
    drops_baggage_to: list[str] = Field(default_factory=list)


class RequestEdge(Record):
    """One edge of the observed request map: the sandbox's requests that `source` made to `target`."""

    source: str | None = Field(
        description="The calling service; None for the entry, a suite's own request (drawn as `client`)."
    )
    target: str
    tagged: int = Field(default=0, description="Requests that arrived tagged for the sandbox.")
    untagged: int = Field(default=0, description="Requests of the sandbox's traces that arrived untagged.")
    lost_tag: bool = Field(
        default=False,
        description="The caller received the request tagged and made this call untagged: the tag was"
        " lost on this hop (the caller drops `baggage`).",
    )


class Stage(Record):
    name: str
    started_at: datetime
    duration_ms: int
    outcome: Literal["ok", "failed", "skipped", "error", "cancelled"]
    detail: str | None = None


class Links(Record):
    html: str | None = None
    json_: str | None = Field(default=None, alias="json")

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Evidence(Record):
    schema_version: Literal[1] = SCHEMA_VERSION
    run_id: str
    verdict: Verdict | None = Field(default=None, description="None while in flight, or when cancelled.")
    cancelled: bool = Field(default=False, description="Stopped before a verdict (superseded, deleted).")
    error_kind: ErrorKind | None = Field(default=None, description="Set with verdict `error`.")
    reasons: list[str] = Field(default_factory=list, description="One line each, most important first.")
    repo: str
    base: GitRef
    head: GitRef
    merge_sha: str | None = None
    trigger: str = "cli"
    confined: bool = Field(
        default=True,
        description="False when builds, forks and suites ran without isolation (LOOPGATE_CONFINE=off):"
        " the agent's code could then reach loopgate's secrets and the suites judging it.",
    )
    routing_key: str | None = None
    control_keys: list[str] = Field(
        default_factory=list, description="The routing keys of the sandbox's controls (primary, secondary)."
    )
    changed_files: list[str] = Field(default_factory=list)
    services: list[ServiceResult] = Field(default_factory=list)
    suites: list[SuiteResult] = Field(default_factory=list)
    diff: list[DiffResult] = Field(default_factory=list)
    propagation: list[Propagation] = Field(default_factory=list)
    request_map: list[RequestEdge] = Field(
        default_factory=list,
        description="Who called whom with the sandbox's traffic, from the traces the data plane saw.",
    )
    stages: list[Stage] = Field(
        default_factory=list,
        description="Each stage as it ran, in the order the stages started. Stages may overlap: the"
        " baseline starts while the changed services build, so `baseline` and `build` can share time"
        " (and the sum of the durations exceed the run's).",
    )
    links: Links = Field(default_factory=Links)
    notes: list[str] = Field(default_factory=list, description="Facts worth knowing that decide nothing.")
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None

    def service(self, name: str) -> ServiceResult | None:
        return next((s for s in self.services if s.name == name), None)

    @property
    def forks(self) -> list[ServiceResult]:
        return [s for s in self.services if s.forked]
