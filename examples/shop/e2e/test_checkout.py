"""End-to-end checks of the shop through its public gateway.

Runs against whatever LOOPGATE_GATEWAY_URL points at. When LOOPGATE_BAGGAGE is set
(`loopgate-sandbox=<key>`), every request carries it as the W3C `baggage` header, so the calls go
through that sandbox's forks. The baseline is shared and long-lived: the tests order one unit of
SKUs with ample stock and never depend on exact stock counts.

Every call must answer within REQUEST_TIMEOUT_S, the storefront's latency budget: a shop that answers
correctly but too late is broken too (and a slow defect fails the suite in seconds, not minutes).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest

IN_STOCK_SKU = "sku-tea-towel"
OUT_OF_STOCK_SKU = "sku-teapot"
GOOD_CARD = "4242-4242-4242-4242"
DECLINED_CARD = "4000-0000-0000-0002"
REQUEST_TIMEOUT_S = 4.0


@pytest.fixture(scope="module")
def gateway() -> Iterator[httpx.Client]:
    base_url = os.environ.get("LOOPGATE_GATEWAY_URL")
    if not base_url:
        pytest.fail("LOOPGATE_GATEWAY_URL is not set: the suite needs the shop's gateway address")
    headers = {}
    if baggage := os.environ.get("LOOPGATE_BAGGAGE"):
        headers["baggage"] = baggage
    with httpx.Client(base_url=base_url, headers=headers, timeout=REQUEST_TIMEOUT_S) as client:
        yield client


def test_checkout_in_stock_then_read_order(gateway: httpx.Client) -> None:
    item = gateway.get(f"/api/items/{IN_STOCK_SKU}")
    assert item.status_code == 200, item.text
    price_cents = item.json()["price_cents"]

    checkout = gateway.post("/api/checkout", json={"sku": IN_STOCK_SKU, "qty": 1, "card": GOOD_CARD})
    assert checkout.status_code == 201, checkout.text
    order = checkout.json()
    assert order["sku"] == IN_STOCK_SKU
    assert order["qty"] == 1
    assert order["amount_cents"] == price_cents * 1
    assert order["status"] == "confirmed"
    assert order["charge_id"].startswith("ch_")

    lookup = gateway.get(f"/api/orders/{order['id']}")
    assert lookup.status_code == 200, lookup.text
    stored = lookup.json()
    assert (stored["id"], stored["sku"], stored["qty"], stored["amount_cents"]) == (
        order["id"],
        IN_STOCK_SKU,
        1,
        price_cents,
    )


def test_item_through_gateway_has_name_and_price(gateway: httpx.Client) -> None:
    response = gateway.get(f"/api/items/{IN_STOCK_SKU}")
    assert response.status_code == 200, response.text
    item = response.json()
    assert item["sku"] == IN_STOCK_SKU
    assert isinstance(item.get("name"), str) and item["name"].strip(), item
    assert isinstance(item.get("price_cents"), int) and item["price_cents"] > 0, item


def test_checkout_out_of_stock_is_409(gateway: httpx.Client) -> None:
    response = gateway.post("/api/checkout", json={"sku": OUT_OF_STOCK_SKU, "qty": 1, "card": GOOD_CARD})
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "insufficient_stock"


def test_checkout_over_the_line_limit_is_422(gateway: httpx.Client) -> None:
    response = gateway.post("/api/checkout", json={"sku": IN_STOCK_SKU, "qty": 101, "card": GOOD_CARD})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "quantity_over_limit"


def test_checkout_declined_card_is_402(gateway: httpx.Client) -> None:
    response = gateway.post("/api/checkout", json={"sku": IN_STOCK_SKU, "qty": 1, "card": DECLINED_CARD})
    assert response.status_code == 402, response.text
    assert response.json()["error"]["code"] == "payment_declined"


def test_unknown_order_is_404(gateway: httpx.Client) -> None:
    response = gateway.get("/api/orders/ord_does_not_exist")
    assert response.status_code == 404, response.text
