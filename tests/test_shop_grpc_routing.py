"""The routing contract for gRPC on the real shop: pricing (grpcio, behind Envoy) forked beside the
shared baseline. A tagged checkout reaches the pricing fork through gateway → orders → pricing with the
tag at every hop (orders carries `baggage` as gRPC metadata, by OpenTelemetry's gRPC instrumentation);
an untagged one reaches the baseline's pricing; a tagged gRPC call straight to pricing's listener
reaches the fork, an untagged one the baseline. Real processes, real Envoy: what the data plane saw
decides.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from bot.config import RuntimeSettings
from bot.runtimes.local import LocalRuntime
from bot.runtimes.protocol import Baseline, Sandbox
from tests.gitrepo import GitRepo
from tests.test_isolation import checkout, hops, open_sandbox, traced

QUOTE = "/shop.pricing.v1.Pricing/Quote"


@pytest.fixture(scope="module")
def pricing_fork(
    state_dir: Path, shop_repo: GitRepo, shop_baseline: Baseline
) -> Iterator[tuple[LocalRuntime, Sandbox]]:
    """A sandbox forking pricing at `quote-currency`: its replies carry `currency`, the baseline's not."""
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir))
    sandbox = open_sandbox(runtime, shop_repo, shop_baseline, "agent/quote-currency")
    try:
        yield runtime, sandbox
    finally:
        runtime.teardown(sandbox)


def _contract(repo: GitRepo, ref: str, tmp: Path) -> tuple[Any, Any]:
    """pricing_pb2 and pricing_pb2_grpc from pricing's proto at `ref`."""
    (tmp / "pricing.proto").write_text(repo.git("show", f"{ref}:services/pricing/proto/pricing.proto"))
    proto_dir = str(tmp)
    sys.path.insert(0, proto_dir)
    try:
        return grpc.protos_and_services("pricing.proto")  # type: ignore[no-any-return]
    finally:
        sys.path.remove(proto_dir)


def test_a_tagged_checkout_reaches_the_pricing_fork_at_every_hop_an_untagged_one_the_baseline(
    pricing_fork: tuple[LocalRuntime, Sandbox],
) -> None:
    runtime, sandbox = pricing_fork
    key, base = sandbox.routing_key, sandbox.baseline
    tagged, untagged = "e" * 32, "f" * 32
    checkout(base, traced({"baggage": f"loopgate-sandbox={key}"}, tagged))
    checkout(base, traced({}, untagged))

    observed = runtime.observed_requests(sandbox)
    everywhere_baseline = {name: {None} for name in ("gateway", "orders", "inventory", "payments", "pricing")}
    assert hops(observed, tagged) == everywhere_baseline | {"pricing": {key}}
    assert hops(observed, untagged) == everywhere_baseline
    # The tag survived every hop, the gRPC one included; the call is named by its method and status.
    assert all(r.routing_key == key for r in observed if tagged in (r.traceparent or ""))
    (quote,) = [r for r in observed if tagged in (r.traceparent or "") and r.service == "pricing"]
    assert (quote.method, quote.path, quote.status, quote.grpc_status) == ("POST", QUOTE, 200, 0)
    assert quote.target == key
    assert not [r for r in observed if untagged in (r.traceparent or "") and r.routing_key is not None]


def test_a_tagged_grpc_call_reaches_the_fork_an_untagged_one_the_baseline(
    pricing_fork: tuple[LocalRuntime, Sandbox], shop_repo: GitRepo, tmp_path: Path
) -> None:
    runtime, sandbox = pricing_fork
    pb, services = _contract(shop_repo, "agent/quote-currency", tmp_path)  # the head's: with `currency`
    listener = sandbox.baseline.entry_urls["pricing"].removeprefix("http://")
    request = pb.QuoteRequest(lines=[pb.LineItem(sku="sku-mug", qty=2, unit_price_cents=1200)])
    with grpc.insecure_channel(listener) as channel:
        stub = services.PricingStub(channel)
        fork = stub.Quote(
            request, metadata=[("baggage", f"loopgate-sandbox={sandbox.routing_key}")], timeout=10
        )
        header = stub.Quote(request, metadata=[("x-loopgate-sandbox", sandbox.routing_key)], timeout=10)
        baseline = stub.Quote(request, timeout=10)
    assert fork.HasField("currency") and fork.currency == "EUR" and fork.total_cents == 2400
    assert header.HasField("currency")
    assert not baseline.HasField("currency") and baseline.total_cents == 2400
    direct = [
        r for r in runtime.observed_requests(sandbox) if r.service == "pricing" and r.target is not None
    ]
    assert direct and all(r.path == QUOTE and r.grpc_status == 0 for r in direct)
