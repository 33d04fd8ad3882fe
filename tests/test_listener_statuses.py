"""Every exchange at a forked service's listener compared by status, candidate against its controls
(bot.verify.listener), and the seed's reads replayed on every side (bot.verify.diff). Pure: the records
are what the data plane's access log holds; the zoo's `retry-masked` and `old-orders-unreadable` run the
same comparisons on real processes."""

from __future__ import annotations

from bot.config.schema import Diff
from bot.evidence import DiffResult, Evidence, GitRef
from bot.evidence.verdict import decide
from bot.runtimes.protocol import ObservedRequest
from bot.verify.diff import control_pairs, probes
from bot.verify.listener import listener_findings, operation

KEYS = ("cand", "prim", "sec")


def seen(key: str | None, method: str, path: str, status: int, service: str = "inventory") -> ObservedRequest:
    """One exchange its own side's fork answered (`target` = the key), as the access log reads back."""
    return ObservedRequest(service, key, key, method, path, status, None, "2026-11-29T20:00:00.000Z", 1)


def side(key: str, *exchanges: tuple[str, str, int]) -> list[ObservedRequest]:
    return [seen(key, method, path, status) for method, path, status in exchanges]


def compare(
    candidate: list[tuple[str, str, int]],
    primary: list[tuple[str, str, int]],
    secondary: list[tuple[str, str, int]] | None = None,
) -> list[DiffResult]:
    controls = (side("prim", *primary), side("sec", *(primary if secondary is None else secondary)))
    return listener_findings(side("cand", *candidate), controls, KEYS, ["inventory"])


READ = ("GET", "/items/sku-tea-towel", 200)
RESERVE = ("POST", "/reservations", 201)


def test_a_503_a_callers_retries_hid_is_a_breaking_finding_with_both_tallies() -> None:
    failed = ("GET", "/items/sku-tea-towel", 503)
    (result,) = compare([READ, failed, READ, RESERVE, failed, READ], [READ, READ, RESERVE, READ])
    assert result.service == "inventory" and result.against == "control"
    assert result.request == "GET /items/sku-tea-towel, the suites' exchanges"
    (finding,) = result.findings
    assert (finding.kind, finding.breaking) == ("server_errors", True)
    assert (finding.baseline, finding.sandbox) == ("200 (3)", "200 (3), 503 (2)")
    evidence = Evidence(
        run_id="r", repo="/r", base=GitRef(ref="main"), head=GitRef(ref="agent/x"), diff=[result]
    )
    verdict, reasons = decide(evidence)
    assert verdict.value == "fail"
    assert reasons[0] == (
        "inventory: server_errors 200 (3), 503 (2) where the controls answered 200 (3)"
        " (GET /items/sku-tea-towel, the suites' exchanges)"
    )


def test_same_statuses_in_other_numbers_are_no_finding() -> None:
    """A retry more or less changes counts, never the set of answers: nothing to blame."""
    assert compare([READ, READ, READ, RESERVE], [READ, RESERVE]) == []


def test_what_the_controls_disagree_on_is_noise() -> None:
    timeout = ("POST", "/reservations", 504)
    assert compare([RESERVE, timeout], [RESERVE, timeout], [RESERVE]) == []
    assert compare([RESERVE, ("POST", "/reservations", 500)], [RESERVE, timeout], [RESERVE]) == []


def test_a_write_that_now_answers_4xx_or_lost_its_409_is_breaking_a_new_2xx_is_not() -> None:
    conflict = ("POST", "/reservations", 409)
    invalid = ("POST", "/reservations", 422)
    (result,) = compare([RESERVE, invalid], [RESERVE, conflict])
    # The 4xx the controls never gave is of a class they did give; the 409 it replaced is what counts.
    assert [(f.kind, f.breaking) for f in result.findings] == [
        ("status_added", False),
        ("status_missing", True),
    ]
    (result,) = compare([RESERVE, invalid], [RESERVE])
    assert [(f.kind, f.breaking) for f in result.findings] == [("status_added", True)]
    (result,) = compare([("POST", "/reservations", 200)], [RESERVE])
    assert [(f.kind, f.breaking) for f in result.findings] == [
        ("status_added", False),
        ("status_missing", True),
    ]
    (result,) = compare([READ], [READ, ("GET", "/items/sku-tea-towel", 500)])
    assert [(f.kind, f.breaking) for f in result.findings] == [("status_missing", False)]


def test_ids_fold_into_one_operation_and_other_sides_or_services_never_count() -> None:
    assert operation("GET", "/orders/ord_1a2b?x=1") == "GET /orders/{id}"
    assert operation("GET", "/items/sku-tea-towel") == "GET /items/sku-tea-towel"
    candidate = [
        seen("cand", "GET", "/orders/ord_c1", 200),
        seen("cand", "GET", "/orders/ord_c2", 500),
        seen("prim", "GET", "/orders/ord_x", 500),  # another side's record in this side's log
        seen("cand", "GET", "/orders/ord_c3", 502, service="gateway"),  # a service not forked
        ObservedRequest("inventory", "cand", None, "GET", "/orders/ord_c4", 502, None, "t", 1),  # baseline's
    ]
    controls = ([seen("prim", "GET", "/orders/ord_p1", 200)], [seen("sec", "GET", "/orders/ord_s1", 200)])
    (result,) = listener_findings(candidate, controls, KEYS, ["inventory"])
    assert result.request == "GET /orders/{id}, the suites' exchanges"
    assert [(f.kind, f.sandbox) for f in result.findings] == [("server_errors", "200 (1), 500 (1)")]


def test_an_operation_one_side_never_made_is_not_compared() -> None:
    """A lost tag leaves the candidate's fork without traffic: that is the propagation diagnosis's."""
    assert compare([], [READ]) == []
    assert compare([READ, ("GET", "/items/new", 500)], [READ]) == []


def test_the_seeds_reads_go_to_every_side_as_they_are_after_the_suites() -> None:
    seed = [
        ObservedRequest("orders", None, None, "GET", "/orders/ord_old1", 200, None, "t", 1),
        ObservedRequest("inventory", None, None, "GET", "/items/sku-red-mug", 200, None, "t", 1),
    ]
    suite = [ObservedRequest("orders", "cand", "cand", "GET", "/orders/ord_c1", 200, None, "t", 1)]
    control = ([seen("prim", "GET", "/orders/ord_p1", 200, "orders")], [])
    pairs = control_pairs(Diff(), suite, control, KEYS, ["orders"], seed)
    got = [(p.candidate.path, p.controls[0].path, p.controls[1].path, p.candidate.seeded) for p in pairs]
    assert got == [
        ("/orders/ord_c1", "/orders/ord_p1", "/orders/ord_c1", False),
        ("/orders/ord_old1", "/orders/ord_old1", "/orders/ord_old1", True),
    ]
    assert pairs[1].label == "GET /orders/ord_old1 (the seed's read)"
    # A path the suites read too is theirs.
    again = control_pairs(Diff(), suite, control, KEYS, ["orders"], [*seed, *suite])
    assert [p.candidate.seeded for p in again] == [False, True]
    # Baseline-vs-sandbox for the services not forked; a seeded read is never skipped as the suite's own.
    chosen = probes(Diff(), suite, "cand", exclude=["orders"], seeded=seed)
    assert [(p.service, p.path, p.seeded, p.recorded) for p in chosen] == [
        ("inventory", "/items/sku-red-mug", True, False)
    ]
    # The seed never takes more than half the budget.
    many = [
        ObservedRequest("orders", None, None, "GET", f"/orders/o{i}", 200, None, "t", 1) for i in range(9)
    ]
    assert len(probes(Diff(max_requests=4), [], "cand", seeded=many)) == 2


def test_differences_at_a_fork_the_suites_never_reached_do_not_count() -> None:
    """The controls took the suites' writes, the unreached candidate fork did not: its answers differ
    for that reason alone (the zoo's propagation-break, whose seed's reads are still replayed)."""
    from bot.evidence import Finding, ServiceResult
    from bot.pipeline.sides import set_aside_values_past_a_lost_tag

    value = Finding(kind="value_changed", pointer="/available", baseline="7", sandbox="9", breaking=True)
    errors = Finding(kind="server_errors", pointer="", baseline="200 (2)", sandbox="503 (1)", breaking=True)
    evidence = Evidence(run_id="r", repo="/r", base=GitRef(ref="main"), head=GitRef(ref="agent/x"))
    evidence.services = [
        ServiceResult(name="inventory", forked=True, reason="changed", tagged_requests=0),
        ServiceResult(name="orders", forked=True, reason="changed", tagged_requests=4),
    ]
    evidence.diff = [
        DiffResult(
            request="GET /items/x (the seed's read)",
            service="inventory",
            findings=[value, errors],
            against="control",
        ),
        DiffResult(
            request="GET /orders/o", service="orders", findings=[value.model_copy()], against="control"
        ),
    ]
    set_aside_values_past_a_lost_tag(evidence)
    assert [[f.breaking for f in r.findings] for r in evidence.diff] == [[False, False], [True]]
    assert evidence.notes == [
        "2 value difference(s) at inventory not counted: the sandbox's requests never reached its fork,"
        " so it did not take the writes its controls took"
    ]
