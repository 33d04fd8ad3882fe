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


def blame(sandbox: SuiteResult, baseline: SuiteResult) -> SuiteResult:
    """`sandbox` with what the baseline shows too marked pre-existing (DESIGN "Blame"): per JUnit test
    id when the sandbox run has per-test failures, else by status (the same status on both)."""
    seen = {failure.test for failure in baseline.failures}
    failures = [f.model_copy(update={"pre_existing": f.test in seen}) for f in sandbox.failures]
    if sandbox.status == "failed":
        complete = len(failures) == sandbox.counts.failed + sandbox.counts.errors
        pre_existing = complete and all(f.pre_existing for f in failures)
    else:
        pre_existing = sandbox.status != "passed" and baseline.status == sandbox.status
    return sandbox.model_copy(
        update={"failures": failures, "baseline_status": baseline.status, "pre_existing": pre_existing}
    )


def with_repeats(first: SuiteResult, again: list[SuiteResult]) -> SuiteResult:
    """`first` with each of its failures counted over every run (DESIGN "Blame": an intermittent
    sandbox-only failure still counts; the fraction says how often it shows)."""
    runs = [first, *again]
    failing = [{f.test for f in run.failures} for run in runs]
    failures = [
        f.model_copy(update={"failed_runs": sum(f.test in tests for tests in failing)})
        for f in first.failures
    ]
    return first.model_copy(update={"failures": failures, "runs": len(runs)})
