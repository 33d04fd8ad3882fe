"""The routing contract on the real shop: many sandboxes on one baseline, each request where it belongs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from bot.config import RuntimeSettings
from bot.pipeline import make_plan
from bot.runtimes.local import LocalRuntime
from bot.runtimes.local.accesslog import read_access_log
from bot.runtimes.local.envoy import DataPlane
from bot.runtimes.protocol import Baseline, ObservedRequest, Sandbox, Source, SuiteRequest
from tests.gitrepo import GitRepo

CHECKOUT = {"sku": "sku-tea-towel", "qty": 1, "card": "4242-4242-4242-4242"}


def open_sandbox(runtime: LocalRuntime, repo: GitRepo, baseline: Baseline, head: str) -> Sandbox:
    plan = make_plan(repo.path, "main", head)
    sandbox = runtime.new_sandbox(baseline, plan.config, Source(repo.path, plan.merge_sha))
    for name in plan.affected:
        spec = plan.config.services[name]
        assert runtime.build(sandbox, name, spec).ok
        assert runtime.fork(sandbox, name, spec).status == "ready"
    runtime.route(sandbox)
    return sandbox


@pytest.fixture(scope="module")
def two_sandboxes(
    state_dir: Path, shop_repo: GitRepo, shop_baseline: Baseline
) -> Iterator[tuple[LocalRuntime, Sandbox, Sandbox]]:
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir))
    a = open_sandbox(runtime, shop_repo, shop_baseline, "agent/orders-note")
    b = open_sandbox(runtime, shop_repo, shop_baseline, "agent/inventory-note")
    try:
        yield runtime, a, b
    finally:
        runtime.teardown(a)
        runtime.teardown(b)


def checkout(baseline: Baseline, headers: dict[str, str]) -> str:
    """Checkout, then read the order back: gateway → orders → inventory, pricing (gRPC) and payments."""
    response = httpx.post(
        f"{baseline.entry_urls['gateway']}/api/checkout", json=CHECKOUT, headers=headers, timeout=10
    )
    assert response.status_code == 201, response.text
    order = response.json()
    read = httpx.get(
        f"{baseline.entry_urls['gateway']}/api/orders/{order['id']}", headers=headers, timeout=10
    )
    assert read.status_code == 200
    return str(order["id"])


def hops(observed: list[ObservedRequest], traceparent_id: str) -> dict[str, set[str | None]]:
    """Service -> which fork (routing key) or baseline (None) served the requests of one trace."""
    served: dict[str, set[str | None]] = {}
    for r in observed:
        if r.traceparent and traceparent_id in r.traceparent:
            served.setdefault(r.service, set()).add(r.target)
    return served


def traced(key_header: dict[str, str], trace: str) -> dict[str, str]:
    return {**key_header, "traceparent": f"00-{trace}-00f067aa0ba902b7-01"}


def test_each_sandbox_reaches_exactly_its_forks_at_every_hop(
    two_sandboxes: tuple[LocalRuntime, Sandbox, Sandbox],
) -> None:
    runtime, a, b = two_sandboxes
    base = a.baseline
    trace_a, trace_b, trace_none = "a" * 32, "b" * 32, "c" * 32
    checkout(base, traced({"baggage": f"loopgate-sandbox={a.routing_key}"}, trace_a))
    checkout(base, traced({"baggage": f"loopgate-sandbox={b.routing_key}"}, trace_b))
    checkout(base, traced({}, trace_none))

    seen_a = hops(runtime.observed_requests(a), trace_a)
    everywhere_baseline = {name: {None} for name in ("gateway", "orders", "inventory", "payments", "pricing")}
    assert seen_a == everywhere_baseline | {"orders": {a.routing_key}}
    seen_b = hops(runtime.observed_requests(b), trace_b)
    assert seen_b == everywhere_baseline | {"inventory": {b.routing_key}}
    # Untagged traffic reached no fork at any hop, and is no sandbox's traffic.
    assert hops(runtime.observed_requests(a), trace_none) == everywhere_baseline
    assert all(
        r.routing_key is None for r in runtime.observed_requests(a) if trace_none in (r.traceparent or "")
    )
    # Each sandbox sees only its own tagged traffic, never the other's.
    assert not [r for r in runtime.observed_requests(a) if r.routing_key == b.routing_key]
    assert all(
        r.routing_key == a.routing_key
        for r in runtime.observed_requests(a)
        if trace_a in (r.traceparent or "")
    )


def test_header_tag_alone_keeps_its_sandbox_over_three_hops(
    two_sandboxes: tuple[LocalRuntime, Sandbox, Sandbox],
) -> None:
    runtime, _, b = two_sandboxes
    trace = "d" * 32
    checkout(b.baseline, traced({"x-loopgate-sandbox": b.routing_key}, trace))
    observed = [r for r in runtime.observed_requests(b) if trace in (r.traceparent or "")]
    # gateway → orders → inventory: three hops, the last one reaching the fork; the tag survived each.
    assert {r.service for r in observed} == {"gateway", "orders", "inventory", "payments", "pricing"}
    assert all(r.routing_key == b.routing_key for r in observed)
    assert hops(observed, trace)["inventory"] == {b.routing_key}


@pytest.mark.parametrize("mangle", [lambda k: k + "4", lambda k: k[:-1], lambda k: "x" + k])
def test_similar_keys_never_match(
    two_sandboxes: tuple[LocalRuntime, Sandbox, Sandbox], mangle: object
) -> None:
    runtime, a, _ = two_sandboxes
    near = mangle(a.routing_key)  # type: ignore[operator]
    trace = hashlib.sha256(near.encode()).hexdigest()[:32]  # a trace of its own per key
    checkout(a.baseline, traced({"baggage": f"loopgate-sandbox={near}"}, trace))
    plane = DataPlane(runtime.registry.env_dir(a.baseline.env_id) / "envoy")
    assert plane.await_access_log()
    log = plane.access_log
    seen = [r for r in read_access_log(log)[0] if trace in (r.traceparent or "")]
    assert {r.service for r in seen} == {"gateway", "orders", "inventory", "payments", "pricing"}
    assert all(r.routing_key == near and r.target is None for r in seen)  # its own key, served by baseline


def test_other_baggage_members_and_properties_still_match(
    two_sandboxes: tuple[LocalRuntime, Sandbox, Sandbox],
) -> None:
    runtime, a, _ = two_sandboxes
    trace = "f" * 32
    baggage = f"userId=alice, loopgate-sandbox = {a.routing_key};ttl=60 ,tenant=acme"
    checkout(a.baseline, traced({"baggage": baggage}, trace))
    assert hops(runtime.observed_requests(a), trace)["orders"] == {a.routing_key}


def test_a_sandbox_reaches_no_other_sandboxs_data_or_processes(
    two_sandboxes: tuple[LocalRuntime, Sandbox, Sandbox],
) -> None:
    """Code run for sandbox B (confined, as every suite, build and fork is) tries sandbox A's SQLite
    copy, its directory and its fork's process: nothing of A exists for it."""
    runtime, a, b = two_sandboxes
    a_dir = runtime.registry.sandbox_dir(a.baseline.env_id, a.routing_key)
    copy = a_dir / "state" / "orders" / "orders.db"
    record = runtime.registry.load_sandbox(a.baseline.env_id, a.routing_key)
    assert copy.is_file() and record is not None
    fork_pid = record.forks["orders"].process.pid
    peek = (
        f"head -c 16 {copy} && echo ' READ-COPY'; ls {a_dir} && echo LISTED;"
        f" test -e /proc/{fork_pid} && echo SEES-PID; kill -0 {fork_pid} && echo SIGNALS; echo PEEK-DONE"
    )
    outcome = runtime.run_suite(b, SuiteRequest("peek", peek, 30, "head"))
    assert "PEEK-DONE" in outcome.log_tail, outcome.log_tail
    leaks = [leak for leak in ("READ-COPY", "LISTED", "SEES-PID", "SIGNALS") if leak in outcome.log_tail]
    assert leaks == [], outcome.log_tail
    assert psutil.Process(fork_pid).is_running()
