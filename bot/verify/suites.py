"""A suite's raw outcome (exit code, JUnit, log) turned into the Evidence's judgement of it."""

from __future__ import annotations

from bot.evidence import Counts, SuiteResult
from bot.verify.junit import parse_junit
from bot.verify.observed import RanSuite


def judge_suite(name: str, source: str, gating: bool, outcome: RanSuite) -> SuiteResult:
    """Exit code decides; JUnit explains. A zero exit with JUnit failures still fails: runners that
    swallow failures must not open a gate."""
    counts, failures, note = Counts(), [], ""
    if outcome.junit_xml is not None:
        try:
            report = parse_junit(outcome.junit_xml)
            counts, failures = report.counts, report.failures
        except ValueError as exc:
            note = f"\n[loopgate] {exc}"
    if outcome.timed_out:
        status = "timed_out"
    elif outcome.exit_code == 0 and counts.failed == 0 and counts.errors == 0:
        status = "passed"
    elif counts.failed or counts.errors:
        status = "failed"
    else:
        status = "errored"  # non-zero exit and no failing test recorded: it could not run
    return SuiteResult(
        name=name,
        source="head" if source == "head" else "base",
        status=status,
        gating=gating,
        exit_code=outcome.exit_code,
        counts=counts,
        duration_ms=outcome.duration_ms,
        failures=failures,
        log_tail=outcome.log_tail + note,
    )
