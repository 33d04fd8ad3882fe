"""gateway: the shop's public API. Forwards to orders and inventory and passes their answers through.

Peers are reached only through LOOPGATE_ORDERS_URL and LOOPGATE_INVENTORY_URL. Tests inject an
httpx transport: `create_app(transport=...)`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from gateway_telemetry import instrument_client, setup_telemetry
from pydantic import BaseModel, Field


def _required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(
            f"{name} is not set: the gateway reaches its peers only through loopgate's addresses"
        )
    return value.rstrip("/")


@dataclass(frozen=True)
class Settings:
    orders_url: str
    inventory_url: str
    # Above orders' own worst case (3 inventory attempts + reservation + charge, 2 s each).
    timeout_s: float = 15.0

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            orders_url=_required_env("LOOPGATE_ORDERS_URL"),
            inventory_url=_required_env("LOOPGATE_INVENTORY_URL"),
            timeout_s=float(os.environ.get("GATEWAY_UPSTREAM_TIMEOUT_S", "15")),
        )


class CheckoutRequest(BaseModel):
    sku: str = Field(min_length=1)
    qty: int = Field(gt=0)
    card: str = Field(min_length=1)


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}})


async def forward(request: Request, method: str, url: str, json: Any = None) -> Response:
    """One call to a peer; its status and body are passed through unchanged."""
    http: httpx.AsyncClient = request.app.state.http
    try:
        upstream = await http.request(method, url, json=json)
    except httpx.TransportError as exc:
        return error(502, "upstream_unavailable", f"{method} {url}: {type(exc).__name__}")
    return Response(
        content=upstream.content,
        status_code=upstream.status_code,
        media_type=upstream.headers.get("content-type", "application/json"),
    )


def create_app(
    settings: Settings | None = None, transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    """Build the app. Settings default to the environment, read at start-up; `transport` replaces
    the network for the outgoing client (tests pass an `httpx.MockTransport`)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings or Settings.from_env()
        client = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(app.state.settings.timeout_s))
        app.state.http = instrument_client(client)
        async with client:
            yield

    app = FastAPI(title="gateway", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, "invalid_request", "; ".join(str(e.get("msg")) for e in exc.errors()))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/api/checkout")
    async def checkout(body: CheckoutRequest, request: Request) -> Response:
        s: Settings = request.app.state.settings
        return await forward(request, "POST", f"{s.orders_url}/orders", json=body.model_dump())

    @app.get("/api/orders/{order_id}")
    async def get_order(order_id: str, request: Request) -> Response:
        s: Settings = request.app.state.settings
        return await forward(request, "GET", f"{s.orders_url}/orders/{quote(order_id, safe='')}")

    @app.get("/api/items/{sku}")
    async def get_item(sku: str, request: Request) -> Response:
        s: Settings = request.app.state.settings
        return await forward(request, "GET", f"{s.inventory_url}/items/{quote(sku, safe='')}")

    setup_telemetry(app)
    return app


app = create_app()
