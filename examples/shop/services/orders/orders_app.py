"""orders: places an order (inventory reservation, a price from pricing, payment) and keeps it in SQLite.

An order is confirmed only when payments captured exactly its amount; peers' error bodies must have
the shop's `{"error": {"code", "message"}}` shape, anything else is a 502 `upstream_bad_response`.

Peers are reached only through LOOPGATE_INVENTORY_URL, LOOPGATE_PAYMENTS_URL and LOOPGATE_PRICING_URL
(gRPC: orders_pricing); the database path comes from LOOPGATE_STATE. Tests inject an httpx transport
(`create_app(transport=...)`) and point LOOPGATE_PRICING_URL at a fake pricing server.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from orders_pricing import PricingClient, PricingUnavailable, QuoteRefused
from orders_telemetry import grpc_interceptors, instrument_client, setup_telemetry
from pydantic import BaseModel, Field

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY,
    sku TEXT NOT NULL,
    qty INTEGER NOT NULL,
    amount_cents INTEGER NOT NULL,
    status TEXT NOT NULL,
    reservation_id TEXT NOT NULL,
    charge_id TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)
"""


def _required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: orders reaches its peers only through loopgate's addresses")
    return value.rstrip("/")


@dataclass(frozen=True)
class Settings:
    inventory_url: str
    payments_url: str
    pricing_url: str
    state_path: str = "orders.db"
    timeout_s: float = 2.0
    attempts: int = 3
    backoff_s: float = 0.05

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            inventory_url=_required_env("LOOPGATE_INVENTORY_URL"),
            payments_url=_required_env("LOOPGATE_PAYMENTS_URL"),
            pricing_url=_required_env("LOOPGATE_PRICING_URL"),
            state_path=os.environ.get("LOOPGATE_STATE") or "orders.db",
            timeout_s=float(os.environ.get("ORDERS_UPSTREAM_TIMEOUT_S", "2.0")),
            attempts=int(os.environ.get("ORDERS_UPSTREAM_ATTEMPTS", "3")),
        )


class UpstreamUnavailable(Exception):
    """A peer could not be reached (or kept failing) within the retry policy."""


async def send_with_retry(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    json: Any = None,
    attempts: int = 3,
    backoff_s: float = 0.05,
) -> httpx.Response:
    """Send one request under the retry policy and return the last response.

    Idempotent methods are retried on connect errors, timeouts, other transport errors and 5xx
    answers. Anything else (POST) is retried only when the request provably never left: connect
    errors and connect timeouts. Backoff doubles from `backoff_s`. Raises UpstreamUnavailable when
    no response was obtained.
    """
    idempotent = method.upper() in IDEMPOTENT_METHODS
    for attempt in range(1, attempts + 1):
        last = attempt == attempts
        try:
            response = await client.request(method, url, json=json)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            if last:
                raise UpstreamUnavailable(f"{method} {url}: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            if last or not idempotent:
                raise UpstreamUnavailable(f"{method} {url}: {type(exc).__name__}") from exc
        else:
            if response.status_code < 500 or not idempotent or last:
                return response
        await asyncio.sleep(backoff_s * 2 ** (attempt - 1))
    raise UpstreamUnavailable(f"{method} {url}: no attempt made")


class OrderRequest(BaseModel):
    sku: str = Field(min_length=1)
    qty: int = Field(gt=0)
    card: str = Field(min_length=1)


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}})


def upstream_message(response: httpx.Response) -> str:
    """The message of a peer's `{"error": {"code", "message"}}` answer.

    Raises KeyError, TypeError or ValueError when the body has another shape: the error shape is
    part of every peer's contract, and the caller answers 502 `upstream_bad_response` then.
    """
    return str(response.json()["error"]["message"])


def connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=5)
    db.row_factory = sqlite3.Row
    return db


def init_db(path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with closing(connect(path)) as db, db:
        db.execute(SCHEMA)


def order_view(row: sqlite3.Row) -> dict[str, Any]:
    return {k: row[k] for k in ("id", "sku", "qty", "amount_cents", "status", "charge_id")}


def create_app(
    settings: Settings | None = None, transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    """Build the app. Settings default to the environment, read at start-up; `transport` replaces
    the network for the outgoing client (tests pass an `httpx.MockTransport`)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings or Settings.from_env()
        init_db(app.state.settings.state_path)
        client = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(app.state.settings.timeout_s))
        app.state.http = instrument_client(client)
        s = app.state.settings
        app.state.pricing = PricingClient(s.pricing_url, s.timeout_s, grpc_interceptors())
        try:
            async with client:
                yield
        finally:
            await app.state.pricing.close()

    app = FastAPI(title="orders", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, "invalid_request", "; ".join(str(e.get("msg")) for e in exc.errors()))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/orders", status_code=201)
    async def place_order(body: OrderRequest, request: Request) -> JSONResponse:
        s: Settings = request.app.state.settings
        http: httpx.AsyncClient = request.app.state.http
        policy = {"attempts": s.attempts, "backoff_s": s.backoff_s}
        try:
            r = await send_with_retry(
                http, "GET", f"{s.inventory_url}/items/{quote(body.sku, safe='')}", **policy
            )
            if r.status_code == 404:
                return error(404, "not_found", f"no item {body.sku!r}")
            if r.status_code != 200:
                return error(502, "upstream_unavailable", f"inventory answered {r.status_code}")
            item = r.json()
            available, price_cents = item.get("available"), item.get("price_cents")
            if not isinstance(available, int) or not isinstance(price_cents, int):
                return error(
                    502, "upstream_bad_response", "inventory item lacks integer available/price_cents"
                )
            if available < body.qty:
                return error(409, "insufficient_stock", f"{available} of {body.sku!r} available")
            try:
                priced = await request.app.state.pricing.quote(body.sku, body.qty, price_cents, **policy)
            except QuoteRefused as exc:
                return error(422, "quantity_over_limit", str(exc))

            r = await send_with_retry(
                http,
                "POST",
                f"{s.inventory_url}/reservations",
                json={"sku": body.sku, "qty": body.qty},
                **policy,
            )
            if r.status_code == 409:
                return error(409, "insufficient_stock", upstream_message(r))
            if r.status_code != 201:
                return error(502, "upstream_unavailable", f"inventory reservation answered {r.status_code}")
            reservation_id = r.json()["reservation_id"]

            amount_cents = priced.total_cents
            r = await send_with_retry(
                http,
                "POST",
                f"{s.payments_url}/charges",
                json={"amount_cents": amount_cents, "card": body.card},
                **policy,
            )
            if r.status_code == 402:
                return error(402, "payment_declined", upstream_message(r))
            if r.status_code != 201:
                return error(502, "upstream_unavailable", f"payments answered {r.status_code}")
            charge = r.json()
            if charge["amount_cents"] != amount_cents or charge["status"] != "captured":
                return error(
                    502,
                    "upstream_bad_response",
                    f"payments captured {charge['amount_cents']!r} ({charge['status']!r}),"
                    f" {amount_cents} was asked",
                )
            charge_id = str(charge["id"])
        except (UpstreamUnavailable, PricingUnavailable) as exc:
            return error(502, "upstream_unavailable", str(exc))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return error(502, "upstream_bad_response", f"unexpected upstream body: {exc!r}")

        order_id = f"ord_{uuid.uuid4().hex[:16]}"
        with closing(connect(s.state_path)) as db, db:
            db.execute(
                "INSERT INTO orders (id, sku, qty, amount_cents, status, reservation_id, charge_id)"
                " VALUES (?, ?, ?, ?, 'confirmed', ?, ?)",
                (order_id, body.sku, body.qty, amount_cents, reservation_id, charge_id),
            )
            row = db.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
        return JSONResponse(status_code=201, content=order_view(row))

    @app.get("/orders/{order_id}")
    async def get_order(order_id: str, request: Request) -> JSONResponse:
        with closing(connect(request.app.state.settings.state_path)) as db:
            row = db.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
        if row is None:
            return error(404, "not_found", f"no order {order_id!r}")
        return JSONResponse(order_view(row))

    @app.get("/orders")
    async def list_orders(request: Request, limit: int = Query(20, ge=1, le=100)) -> JSONResponse:
        with closing(connect(request.app.state.settings.state_path)) as db:
            rows = db.execute("SELECT * FROM orders ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,))
            orders = [order_view(row) for row in rows]
        return JSONResponse({"orders": orders})

    setup_telemetry(app)
    return app


app = create_app()
