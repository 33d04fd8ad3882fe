"""payments against a real, fresh PostgreSQL database made for this test run and dropped after it.

The server is LOOPGATE_TEST_POSTGRES_URL (default `postgresql://postgres@127.0.0.1:5432/postgres`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from fastapi.testclient import TestClient
from payments_app import Settings, create_app
from psycopg import sql

SERVER_URL = os.environ.get("LOOPGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
GOOD_CARD = "4242-4242-4242-4242"
DECLINED_CARD = "4000-0000-0000-0002"


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    name = f"lg_test_payments_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(SERVER_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"payments' tests need PostgreSQL at LOOPGATE_TEST_POSTGRES_URL ({SERVER_URL}): {exc}")
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield _with_database(SERVER_URL, name)
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(state_url=database_url))) as c:
        yield c


def count_charges(database_url: str) -> int:
    with psycopg.connect(database_url) as db:
        row = db.execute("SELECT count(*) FROM charges").fetchone()
    assert row is not None
    return int(row[0])


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200


def test_charge_is_captured_and_kept(client: TestClient, database_url: str) -> None:
    response = client.post("/charges", json={"amount_cents": 1200, "card": GOOD_CARD})
    assert response.status_code == 201, response.text
    charge = response.json()
    assert charge["id"].startswith("ch_")
    assert (charge["amount_cents"], charge["status"], charge["card_last4"]) == (1200, "captured", "4242")
    assert client.get(f"/charges/{charge['id']}").json() == charge
    with psycopg.connect(database_url) as db:
        row = db.execute("SELECT amount_cents, card_last4 FROM charges WHERE id = %s", (charge["id"],))
        assert row.fetchone() == (1200, "4242")


def test_declined_card_is_402_and_nothing_is_kept(client: TestClient, database_url: str) -> None:
    before = count_charges(database_url)
    response = client.post("/charges", json={"amount_cents": 1200, "card": DECLINED_CARD})
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "card_declined"
    assert response.json()["error"]["message"]
    assert count_charges(database_url) == before


def test_invalid_amount_is_422(client: TestClient) -> None:
    response = client.post("/charges", json={"amount_cents": 0, "card": GOOD_CARD})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


def test_unknown_charge_is_404(client: TestClient) -> None:
    response = client.get("/charges/ch_nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_ledger_survives_a_restart(database_url: str) -> None:
    settings = Settings(state_url=database_url)
    with TestClient(create_app(settings)) as c:
        charge = c.post("/charges", json={"amount_cents": 650, "card": GOOD_CARD}).json()
    with TestClient(create_app(settings)) as c:  # the schema already exists: start-up keeps it
        assert c.get(f"/charges/{charge['id']}").json() == charge


def test_state_url_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOPGATE_STATE", raising=False)
    with pytest.raises(RuntimeError, match="LOOPGATE_STATE"), TestClient(create_app()):
        pass
