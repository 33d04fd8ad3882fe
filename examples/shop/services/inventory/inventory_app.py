"""inventory: an in-memory catalogue seeded at start; reservations take stock out of it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from inventory_telemetry import setup_telemetry
from pydantic import BaseModel, Field


@dataclass
class Item:
    sku: str
    name: str
    price_cents: int
    stock: int


def seed_catalogue() -> dict[str, Item]:
    items = [
        Item("sku-red-mug", "Red mug", 1200, 10),
        Item("sku-tea-towel", "Tea towel", 650, 1_000_000),
        Item("sku-notebook", "Dotted notebook", 900, 1_000_000),
        Item("sku-teapot", "Cast-iron teapot", 4800, 0),
    ]
    return {item.sku: item for item in items}


class ReservationRequest(BaseModel):
    sku: str = Field(min_length=1)
    qty: int = Field(gt=0)


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}})


def item_view(item: Item) -> dict[str, object]:
    return {"sku": item.sku, "name": item.name, "price_cents": item.price_cents, "available": item.stock}


def create_app(catalogue: dict[str, Item] | None = None) -> FastAPI:
    app = FastAPI(title="inventory")
    app.state.catalogue = seed_catalogue() if catalogue is None else catalogue

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, "invalid_request", "; ".join(str(e.get("msg")) for e in exc.errors()))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/items/{sku}")
    async def get_item(sku: str, request: Request) -> JSONResponse:
        item = request.app.state.catalogue.get(sku)
        if item is None:
            return error(404, "not_found", f"no item {sku!r}")
        return JSONResponse(item_view(item))

    @app.post("/reservations", status_code=201)
    async def reserve(body: ReservationRequest, request: Request) -> JSONResponse:
        item = request.app.state.catalogue.get(body.sku)
        if item is None:
            return error(404, "not_found", f"no item {body.sku!r}")
        if item.stock < body.qty:
            return error(
                409, "insufficient_stock", f"{item.stock} of {body.sku!r} available, {body.qty} asked"
            )
        item.stock -= body.qty  # no await between check and update: atomic on the event loop
        reservation = {"reservation_id": f"res_{uuid.uuid4().hex[:16]}", "sku": body.sku, "qty": body.qty}
        return JSONResponse(status_code=201, content=reservation)

    setup_telemetry(app)
    return app


app = create_app()
