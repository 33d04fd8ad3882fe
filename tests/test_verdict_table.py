"""DESIGN's Verdicts table, row by row: `judge_suite` turns what ran into a suite status, `decide` turns
the Evidence into a verdict and reasons, and the verdict into a CLI exit code and a check conclusion."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import pytest

from bot.evidence import (
    CHECK_CONCLUSIONS,
    Counts,
    DiffResult,
    ErrorKind,
    Evidence,
    Finding,
    GitRef,
    Propagation,
    ServiceResult,
    SuiteResult,
    TestFailure,
    Verdict,
    decide,
    exit_code,
)
from bot.github.publish import check_conclusion
from bot.verify import blame, judge_suite

# --- judge_suite ------------------------------------------------------------------------------------

PASSING_JUNIT = '<testsuite><testcase name="a"/><testcase name="b"><skipped/></testcase></testsuite>'
FAILING_JUNIT = (
    '<testsuite><testcase name="a"/><testcase name="b"><failure message="no"/></testcase></testsuite>'
)
ERROR_JUNIT = '<testsuite><testcase name="a"><error message="fixture broke"/></testcase></testsuite>'
NOT_JUNIT = "<testsuite><testcase"


@dataclass(frozen=True)
class Ran:
    """A RanSuite as a runtime returns it."""

    exit_code: int | None
    timed_out: bool = False
    duration_ms: int = 1200
    junit_xml: bytes | None = None
    log_tail: str = "the log\n"


# (exit code, timed out, JUnit) -> (status, failed, errors)
SUITE_ROWS = {
    "exit 0, JUnit green": (0, False, PASSING_JUNIT, "passed", 0, 0),
    "exit 0, no JUnit": (0, False, None, "passed", 0, 0),
    "exit 0, but JUnit records a failure (the runner swallowed it)": (
        0,
        False,
        FAILING_JUNIT,
        "failed",
        1,
        0,
    ),
    "exit 0, but JUnit records an error": (0, False, ERROR_JUNIT, "failed", 0, 1),
    "exit 1 with a failing test": (1, False, FAILING_JUNIT, "failed", 1, 0),
    "exit 1 with an erroring test": (1, False, ERROR_JUNIT, "failed", 0, 1),
    "exit 1 and no JUnit: it could not run": (1, False, None, "errored", 0, 0),
    "exit 1 and JUnit green: it could not run": (1, False, PASSING_JUNIT, "errored", 0, 0),
    "exit 1 and JUnit unreadable": (1, False, NOT_JUNIT, "errored", 0, 0),
    "killed without an exit code": (None, False, None, "errored", 0, 0),
    "timed out, whatever JUnit says": (None, True, PASSING_JUNIT, "timed_out", 0, 0),
    "timed out with failures recorded": (137, True, FAILING_JUNIT, "timed_out", 1, 0),
}


@pytest.mark.parametrize("row", SUITE_ROWS)
def test_judge_suite(row: str) -> None:
    exit_, timed_out, report, status, failed, errors = SUITE_ROWS[row]
    junit = report.encode() if report is not None else None
    result = judge_suite("e2e", "base", True, Ran(exit_code=exit_, timed_out=timed_out, junit_xml=junit))
    assert (result.status, result.counts.failed, result.counts.errors) == (status, failed, errors)
    assert (
        result.exit_code == exit_ and result.duration_ms == 1200 and result.log_tail.startswith("the log\n")
    )


def test_judge_suite_notes_an_unreadable_report_in_the_log() -> None:
    result = judge_suite("e2e", "base", True, Ran(exit_code=1, junit_xml=NOT_JUNIT.encode()))
    assert result.log_tail.startswith("the log\n")
    assert result.log_tail.splitlines()[-1].startswith("[loopgate] junit.xml: not a JUnit XML report (")


@pytest.mark.parametrize(("source", "gating"), [("base", True), ("base", False), ("head", False)])
def test_judge_suite_keeps_where_the_suite_came_from(source: str, gating: bool) -> None:
    result = judge_suite("e2e", source, gating, Ran(exit_code=0))
    assert (result.source, result.gating) == (source, gating)


# --- blame: the sandbox's failures against the same suite on the baseline ---------------------------

# (sandbox status, its failures, failed count, baseline status, its failures) -> (per failure, suite)
BLAME_ROWS = {
    "every failing test fails on the baseline too": (
        "failed",
        ["a", "b"],
        2,
        "failed",
        ["b", "a", "c"],
        [True, True],
        True,
    ),
    "one failing test is the sandbox's own": ("failed", ["a", "b"], 2, "failed", ["a"], [True, False], False),
    "the baseline passes": ("failed", ["a"], 1, "passed", [], [False], False),
    "failures cut off in the report may be the sandbox's": (
        "failed",
        ["a"],
        2,
        "failed",
        ["a"],
        [True],
        False,
    ),
    "no JUnit on either: the same status": ("errored", [], 0, "errored", [], [], True),
    "no JUnit: timed out only on the sandbox": ("timed_out", [], 0, "failed", ["a"], [], False),
}


@pytest.mark.parametrize("row", BLAME_ROWS)
def test_blame(row: str) -> None:
    status, failing, failed, base_status, base_failing, marks, pre_existing = BLAME_ROWS[row]
    sandbox = suite(status=status, counts=Counts(tests=5, failed=failed), failures=[own(t) for t in failing])
    baseline = suite(status=base_status, failures=[own(t) for t in base_failing])
    judged = blame(sandbox, baseline)
    assert [f.pre_existing for f in judged.failures] == marks
    assert (judged.pre_existing, judged.baseline_status) == (pre_existing, base_status)


# --- decide -----------------------------------------------------------------------------------------


def proven() -> Evidence:
    """A run that proves its change: one fork reached by tagged requests, the gating suite green."""
    return Evidence(
        run_id="r-1",
        repo="acme/shop",
        base=GitRef(ref="main", sha="a" * 40),
        head=GitRef(ref="agent/x", sha="b" * 40),
        services=[
            ServiceResult(name="orders", forked=True, reason="changed", status="ready", tagged_requests=3),
            ServiceResult(name="payments", forked=False, reason="unchanged"),
        ],
        suites=[suite()],
    )


def suite(**fields: object) -> SuiteResult:
    values: dict[str, object] = {
        "name": "e2e",
        "source": "base",
        "status": "passed",
        "counts": Counts(tests=5, passed=5),
    }
    return SuiteResult.model_validate(values | fields)


def own(test: str) -> TestFailure:
    return TestFailure(test=test, message="no")


def known(test: str) -> TestFailure:
    """A failure the baseline shows too."""
    return TestFailure(test=test, message="no", pre_existing=True)


def finding(breaking: bool) -> DiffResult:
    return DiffResult(
        request="GET /api/orders/1",
        service="orders",
        findings=[Finding(kind="field_removed", pointer="/total", baseline="3", breaking=breaking)],
    )


def fork(evidence: Evidence) -> ServiceResult:
    service = evidence.service("orders")
    assert service is not None
    return service


def recorded_error(kind: ErrorKind, reason: str) -> Callable[[Evidence], None]:
    """What the pipeline does when config or infrastructure fails: it records the error itself."""

    def record(evidence: Evidence) -> None:
        evidence.verdict, evidence.error_kind, evidence.reasons = Verdict.ERROR, kind, [reason]

    return record


def set_status(status: Literal["build_failed", "start_failed"]) -> Callable[[Evidence], None]:
    """A fork that failed never serves, so it received no tagged request either."""

    def change(evidence: Evidence) -> None:
        fork(evidence).status, fork(evidence).tagged_requests = status, 0

    return change


def both(*changes: Callable[[Evidence], None]) -> Callable[[Evidence], None]:
    def change(evidence: Evidence) -> None:
        for one in changes:
            one(evidence)

    return change


def no_forks(evidence: Evidence) -> None:
    evidence.services = [ServiceResult(name="payments", forked=False, reason="unchanged")]
    evidence.suites = []


def unreached(evidence: Evidence) -> None:
    fork(evidence).tagged_requests = 0


def dropped_hop(evidence: Evidence) -> None:
    evidence.propagation = [Propagation(service="gateway", drops_baggage_to=["orders"])]


def suites(*results: SuiteResult) -> Callable[[Evidence], None]:
    def change(evidence: Evidence) -> None:
        evidence.suites = list(results)

    return change


def diff(*results: DiffResult) -> Callable[[Evidence], None]:
    def change(evidence: Evidence) -> None:
        evidence.diff = list(results)

    return change


def unchanged(evidence: Evidence) -> None:
    pass


# (change to a proven run) -> (verdict, the first reason, CLI exit, check conclusion)
VERDICT_ROWS: dict[str, tuple[Callable[[Evidence], None], Verdict, str, int, str]] = {
    "pass: every gating suite passed, every fork reached": (
        unchanged,
        Verdict.PASS,
        "e2e (the team's suite) passed: 5 tests",
        0,
        "success",
    ),
    "pass: no service affected": (
        no_forks,
        Verdict.PASS,
        "no service is affected by the change",
        0,
        "success",
    ),
    "pass: the diff found only non-breaking differences": (
        diff(finding(breaking=False)),
        Verdict.PASS,
        "e2e (the team's suite) passed: 5 tests",
        0,
        "success",
    ),
    "pass: a non-gating head suite failing is reported, not gating": (
        suites(suite(), suite(name="agent-e2e", source="head", gating=False, status="failed")),
        Verdict.PASS,
        "e2e (the team's suite) passed: 5 tests",
        0,
        "success",
    ),
    "fail: a gating head suite failing tightens the gate": (
        suites(
            suite(),
            suite(name="agent-e2e", source="head", status="failed", counts=Counts(tests=2, failed=1)),
        ),
        Verdict.FAIL,
        "suite agent-e2e (from the agent's branch) failed: 1 failing test",
        1,
        "failure",
    ),
    "inconclusive: a gating head suite passing proves nothing on its own": (
        suites(suite(source="head")),
        Verdict.INCONCLUSIVE,
        "no gating suite ran, so nothing exercised the change",
        4,
        "failure",
    ),
    "pass: a non-gating base suite failing is reported, not gating": (
        suites(suite(), suite(name="smoke", gating=False, status="failed")),
        Verdict.PASS,
        "e2e (the team's suite) passed: 5 tests",
        0,
        "success",
    ),
    "fail: a suite failed": (
        suites(suite(status="failed", counts=Counts(tests=5, passed=3, failed=2))),
        Verdict.FAIL,
        "suite e2e failed: 2 failing tests",
        1,
        "failure",
    ),
    "fail: a suite failed by an erroring test": (
        suites(suite(status="failed", counts=Counts(tests=5, passed=4, errors=1))),
        Verdict.FAIL,
        "suite e2e failed: 1 failing test",
        1,
        "failure",
    ),
    "fail: a suite could not run": (
        suites(suite(status="errored", counts=Counts())),
        Verdict.FAIL,
        "suite e2e could not run",
        1,
        "failure",
    ),
    "fail: a suite timed out": (
        suites(suite(status="timed_out")),
        Verdict.FAIL,
        "suite e2e timed out",
        1,
        "failure",
    ),
    "pass: every failure of a suite also fails on the baseline (pre-existing)": (
        suites(
            suite(
                status="failed",
                counts=Counts(tests=5, passed=3, failed=2),
                failures=[known("e2e::a"), known("e2e::b")],
                baseline_status="failed",
                pre_existing=True,
            )
        ),
        Verdict.PASS,
        "suite e2e: 2 failures also fail on the baseline (pre-existing), not counted",
        0,
        "success",
    ),
    "inconclusive: the only suite cannot run on the baseline either, so it proved nothing": (
        suites(suite(status="errored", counts=Counts(), baseline_status="errored", pre_existing=True)),
        Verdict.INCONCLUSIVE,
        "every gating suite also fails on the baseline, so none of them proved the change",
        4,
        "failure",
    ),
    "fail: sandbox-only failures count, named before the pre-existing ones": (
        suites(
            suite(
                status="failed",
                counts=Counts(tests=5, passed=2, failed=3),
                failures=[known("e2e::a"), own("e2e::b"), own("e2e::c")],
                baseline_status="failed",
            )
        ),
        Verdict.FAIL,
        "suite e2e failed: 2 failing tests only on the sandbox: e2e::b, e2e::c;"
        " 1 more also failing on the baseline (pre-existing)",
        1,
        "failure",
    ),
    "fail: a suite failing while the baseline passes": (
        suites(
            suite(
                status="failed",
                counts=Counts(tests=5, passed=4, failed=1),
                failures=[own("e2e::a")],
                baseline_status="passed",
            )
        ),
        Verdict.FAIL,
        "suite e2e failed: 1 failing test",
        1,
        "failure",
    ),
    "fail: the diff found a breaking change": (
        diff(finding(breaking=True)),
        Verdict.FAIL,
        "orders: field_removed at /total (GET /api/orders/1)",
        1,
        "failure",
    ),
    "fail: a fork failed to build while the baseline is healthy": (
        set_status("build_failed"),
        Verdict.FAIL,
        "orders: the fork failed to build",
        1,
        "failure",
    ),
    "fail: a fork failed to start while the baseline is healthy": (
        set_status("start_failed"),
        Verdict.FAIL,
        "orders: the fork never became healthy",
        1,
        "failure",
    ),
    "fail outranks inconclusive: a failed suite and an unreached fork": (
        both(unreached, suites(suite(status="failed", counts=Counts(tests=1, failed=1)))),
        Verdict.FAIL,
        "suite e2e failed: 1 failing test",
        1,
        "failure",
    ),
    "error (config): recorded by the pipeline, kept": (
        recorded_error(ErrorKind.CONFIG, ".loopgate.yml:3: unknown key"),
        Verdict.ERROR,
        ".loopgate.yml:3: unknown key",
        2,
        "failure",
    ),
    "error (config): a merge conflict, whatever else the run holds": (
        both(set_status("build_failed"), recorded_error(ErrorKind.CONFIG, "merge conflict: rebase needed")),
        Verdict.ERROR,
        "merge conflict: rebase needed",
        2,
        "failure",
    ),
    "error (infrastructure): a fork failing with an unhealthy baseline blames nobody's code": (
        both(
            set_status("start_failed"), recorded_error(ErrorKind.INFRASTRUCTURE, "baseline inventory is down")
        ),
        Verdict.ERROR,
        "baseline inventory is down",
        3,
        "failure",
    ),
    "inconclusive: a fork got no tagged request": (
        unreached,
        Verdict.INCONCLUSIVE,
        "orders: the sandbox's requests never reached the fork",
        4,
        "failure",
    ),
    "inconclusive: no suite ran": (
        suites(),
        Verdict.INCONCLUSIVE,
        "no gating suite ran, so nothing exercised the change",
        4,
        "failure",
    ),
    "inconclusive: only head suites ran": (
        suites(suite(source="head", gating=False)),
        Verdict.INCONCLUSIVE,
        "no gating suite ran, so nothing exercised the change",
        4,
        "failure",
    ),
}


@pytest.mark.parametrize("row", VERDICT_ROWS)
def test_verdict_table(row: str) -> None:
    change, verdict, first_reason, cli_exit, conclusion = VERDICT_ROWS[row]
    evidence = proven()
    change(evidence)
    evidence.verdict, evidence.reasons = decide(evidence)
    assert evidence.verdict is verdict
    assert evidence.reasons[0] == first_reason
    assert exit_code(evidence) == cli_exit
    assert CHECK_CONCLUSIONS[verdict] == check_conclusion(evidence) == conclusion


def test_every_verdict_has_a_row() -> None:
    covered = {verdict for _, verdict, *_ in VERDICT_ROWS.values()}
    assert covered == set(Verdict)
    kinds = {row.split(":")[0] for row in VERDICT_ROWS}
    assert {"error (config)", "error (infrastructure)"} <= kinds


def test_reasons_come_most_important_first() -> None:
    """Forks that did not build, then suites, then the diff: the order a person should read them in."""
    evidence = proven()
    both(set_status("build_failed"), suites(suite(status="timed_out")), diff(finding(breaking=True)))(
        evidence
    )
    verdict, reasons = decide(evidence)
    assert verdict is Verdict.FAIL
    assert reasons == [
        "orders: the fork failed to build",
        "suite e2e timed out",
        "orders: field_removed at /total (GET /api/orders/1)",
    ]


def test_an_unreached_fork_is_explained_by_a_dropped_hop() -> None:
    evidence = proven()
    both(unreached, dropped_hop)(evidence)
    verdict, reasons = decide(evidence)
    assert verdict is Verdict.INCONCLUSIVE
    assert reasons[0] == "orders: the sandbox's requests never reached the fork"
    assert reasons[1].startswith("gateway drops baggage on calls to orders: propagate W3C baggage")


def test_a_dropped_hop_alone_decides_nothing() -> None:
    evidence = proven()
    dropped_hop(evidence)
    assert decide(evidence)[0] is Verdict.PASS


def test_superseded_run_concludes_cancelled() -> None:
    """(superseded): a newer push replaced the run before any verdict; its check says `cancelled`."""
    evidence = proven()
    evidence.cancelled, evidence.reasons = True, ["cancelled: superseded by a newer push"]
    assert evidence.verdict is None
    assert check_conclusion(evidence) == "cancelled"


def test_an_in_flight_run_never_concludes_success() -> None:
    evidence = proven()
    assert evidence.verdict is None and not evidence.cancelled
    assert check_conclusion(evidence) == "failure"
    assert exit_code(evidence) == 3


def test_pre_existing_failures_come_after_the_changes_own() -> None:
    """A red base is reported, but what the change broke is read first."""
    evidence = proven()
    both(
        suites(
            suite(status="failed", failures=[known("e2e::a")], baseline_status="failed", pre_existing=True)
        ),
        diff(finding(breaking=True)),
    )(evidence)
    verdict, reasons = decide(evidence)
    assert verdict is Verdict.FAIL
    assert reasons == [
        "orders: field_removed at /total (GET /api/orders/1)",
        "suite e2e: 1 failure also fails on the baseline (pre-existing), not counted",
    ]
