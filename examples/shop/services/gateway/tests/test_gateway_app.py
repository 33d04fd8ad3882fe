"""gateway against mocked neighbours: an httpx.MockTransport stands in for orders and inventory."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from gateway_app import Settings, create_app

ORDER = {"id": "ord_1", "sku": "sku-mug", "qty": 2, "amount_cents": 2400, "status": "confirmed"}


class Peers:
    """Plays orders and inventory; every request it receives is kept in `calls`."""

    def __init__(self) -> None:
        self.calls: list[httpx.Request] = []
        self.answer: httpx.Response | Exception = httpx.Response(201, json=ORDER)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.fixture
def peers() -> Peers:
    return Peers()


@pytest.fixture
def client(peers: Peers) -> Iterator[TestClient]:
    settings = Settings(orders_url="http://orders.test", inventory_url="http://inventory.test")
    with TestClient(create_app(settings, transport=httpx.MockTransport(peers))) as c:
        yield c


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200


def test_checkout_goes_to_orders(client: TestClient, peers: Peers) -> None:
    response = client.post("/api/checkout", json={"sku": "sku-mug", "qty": 2, "card": "4242"})
    assert response.status_code == 201
    assert response.json() == ORDER
    (call,) = peers.calls
    assert (call.method, str(call.url)) == ("POST", "http://orders.test/orders")
    assert json.loads(call.content) == {"sku": "sku-mug", "qty": 2, "card": "4242"}


@pytest.mark.parametrize(("status", "code"), [(402, "payment_declined"), (409, "insufficient_stock")])
def test_checkout_errors_pass_through(client: TestClient, peers: Peers, status: int, code: str) -> None:
    body = {"error": {"code": code, "message": "no"}}
    peers.answer = httpx.Response(status, json=body)
    response = client.post("/api/checkout", json={"sku": "sku-mug", "qty": 1, "card": "4242"})
    assert response.status_code == status
    assert response.json() == body


def test_invalid_checkout_is_rejected_here(client: TestClient, peers: Peers) -> None:
    response = client.post("/api/checkout", json={"sku": "sku-mug", "qty": 0, "card": "4242"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"
    assert peers.calls == []


def test_order_lookup_goes_to_orders(client: TestClient, peers: Peers) -> None:
    peers.answer = httpx.Response(200, json=ORDER)
    assert client.get("/api/orders/ord_1").json() == ORDER
    assert str(peers.calls[0].url) == "http://orders.test/orders/ord_1"
    peers.answer = httpx.Response(404, json={"error": {"code": "not_found", "message": "no"}})
    assert client.get("/api/orders/ord_2").status_code == 404


def test_item_lookup_goes_to_inventory(client: TestClient, peers: Peers) -> None:
    item = {"sku": "sku-mug", "name": "Mug", "price_cents": 1200, "available": 5}
    peers.answer = httpx.Response(200, json=item)
    assert client.get("/api/items/sku-mug").json() == item
    assert str(peers.calls[0].url) == "http://inventory.test/items/sku-mug"


def test_unreachable_peer_is_502(client: TestClient, peers: Peers) -> None:
    peers.answer = httpx.ConnectError("connection refused")
    response = client.get("/api/items/sku-mug")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unavailable"


def test_baggage_and_trace_are_propagated(client: TestClient, peers: Peers) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"baggage": "loopgate-sandbox=abc123", "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    client.post("/api/checkout", json={"sku": "sku-mug", "qty": 1, "card": "4242"}, headers=headers)
    (call,) = peers.calls
    assert "loopgate-sandbox=abc123" in call.headers["baggage"]
    assert call.headers["traceparent"].split("-")[1] == trace_id
