"""pricing as its callers see it: a real server on a free port, called with stubs from its own proto.

pricing has no neighbours to mock; its tests speak to it over gRPC exactly as orders does, with the
contract compiled from the same proto/pricing.proto as the server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pricing_server import MAX_LINE_QTY, SERVICE, price_line, pricing_pb2, pricing_pb2_grpc, serve


@pytest.fixture(scope="module")
def channel() -> Iterator[grpc.Channel]:
    server, port = serve(0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
            yield chan
    finally:
        server.stop(grace=None)


def quote(channel: grpc.Channel, *lines: tuple[str, int, int], **kwargs: Any) -> Any:
    request = pricing_pb2.QuoteRequest(
        lines=[pricing_pb2.LineItem(sku=sku, qty=qty, unit_price_cents=unit) for sku, qty, unit in lines]
    )
    return pricing_pb2_grpc.PricingStub(channel).Quote(request, timeout=5, **kwargs)


def test_health_says_serving_for_the_server_and_the_pricing_service(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE):
        answer = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_a_small_order_costs_unit_price_times_quantity(channel: grpc.Channel) -> None:
    reply = quote(channel, ("sku-tea-towel", 3, 650))
    assert (reply.total_cents, reply.subtotal_cents, reply.discount_cents) == (1950, 1950, 0)


def test_a_line_of_ten_or_more_gets_the_volume_discount(channel: grpc.Channel) -> None:
    reply = quote(channel, ("sku-notebook", 10, 900), ("sku-tea-towel", 1, 650))
    assert (reply.total_cents, reply.subtotal_cents, reply.discount_cents) == (8750, 9650, 900)


def test_the_discount_rounds_down_to_the_cent() -> None:
    assert price_line(11, 333) == (3663, 366)
    assert price_line(9, 1000) == (9000, 0)


def test_a_line_over_the_limit_is_invalid_argument_naming_the_line(channel: grpc.Channel) -> None:
    quote(channel, ("sku-notebook", MAX_LINE_QTY, 900))  # the limit itself is fine
    with pytest.raises(grpc.RpcError) as refused:
        quote(channel, ("sku-notebook", MAX_LINE_QTY + 1, 900))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    over = MAX_LINE_QTY + 1
    assert refused.value.details() == f"sku-notebook: {over} units is over the limit of 100 per line"


@pytest.mark.parametrize("lines", [(), (("sku-mug", 0, 100),), (("sku-mug", 1, -5),)])
def test_nothing_to_price_is_invalid_argument(channel: grpc.Channel, lines: tuple[Any, ...]) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        quote(channel, *lines)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_baggage_and_trace_context_are_accepted_as_metadata(channel: grpc.Channel) -> None:
    metadata = [
        ("baggage", "loopgate-sandbox=abc123"),
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ]
    assert quote(channel, ("sku-mug", 1, 1200), metadata=metadata).total_cents == 1200
