"""The verdict rules of DESIGN "Verdicts", as one pure function of the Evidence."""

from __future__ import annotations

from bot.evidence.model import ErrorKind, Evidence, Verdict

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
    for suite in evidence.suites:
        if not suite.gating or suite.source != "base" or suite.status == "passed":
            continue
        failures.append(_suite_reason(suite.name, suite.status, suite.counts.failed + suite.counts.errors))
    for result in evidence.diff:
        for finding in result.findings:
            if finding.breaking:
                failures.append(f"{result.service}: {finding.kind} at {finding.pointer} ({result.request})")
    if failures:
        return Verdict.FAIL, failures

    if not evidence.forks:
        return Verdict.PASS, ["no service is affected by the change"]

    gaps: list[str] = []
    gating_ran = [s for s in evidence.suites if s.gating and s.source == "base"]
    if not gating_ran and not evidence.diff:
        gaps.append("no gating suite ran, so nothing exercised the change")
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
        return Verdict.INCONCLUSIVE, gaps

    reasons = [f"{s.name} ({s.source}) passed: {s.counts.passed} tests" for s in gating_ran]
    reasons += [f"{s.name}: fork received {s.tagged_requests} tagged requests" for s in evidence.forks]
    return Verdict.PASS, reasons


def _suite_reason(name: str, status: str, failed: int) -> str:
    if status == "timed_out":
        return f"suite {name} timed out"
    if status == "errored" and failed == 0:
        return f"suite {name} could not run"
    return f"suite {name} failed: {failed} failing test{'s' if failed != 1 else ''}"
