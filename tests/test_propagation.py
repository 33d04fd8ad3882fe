"""Propagation diagnostics from access-log records: which service lost the sandbox's tag."""

from __future__ import annotations

from dataclasses import dataclass

from bot.evidence import Evidence, GitRef, Propagation, ServiceResult, SuiteResult, Verdict, decide
from bot.verify import diagnose, last_tagged_hop

KEY = "k3y4bcdefg"


@dataclass(frozen=True)
class Seen:
    service: str
    routing_key: str | None
    target: str | None
    started_at: str
    duration_ms: int
    traceparent: str | None
    method: str = "GET"
    path: str = "/"
    status: int = 200


def tp(trace: str) -> str:
    return f"00-{trace * 32}-00f067aa0ba902b7-01"


def at(ms: int) -> str:
    return f"2026-11-26T10:00:00.{ms:03d}Z"


def test_untagged_call_inside_a_tagged_request_blames_the_caller() -> None:
    observed = [
        Seen("gateway", KEY, None, at(0), 50, tp("a")),
        Seen("orders", None, None, at(5), 30, tp("a")),  # gateway's call, baggage gone
        Seen("inventory", None, None, at(10), 5, tp("a")),  # orders' call: orders never had the tag
        Seen("orders", None, None, at(7), 5, tp("b")),  # another trace: unrelated baseline traffic
    ]
    assert diagnose(KEY, observed) == [Propagation(service="gateway", drops_baggage_to=["orders"])]


def chain(first: str | None, second: str | None, third: str | None) -> list[Seen]:
    """a → b → c in one trace, each hop tagged or not as given (the entry at a is always tagged)."""
    return [
        Seen("a", first, first, at(0), 90, tp("e")),
        Seen("b", second, second, at(10), 60, tp("e")),
        Seen("c", third, third, at(20), 20, tp("e")),
    ]


def test_three_hops_the_middle_one_drops_the_tag() -> None:
    assert diagnose(KEY, chain(KEY, KEY, None)) == [Propagation(service="b", drops_baggage_to=["c"])]


def test_three_hops_the_first_one_drops_the_tag_and_only_it_is_blamed() -> None:
    """c's call comes from b, which never had the tag: b is not to blame, and neither is a for c."""
    assert diagnose(KEY, chain(KEY, None, None)) == [Propagation(service="a", drops_baggage_to=["b"])]


def test_a_sibling_call_that_merely_overlaps_is_not_the_caller() -> None:
    """a calls b and then c in parallel; c starts while b runs but outlasts it: a made it, not b."""
    observed = [
        Seen("a", KEY, None, at(0), 100, tp("f")),
        Seen("b", KEY, None, at(10), 30, tp("f")),
        Seen("c", None, None, at(20), 60, tp("f")),
    ]
    assert diagnose(KEY, observed) == [Propagation(service="a", drops_baggage_to=["c"])]


def test_requests_tagged_for_another_sandbox_are_not_this_ones() -> None:
    observed = [
        Seen("a", "c0ntr0lkey", None, at(0), 90, tp("g")),
        Seen("b", None, None, at(10), 60, tp("g")),
    ]
    assert diagnose(KEY, observed) == []


def test_innermost_tagged_request_is_the_caller() -> None:
    observed = [
        Seen("gateway", KEY, None, at(0), 100, tp("c")),
        Seen("orders", KEY, KEY, at(10), 50, tp("c")),
        Seen("payments", None, None, at(20), 10, tp("c")),
    ]
    assert diagnose(KEY, observed) == [Propagation(service="orders", drops_baggage_to=["payments"])]


def test_fully_propagated_trace_has_no_diagnosis() -> None:
    observed = [
        Seen("gateway", KEY, None, at(0), 100, tp("d")),
        Seen("orders", KEY, KEY, at(10), 50, tp("d")),
    ]
    assert diagnose(KEY, observed) == []


def test_without_trace_context_the_last_tagged_hop_is_named() -> None:
    observed = [Seen("gateway", KEY, None, at(0), 100, None), Seen("orders", None, None, at(10), 50, None)]
    assert diagnose(KEY, observed) == []
    assert last_tagged_hop(KEY, observed) == "gateway"


def test_the_diagnosis_explains_an_inconclusive_verdict_with_the_fix() -> None:
    evidence = Evidence(
        run_id="r",
        repo="shop",
        base=GitRef(ref="main"),
        head=GitRef(ref="agent/x"),
        services=[ServiceResult(name="inventory", forked=True, reason="changed", status="ready")],
        propagation=[Propagation(service="gateway", drops_baggage_to=["orders"])],
        suites=[SuiteResult(name="e2e", source="base", status="passed")],
    )
    verdict, reasons = decide(evidence)
    assert verdict is Verdict.INCONCLUSIVE
    assert reasons[0] == "inventory: the sandbox's requests never reached the fork"
    assert reasons[1].startswith("gateway drops baggage on calls to orders: propagate W3C baggage")
