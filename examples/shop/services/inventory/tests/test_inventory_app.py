from __future__ import annotations

from fastapi.testclient import TestClient
from inventory_app import Item, create_app


def client() -> TestClient:
    return TestClient(create_app({"sku-a": Item("sku-a", "A", 1200, 3), "sku-b": Item("sku-b", "B", 500, 0)}))


def test_healthz() -> None:
    assert client().get("/healthz").status_code == 200


def test_seeded_catalogue() -> None:
    c = TestClient(create_app())
    mug = c.get("/items/sku-red-mug").json()
    assert mug["price_cents"] == 1200
    assert mug["available"] == 10
    assert c.get("/items/sku-teapot").json()["available"] == 0
    assert c.get("/items/sku-tea-towel").json()["available"] >= 1_000_000


def test_get_item() -> None:
    response = client().get("/items/sku-a")
    assert response.status_code == 200
    assert response.json() == {"sku": "sku-a", "name": "A", "price_cents": 1200, "available": 3}


def test_unknown_item_is_404() -> None:
    response = client().get("/items/sku-nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_reservation_takes_stock() -> None:
    c = client()
    response = c.post("/reservations", json={"sku": "sku-a", "qty": 2})
    assert response.status_code == 201
    body = response.json()
    assert body["sku"] == "sku-a"
    assert body["qty"] == 2
    assert body["reservation_id"].startswith("res_")
    assert c.get("/items/sku-a").json()["available"] == 1


def test_reservation_beyond_stock_is_409() -> None:
    c = client()
    assert c.post("/reservations", json={"sku": "sku-a", "qty": 4}).status_code == 409
    response = c.post("/reservations", json={"sku": "sku-b", "qty": 1})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "insufficient_stock"
    assert c.get("/items/sku-a").json()["available"] == 3


def test_reservation_of_unknown_item_is_404() -> None:
    assert client().post("/reservations", json={"sku": "sku-nope", "qty": 1}).status_code == 404


def test_reservation_needs_positive_qty() -> None:
    assert client().post("/reservations", json={"sku": "sku-a", "qty": 0}).status_code == 422
