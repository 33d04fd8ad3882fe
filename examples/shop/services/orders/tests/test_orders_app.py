"""orders against mocked neighbours: an httpx.MockTransport stands in for inventory and payments, a fake
gRPC server (built from orders' own copy of pricing's proto) for pricing."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from fastapi.testclient import TestClient
from orders_app import Settings, create_app, send_with_retry
from orders_pricing import pricing_pb2, pricing_pb2_grpc

INVENTORY = "http://inventory.test"
PAYMENTS = "http://payments.test"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


class Peers:
    """Plays inventory and payments; every request it receives is kept in `calls`."""

    def __init__(self) -> None:
        self.items = {"sku-mug": {"sku": "sku-mug", "name": "Mug", "price_cents": 1200, "available": 5}}
        self.calls: list[httpx.Request] = []
        self.override: Callable[[httpx.Request], httpx.Response | None] = lambda _: None

    def paths(self) -> list[str]:
        return [f"{r.method} {r.url.host}{r.url.path}" for r in self.calls]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        if (forced := self.override(request)) is not None:
            return forced
        path = request.url.path
        if request.url.host == "inventory.test" and path.startswith("/items/"):
            item = self.items.get(path.removeprefix("/items/"))
            if item is None:
                return httpx.Response(404, json={"error": {"code": "not_found", "message": "no"}})
            return httpx.Response(200, json=item)
        if request.url.host == "inventory.test" and path == "/reservations":
            body = json.loads(request.content)
            return httpx.Response(201, json={"reservation_id": "res_1", **body})
        if request.url.host == "payments.test" and path == "/charges":
            body = json.loads(request.content)
            if body["card"] == "4000-0000-0000-0002":
                return httpx.Response(402, json={"error": {"code": "card_declined", "message": "declined"}})
            return httpx.Response(
                201, json={"id": "ch_1", "amount_cents": body["amount_cents"]} | {"status": "captured"}
            )
        return httpx.Response(500)


class FakePricing(pricing_pb2_grpc.PricingServicer):
    """Plays pricing on a real local gRPC port: no discounts unless `discount_cents` is set; every Quote
    it receives is kept in `calls` with its metadata; `override` may abort a call instead."""

    def __init__(self) -> None:
        self.discount_cents = 0
        self.calls: list[tuple[Any, dict[str, str]]] = []
        self.override: Callable[[grpc.ServicerContext], None] = lambda _: None
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pricing_pb2_grpc.add_PricingServicer_to_server(self, self.server)
        self.url = f"http://127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def Quote(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.calls.append((request, dict(context.invocation_metadata())))
        self.override(context)
        subtotal = sum(line.qty * line.unit_price_cents for line in request.lines)
        discount = self.discount_cents
        return pricing_pb2.QuoteReply(
            total_cents=subtotal - discount, subtotal_cents=subtotal, discount_cents=discount
        )


@pytest.fixture
def peers() -> Peers:
    return Peers()


@pytest.fixture
def pricing() -> Iterator[FakePricing]:
    fake = FakePricing()
    yield fake
    fake.server.stop(grace=None)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "orders.db"


@pytest.fixture
def client(peers: Peers, pricing: FakePricing, db_path: Path) -> Iterator[TestClient]:
    settings = Settings(INVENTORY, PAYMENTS, pricing.url, state_path=str(db_path), backoff_s=0)
    with TestClient(create_app(settings, transport=httpx.MockTransport(peers))) as c:
        yield c


def checkout(client: TestClient, sku: str = "sku-mug", qty: int = 2, card: str = "4242") -> httpx.Response:
    return client.post("/orders", json={"sku": sku, "qty": qty, "card": card})


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200


def test_checkout_reserves_charges_and_stores(client: TestClient, peers: Peers, db_path: Path) -> None:
    response = checkout(client)
    assert response.status_code == 201, response.text
    order = response.json()
    assert order["id"].startswith("ord_")
    assert {k: order[k] for k in ("sku", "qty", "amount_cents", "status", "charge_id")} == {
        "sku": "sku-mug",
        "qty": 2,
        "amount_cents": 2400,
        "status": "confirmed",
        "charge_id": "ch_1",
    }
    assert peers.paths() == [
        "GET inventory.test/items/sku-mug",
        "POST inventory.test/reservations",
        "POST payments.test/charges",
    ]
    assert json.loads(peers.calls[1].content) == {"sku": "sku-mug", "qty": 2}
    assert json.loads(peers.calls[2].content) == {"amount_cents": 2400, "card": "4242"}

    assert client.get(f"/orders/{order['id']}").json() == order
    assert client.get("/orders?limit=5").json() == {"orders": [order]}
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT reservation_id, charge_id FROM orders").fetchall() == [("res_1", "ch_1")]


def test_unknown_order_is_404(client: TestClient) -> None:
    response = client.get("/orders/ord_nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_unknown_sku_is_404(client: TestClient, peers: Peers) -> None:
    assert checkout(client, sku="sku-nope").status_code == 404
    assert len(peers.calls) == 1


def test_insufficient_stock_is_409_without_charge(client: TestClient, peers: Peers) -> None:
    response = checkout(client, qty=6)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "insufficient_stock"
    assert peers.paths() == ["GET inventory.test/items/sku-mug"]


def test_reservation_conflict_is_409(client: TestClient, peers: Peers) -> None:
    peers.override = lambda r: (
        httpx.Response(409, json={"error": {"code": "insufficient_stock", "message": "gone"}})
        if r.url.path == "/reservations"
        else None
    )
    assert checkout(client).status_code == 409


def test_declined_payment_is_402_and_nothing_stored(client: TestClient) -> None:
    response = checkout(client, card="4000-0000-0000-0002")
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "payment_declined"
    assert client.get("/orders").json() == {"orders": []}


def test_declined_payment_of_another_error_shape_is_a_bad_upstream_response(
    client: TestClient, peers: Peers
) -> None:
    flat = {"message": "declined", "declined": True}
    peers.override = lambda r: httpx.Response(402, json=flat) if r.url.path == "/charges" else None
    response = checkout(client)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_bad_response"


def test_charge_of_another_amount_is_a_bad_upstream_response(client: TestClient, peers: Peers) -> None:
    captured = {"id": "ch_1", "amount_cents": 1200, "status": "captured"}
    peers.override = lambda r: httpx.Response(201, json=captured) if r.url.path == "/charges" else None
    response = checkout(client, qty=2)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_bad_response"
    assert client.get("/orders").json() == {"orders": []}


def test_item_lookup_is_retried_on_5xx(client: TestClient, peers: Peers) -> None:
    failures = iter([httpx.Response(503), httpx.Response(503)])
    peers.override = lambda r: next(failures, None) if r.method == "GET" else None
    assert checkout(client).status_code == 201
    assert peers.paths().count("GET inventory.test/items/sku-mug") == 3


def test_item_lookup_gives_up_after_three_attempts(client: TestClient, peers: Peers) -> None:
    def refuse(request: httpx.Request) -> None:
        raise httpx.ConnectError("connection refused", request=request)

    peers.override = refuse
    response = checkout(client)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert len(peers.calls) == 3


def test_item_lookup_is_retried_on_timeout(client: TestClient, peers: Peers) -> None:
    timeouts = iter([httpx.ReadTimeout("slow")])

    def slow_once(request: httpx.Request) -> None:
        if request.method == "GET" and (exc := next(timeouts, None)) is not None:
            raise exc

    peers.override = slow_once
    assert checkout(client).status_code == 201
    assert peers.paths().count("GET inventory.test/items/sku-mug") == 2


def test_charge_is_not_retried_after_it_may_have_been_received(client: TestClient, peers: Peers) -> None:
    def charge_times_out(request: httpx.Request) -> None:
        if request.url.path == "/charges":
            raise httpx.ReadTimeout("slow", request=request)

    peers.override = charge_times_out
    response = checkout(client)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert peers.paths().count("POST payments.test/charges") == 1


def test_charge_5xx_is_not_retried(client: TestClient, peers: Peers) -> None:
    peers.override = lambda r: httpx.Response(500) if r.url.path == "/charges" else None
    assert checkout(client).status_code == 502
    assert peers.paths().count("POST payments.test/charges") == 1


def test_charge_is_retried_when_the_connection_was_refused(client: TestClient, peers: Peers) -> None:
    refusals = iter([httpx.ConnectError("refused")])

    def refuse_once(request: httpx.Request) -> None:
        if request.url.path == "/charges" and (exc := next(refusals, None)) is not None:
            raise exc

    peers.override = refuse_once
    assert checkout(client).status_code == 201
    assert peers.paths().count("POST payments.test/charges") == 2


def test_item_without_available_is_a_bad_upstream_response(client: TestClient, peers: Peers) -> None:
    peers.items["sku-mug"] = {"sku": "sku-mug", "name": "Mug", "price_cents": 1200, "in_stock": 5}
    response = checkout(client)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_bad_response"


def test_baggage_and_trace_reach_every_neighbour(client: TestClient, peers: Peers) -> None:
    headers = {"baggage": "loopgate-sandbox=abc123", "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}
    response = client.post("/orders", json={"sku": "sku-mug", "qty": 1, "card": "4242"}, headers=headers)
    assert response.status_code == 201
    assert len(peers.calls) == 3
    for request in peers.calls:
        assert "loopgate-sandbox=abc123" in request.headers.get("baggage", "")
        assert request.headers["traceparent"].split("-")[1] == TRACE_ID


def test_client_has_a_real_timeout(client: TestClient) -> None:
    http: httpx.AsyncClient = client.app.state.http  # type: ignore[attr-defined]
    assert http.timeout.read == http.timeout.connect == 2.0


def test_state_survives_a_restart(peers: Peers, pricing: FakePricing, db_path: Path) -> None:
    settings = Settings(INVENTORY, PAYMENTS, pricing.url, state_path=str(db_path))
    with TestClient(create_app(settings, transport=httpx.MockTransport(peers))) as c:
        order = checkout(c).json()
    with TestClient(create_app(settings, transport=httpx.MockTransport(peers))) as c:
        assert c.get(f"/orders/{order['id']}").json() == order


def test_send_with_retry_posts_only_once_on_5xx() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return httpx.Response(503)

    async def scenario() -> tuple[int, int]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            post = await send_with_retry(http, "POST", "http://x.test/", backoff_s=0)
            get = await send_with_retry(http, "GET", "http://x.test/", backoff_s=0)
        return post.status_code, get.status_code

    assert asyncio.run(scenario()) == (503, 503)
    assert calls == ["POST", "GET", "GET", "GET"]


# ---------------------------------------------------------------------------------------------------
# pricing (gRPC)


def test_checkout_charges_the_total_pricing_quoted(
    client: TestClient, peers: Peers, pricing: FakePricing
) -> None:
    pricing.discount_cents = 240
    response = checkout(client, qty=2)
    assert response.status_code == 201, response.text
    assert response.json()["amount_cents"] == 2160
    assert json.loads(peers.calls[2].content) == {"amount_cents": 2160, "card": "4242"}
    ((request, _),) = pricing.calls
    assert [(x.sku, x.qty, x.unit_price_cents) for x in request.lines] == [("sku-mug", 2, 1200)]


def test_a_line_pricing_refuses_is_422_and_nothing_is_reserved(
    client: TestClient, peers: Peers, pricing: FakePricing
) -> None:
    pricing.override = lambda ctx: ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "sku-mug: over the limit")
    response = checkout(client)
    assert response.status_code == 422
    assert response.json()["error"] == {"code": "quantity_over_limit", "message": "sku-mug: over the limit"}
    assert peers.paths() == ["GET inventory.test/items/sku-mug"]
    assert len(pricing.calls) == 1  # a refusal is an answer: never retried


@pytest.mark.parametrize("status", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_a_transient_pricing_failure_is_retried_then_502(
    client: TestClient, peers: Peers, pricing: FakePricing, status: grpc.StatusCode
) -> None:
    pricing.override = lambda ctx: ctx.abort(status, "busy")
    response = checkout(client)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert len(pricing.calls) == 3
    assert "POST inventory.test/reservations" not in peers.paths()


def test_one_transient_pricing_failure_is_retried_once(client: TestClient, pricing: FakePricing) -> None:
    failures = iter([grpc.StatusCode.UNAVAILABLE])
    pricing.override = lambda ctx: ctx.abort(code, "restarting") if (code := next(failures, None)) else None
    assert checkout(client).status_code == 201
    assert len(pricing.calls) == 2


def test_another_pricing_status_is_502_at_once(client: TestClient, pricing: FakePricing) -> None:
    pricing.override = lambda ctx: ctx.abort(grpc.StatusCode.INTERNAL, "bug")
    response = checkout(client)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert len(pricing.calls) == 1


def test_baggage_and_trace_reach_pricing_as_grpc_metadata(client: TestClient, pricing: FakePricing) -> None:
    headers = {"baggage": "loopgate-sandbox=abc123", "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}
    response = client.post("/orders", json={"sku": "sku-mug", "qty": 1, "card": "4242"}, headers=headers)
    assert response.status_code == 201
    ((_, metadata),) = pricing.calls
    assert "loopgate-sandbox=abc123" in metadata.get("baggage", "")
    assert metadata["traceparent"].split("-")[1] == TRACE_ID


def test_orders_vendors_the_pricing_contract_it_was_built_against() -> None:
    """orders' copy of pricing.proto is the file pricing serves on main; an agent's change to pricing's
    own copy does not reach orders (a separately deployed client) until orders takes it."""
    here = Path(__file__).resolve().parents[1]
    vendored = (here / "proto" / "pricing.proto").read_text()
    assert "package shop.pricing.v1;" in vendored
    assert "int64 total_cents = 1;" in vendored
