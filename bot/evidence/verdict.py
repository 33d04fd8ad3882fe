"""The verdict rules of DESIGN "Verdicts", as one pure function of the Evidence."""

from __future__ import annotations

from bot.evidence.model import ErrorKind, Evidence, Finding, SuiteResult, Verdict

EXIT_CODES = {Verdict.PASS: 0, Verdict.FAIL: 1, Verdict.INCONCLUSIVE: 4}
CHECK_CONCLUSIONS = {
    Verdict.PASS: "success",
    Verdict.FAIL: "failure",
    Verdict.ERROR: "failure",
    Verdict.INCONCLUSIVE: "failure",
}


def exit_code(evidence: Evidence) -> int:
    if evidence.verdict is Verdict.ERROR:
        return 2 if evidence.error_kind is ErrorKind.CONFIG else 3
    if evidence.verdict is None:
        return 3
    return EXIT_CODES[evidence.verdict]


def decide(evidence: Evidence) -> tuple[Verdict, list[str]]:
    """Verdict and reasons, most important first. An error already recorded stays the verdict."""
    if evidence.verdict is Verdict.ERROR:
        return Verdict.ERROR, list(evidence.reasons)

    failures: list[str] = []
    for service in evidence.forks:
        if service.status == "build_failed":
            failures.append(f"{service.name}: the fork failed to build")
        elif service.status == "start_failed":
            failures.append(f"{service.name}: the fork never became healthy")
    # Head's suites (from the agent's branch) can only tighten the gate: their failure fails the change,
    # their passing proves nothing (they are the agent's own word).
    gating_failed = [s for s in evidence.suites if s.gating and s.status != "passed"]
    known = [_pre_existing_reason(s) for s in gating_failed if s.pre_existing]
    failures += [_suite_failure_reason(s) for s in gating_failed if not s.pre_existing]
    for result in evidence.diff:
        for finding in result.findings:
            if finding.breaking:
                failures.append(f"{result.service}: {finding.kind} {_where(finding)} ({result.request})")
    if failures:
        return Verdict.FAIL, failures + known

    if not evidence.forks:
        return Verdict.PASS, [*known, "no service is affected by the change"]

    gaps: list[str] = []
    gating_ran = [s for s in evidence.suites if s.gating and s.source == "base"]
    # A suite red on the baseline too proves only the tests it passed; one with none proves nothing.
    proving = [s for s in gating_ran if s.status == "passed" or s.counts.passed > 0]
    if not proving and not evidence.diff:
        gaps.append(
            "every gating suite also fails on the baseline, so none of them proved the change"
            if gating_ran
            else "no gating suite ran, so nothing exercised the change"
        )
    for service in evidence.forks:
        if service.tagged_requests == 0:
            gaps.append(f"{service.name}: the sandbox's requests never reached the fork")
    if gaps:
        # A dropped baggage hop explains an unreached fork; on its own it proves nothing either way.
        for hop in evidence.propagation:
            gaps += [
                f"{hop.service} drops baggage on calls to {to}: propagate W3C baggage"
                " (OpenTelemetry propagators tracecontext,baggage; check OTEL_PROPAGATORS)"
                for to in hop.drops_baggage_to
            ]
        return Verdict.INCONCLUSIVE, gaps + known

    # Pre-existing failures first: the pass stands, but nobody should miss that the base is red.
    passed = [s for s in gating_ran if s.status == "passed"]
    reasons = known + [f"{s.name} (the team's suite) passed: {s.counts.passed} tests" for s in passed]
    reasons += [f"{s.name}: fork received {s.tagged_requests} tagged requests" for s in evidence.forks]
    return Verdict.PASS, reasons


def _suite_reason(name: str, status: str, failed: int) -> str:
    if status == "timed_out":
        return f"suite {name} timed out"
    if status == "errored" and failed == 0:
        return f"suite {name} could not run"
    return f"suite {name} failed: {failed} failing test{'s' if failed != 1 else ''}"


def _suite_failure_reason(suite: SuiteResult) -> str:
    """Sandbox-only failures first, by test id, when the baseline run shows some of the others too."""
    name = suite.name if suite.source == "base" else f"{suite.name} (from the agent's branch)"
    reason = _suite_reason(name, suite.status, suite.counts.failed + suite.counts.errors)
    known = sum(f.pre_existing for f in suite.failures)
    own = [f.test for f in suite.failures if not f.pre_existing]
    if suite.status == "failed" and known and own:
        shown = ", ".join(own[:3]) + (f" (+{len(own) - 3} more)" if len(own) > 3 else "")
        reason = (
            f"suite {suite.name} failed: {_plural(len(own), 'failing test')} only on the sandbox: {shown};"
            f" {_plural(known, 'more')} also failing on the baseline (pre-existing)"
        )
    return reason + _intermittent(suite)


def _intermittent(suite: SuiteResult) -> str:
    """Sandbox-only failures that did not show in every run: named, with how often, still counted."""
    flaky = [
        f
        for f in suite.failures
        if not f.pre_existing and f.failed_runs is not None and f.failed_runs < suite.runs
    ]
    if not flaky:
        return ""
    shown = ", ".join(f"{f.test} in {f.failed_runs} of {suite.runs} runs" for f in flaky[:3])
    more = f" (+{len(flaky) - 3} more)" if len(flaky) > 3 else ""
    return f"; intermittent, still counted: failed {shown}{more}"


def _pre_existing_reason(suite: SuiteResult) -> str:
    if suite.failures:
        n = len(suite.failures)
        also = f"{_plural(n, 'failure')} also fail{'s' if n == 1 else ''}"
    else:
        also = f"{suite.status.replace('_', ' ')} (no per-test results), as it does"
    return f"suite {suite.name}: {also} on the baseline (pre-existing), not counted"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 and noun != 'more' else ''}"


STATUS_TALLIES = frozenset({"server_errors", "status_added", "status_missing"})
"""Findings on the statuses of every exchange at a listener (bot.verify.listener): tallies, no body."""


def _where(finding: Finding) -> str:
    if finding.kind in STATUS_TALLIES:
        return f"{finding.sandbox} where the controls answered {finding.baseline}"
    if finding.kind == "status_changed" and not finding.pointer:
        return f"{finding.baseline} → {finding.sandbox}"
    return f"at {finding.pointer}" if finding.pointer else "on the whole body"
