"""payments: captures card charges. One test card is always declined."""

from __future__ import annotations

import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from payments_telemetry import setup_telemetry
from pydantic import BaseModel, Field

DECLINED_CARDS = frozenset({"4000-0000-0000-0002"})


class ChargeRequest(BaseModel):
    amount_cents: int = Field(gt=0)
    card: str = Field(min_length=1)


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}})


def create_app() -> FastAPI:
    app = FastAPI(title="payments")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, "invalid_request", "; ".join(str(e.get("msg")) for e in exc.errors()))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/charges", status_code=201)
    async def create_charge(body: ChargeRequest) -> JSONResponse:
        if body.card in DECLINED_CARDS:
            return error(402, "card_declined", "the card was declined by the issuer")
        charge = {
            "id": f"ch_{uuid.uuid4().hex[:16]}",
            "amount_cents": body.amount_cents,
            "status": "captured",
        }
        return JSONResponse(status_code=201, content=charge)

    setup_telemetry(app)
    return app


app = create_app()
