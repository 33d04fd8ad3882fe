"""payments: captures card charges and keeps its ledger in PostgreSQL. One test card is always declined.

The database is LOOPGATE_STATE, a libpq URL that loopgate gives (one database per baseline, a copy per
fork, e.g. `postgresql://postgres@127.0.0.1:5432/lg_ab12_payments`). The schema is created at start-up
when it is missing; nothing is seeded. Every call opens its own short connection, so an idle service
holds none. Tests pass their own settings: `create_app(Settings(state_url=...))`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from payments_telemetry import setup_telemetry
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

DECLINED_CARDS = frozenset({"4000-0000-0000-0002"})

SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    id TEXT PRIMARY KEY,
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    card_last4 TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Settings:
    state_url: str

    @classmethod
    def from_env(cls) -> Settings:
        url = os.environ.get("LOOPGATE_STATE")
        if not url:
            raise RuntimeError(
                "LOOPGATE_STATE is not set: payments keeps its ledger in the PostgreSQL database"
                " loopgate gives it (a postgresql:// URL)"
            )
        return cls(state_url=url)


class ChargeStore:
    """The ledger: the `charges` table of one PostgreSQL database."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        return psycopg.connect(self.url, row_factory=dict_row, connect_timeout=5)

    def migrate(self) -> None:
        with self._connect() as db:
            db.execute(SCHEMA)

    def add(self, amount_cents: int, card: str) -> dict[str, Any]:
        charge_id = f"ch_{uuid.uuid4().hex[:16]}"
        with self._connect() as db:
            row = db.execute(
                "INSERT INTO charges (id, amount_cents, card_last4, status)"
                " VALUES (%s, %s, %s, 'captured') RETURNING *",
                (charge_id, amount_cents, card[-4:]),
            ).fetchone()
        assert row is not None
        return charge_view(row)

    def get(self, charge_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM charges WHERE id = %s", (charge_id,)).fetchone()
        return None if row is None else charge_view(row)


def charge_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "amount_cents": row["amount_cents"],
        "card_last4": row["card_last4"],
        "status": row["status"],
        "created_at": row["created_at"].isoformat(),
    }


class ChargeRequest(BaseModel):
    amount_cents: int = Field(gt=0)
    card: str = Field(min_length=1)


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}})


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Settings default to the environment, read at start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.store = ChargeStore((settings or Settings.from_env()).state_url)
        app.state.store.migrate()
        yield

    app = FastAPI(title="payments", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, "invalid_request", "; ".join(str(e.get("msg")) for e in exc.errors()))

    @app.exception_handler(psycopg.Error)
    async def ledger_error(_: Request, exc: psycopg.Error) -> JSONResponse:
        return error(500, "ledger_error", f"{type(exc).__name__}: {str(exc).strip()[:200]}")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # Plain `def` routes: FastAPI runs them in its thread pool, so the blocking driver never stalls
    # the event loop.
    @app.post("/charges", status_code=201)
    def create_charge(body: ChargeRequest, request: Request) -> JSONResponse:
        if body.card in DECLINED_CARDS:
            return error(402, "card_declined", "the card was declined by the issuer")
        charge = request.app.state.store.add(body.amount_cents, body.card)
        return JSONResponse(status_code=201, content=charge)

    @app.get("/charges/{charge_id}")
    def get_charge(charge_id: str, request: Request) -> JSONResponse:
        charge = request.app.state.store.get(charge_id)
        if charge is None:
            return error(404, "not_found", f"no charge {charge_id!r}")
        return JSONResponse(charge)

    setup_telemetry(app)
    return app


app = create_app()
