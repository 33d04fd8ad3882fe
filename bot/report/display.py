"""Human forms of Evidence values: words, durations, counts and selections.

Templates hold no logic, so every value they show that is not a field as it stands is computed here.
Nothing here escapes: the environment does that for the output format.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from bot.evidence import (
    Counts,
    DiffResult,
    ErrorKind,
    Evidence,
    Finding,
    ServiceResult,
    SuiteResult,
    TestFailure,
    Verdict,
)

T = TypeVar("T")

# One clear word per verdict, no emoji: it must read the same in a terminal, a mail and a screen reader.
VERDICT_WORDS = {
    Verdict.PASS: "PASS",
    Verdict.FAIL: "FAIL",
    Verdict.ERROR: "ERROR",
    Verdict.INCONCLUSIVE: "INCONCLUSIVE",
}
PENDING = "PENDING"

# Problems are upper case so they stand out in a table of lower-case successes.
STATUS_WORDS = {
    "passed": "passed",
    "failed": "FAILED",
    "errored": "ERRORED",
    "timed_out": "TIMED OUT",
    "baseline": "baseline",
    "ready": "ready",
    "build_failed": "BUILD FAILED",
    "start_failed": "START FAILED",
    "ok": "ok",
    "error": "ERROR",
    "skipped": "skipped",
    "cancelled": "cancelled",
}

PROBLEMS = frozenset({"failed", "errored", "timed_out", "build_failed", "start_failed", "error"})

SHORT_SHA = 7
NOTHING = "—"


@dataclass(frozen=True)
class FindingRow:
    """One row of the diff table: a finding with the request it was found on."""

    request: str
    service: str
    finding: Finding
    against: str = "baseline"
    """What the sandbox's answer was compared with: `baseline` or `control`."""


def verdict_word(verdict: Verdict | None) -> str:
    return VERDICT_WORDS[verdict] if verdict is not None else PENDING


def verdict_class(verdict: Verdict | None) -> str:
    """The CSS class of the verdict banner in the HTML page."""
    return f"verdict-{verdict.value}" if verdict is not None else "verdict-pending"


def verdict_label(evidence: Evidence) -> str:
    """The verdict word, with the error kind for errors, since config and infrastructure errors need
    different people to act."""
    word = verdict_word(evidence.verdict)
    if evidence.verdict is Verdict.ERROR and evidence.error_kind is not None:
        return f"{word} ({evidence.error_kind.value})"
    return word


def is_config_error(evidence: Evidence) -> bool:
    return evidence.verdict is Verdict.ERROR and evidence.error_kind is ErrorKind.CONFIG


def status_word(status: str) -> str:
    return STATUS_WORDS.get(status, status)


def is_problem(status: str) -> bool:
    return status in PROBLEMS


def short_sha(sha: str | None) -> str:
    return sha[:SHORT_SHA] if sha else "unknown"


def duration(ms: int | None) -> str:
    """Milliseconds as a person reads them: `850 ms`, `4.2 s`, `3 min 05 s`, `1 h 02 min`."""
    if ms is None:
        return NOTHING
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    seconds = ms // 1000
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def timestamp(moment: datetime | None) -> str:
    if moment is None:
        return NOTHING
    utc = moment.astimezone(UTC) if moment.tzinfo else moment
    return utc.strftime("%Y-%m-%d %H:%M:%SZ")


def thousands(number: int) -> str:
    return f"{number:,}"


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def counts(value: Counts) -> str:
    """Test counts, the zeros left out except for the total and the passed."""
    parts = [f"{value.passed} passed"]
    parts += [f"{n} {label}" for n, label in _problem_counts(value) if n]
    return f"{plural(value.tests, 'test')}: " + ", ".join(parts)


def _problem_counts(value: Counts) -> list[tuple[int, str]]:
    return [(value.failed, "failed"), (value.errors, "errors"), (value.skipped, "skipped")]


def location(failure: TestFailure) -> str | None:
    """`file:line` of a failure, or the file alone, or None when the runner gave neither."""
    if failure.file is None:
        return None
    return f"{failure.file}:{failure.line}" if failure.line is not None else failure.file


def clip(text: str, limit: int) -> str:
    """At most `limit` characters, the cut marked. For single values; budgets cut whole sections."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def failing(suites: list[SuiteResult]) -> list[SuiteResult]:
    return [s for s in suites if s.status != "passed"]


def broken(services: list[ServiceResult]) -> list[ServiceResult]:
    return [s for s in services if s.status in ("build_failed", "start_failed")]


def forked(services: list[ServiceResult]) -> list[ServiceResult]:
    return [s for s in services if s.forked]


def finding_rows(diff: list[DiffResult]) -> list[FindingRow]:
    """Requests by findings, flattened into table rows, breaking ones first (stable otherwise)."""
    # `against` is read defensively: records from before control forks existed have no such field.
    rows = [FindingRow(r.request, r.service, f, r.against) for r in diff for f in r.findings]
    return sorted(rows, key=lambda row: not row.finding.breaking)


def differing(diff: list[DiffResult]) -> list[DiffResult]:
    return [r for r in diff if r.findings]


def breaking(diff: list[DiffResult]) -> list[Finding]:
    return [f for r in diff for f in r.findings if f.breaking]


SUITE_SOURCES = {
    "base": "the team's suite (base commit)",
    "head": "the agent's suite (its branch)",
}
WHOLE_BODY = "the whole body"


def suite_source(source: str) -> str:
    """Where a suite came from, in words: `base` and `head` alone mean nothing to a reader."""
    return SUITE_SOURCES.get(source, source)


def where(pointer: str) -> str:
    """A finding's place: its JSON pointer, or the whole body for the empty pointer (RFC 6901's root)."""
    return pointer or WHOLE_BODY


def compared_with(against: str) -> str:
    """What the sandbox's answer was compared with: the shared baseline or the control fork."""
    return {"baseline": "baseline", "control": "control (base code, same data)"}.get(against, against)


def from_agent(suites: list[SuiteResult]) -> list[SuiteResult]:
    """The suites that came from the agent's branch (head), not from the team's base commit."""
    return [s for s in suites if s.source == "head"]


def gate_word(suite: SuiteResult) -> str:
    """How the suite bears on the verdict: the team's gating suites decide it; the agent's can only
    tighten it (their failure fails the change, their pass proves nothing)."""
    if not suite.gating:
        return "no"
    return "yes" if suite.source == "base" else "failure only"


def gates(suite: SuiteResult) -> bool:
    """Whether the suite decides the verdict: head's suites are reported but never loosen the gate."""
    return suite.gating and suite.source == "base"


def rest(items: list[T]) -> list[T]:
    return items[1:]


def count(items: list[T]) -> int:
    return len(items)


def headline(reasons: list[str]) -> str | None:
    """The most important reason: the Evidence keeps reasons most important first."""
    return reasons[0] if reasons else None


def suites_with(suites: list[SuiteResult], status: str) -> list[SuiteResult]:
    return [s for s in suites if s.status == status]


def total_counts(suites: list[SuiteResult]) -> Counts:
    """The sum of all suites' counts, for the one-line summary of a check run."""
    return Counts(
        tests=sum(s.counts.tests for s in suites),
        passed=sum(s.counts.passed for s in suites),
        failed=sum(s.counts.failed for s in suites),
        errors=sum(s.counts.errors for s in suites),
        skipped=sum(s.counts.skipped for s in suites),
    )


def run_duration(evidence: Evidence) -> int | None:
    """Milliseconds from start to finish, None while the run is in flight."""
    if evidence.finished_at is None:
        return None
    return max(int((evidence.finished_at - evidence.started_at).total_seconds() * 1000), 0)
