from __future__ import annotations

from fastapi.testclient import TestClient
from payments_app import create_app


def client() -> TestClient:
    return TestClient(create_app())


def test_healthz() -> None:
    assert client().get("/healthz").status_code == 200


def test_charge_is_captured() -> None:
    response = client().post("/charges", json={"amount_cents": 1200, "card": "4242-4242-4242-4242"})
    assert response.status_code == 201
    body = response.json()
    assert body["amount_cents"] == 1200
    assert body["status"] == "captured"
    assert body["id"].startswith("ch_")


def test_declined_card_is_402() -> None:
    response = client().post("/charges", json={"amount_cents": 1200, "card": "4000-0000-0000-0002"})
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "card_declined"
    assert response.json()["error"]["message"]


def test_invalid_amount_is_422() -> None:
    response = client().post("/charges", json={"amount_cents": 0, "card": "4242-4242-4242-4242"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"
