"""Evidence pages and the runs API. Pages are private: a run opens with the signed token from its
check run's `details_url`, or with the API bearer token.

Tokens are compared as bytes (`bot.github.signature.same_secret`): whatever an unauthenticated client
sends is answered 401, never 500. Nothing it sends reaches the database before it is authenticated.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Header, HTTPException, Query
from fastapi.responses import HTMLResponse, Response

from bot.config import AppSettings
from bot.github.signature import same_secret
from bot.report import render_html
from bot.report.links import link_token
from bot.store import Store
from bot.store.snapshots import RunSnapshot


def _bearer(authorization: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


# Run ids are `new_run_id()`'s: short and URL-safe. Anything else names no run and is not hashed.
RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _clean(value: str | None) -> str | None:
    """A query value the database can hold: PostgreSQL text refuses NUL, drivers lone surrogates."""
    if value is None:
        return None
    if "\x00" in value or not value.isprintable() or len(value) > 256:
        raise HTTPException(400, "query values must be printable text of at most 256 characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise HTTPException(400, "query values must be valid Unicode") from None
    return value


def runs_router(settings: AppSettings, store: Store) -> APIRouter:
    router = APIRouter()

    def api_token_ok(authorization: str | None) -> bool:
        given = _bearer(authorization)
        return same_secret(given, settings.api_token)

    def link_ok(run_id: str, token: str | None) -> bool:
        return bool(RUN_ID.fullmatch(run_id)) and same_secret(
            token, link_token(settings.webhook_secret, run_id)
        )

    def authorised_run(run_id: str, token: str | None, authorization: str | None) -> RunSnapshot:
        if not (api_token_ok(authorization) or link_ok(run_id, token)):
            raise HTTPException(401, "a valid link token or API bearer token is required")
        if not RUN_ID.fullmatch(run_id):
            raise HTTPException(404, "no such run")
        run = store.get(run_id)
        if run is None:
            raise HTTPException(404, "no such run")
        return run

    @router.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(
        run_id: str, token: str | None = None, authorization: str | None = Header(None)
    ) -> HTMLResponse:
        run = authorised_run(run_id, token, authorization)
        evidence = run.evidence()
        if evidence is None:
            return HTMLResponse(
                f"<!doctype html><title>loopgate</title><p>Run {run.status}: no evidence yet.</p>"
            )
        return HTMLResponse(
            render_html(evidence),
            headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"},
        )

    @router.get("/api/runs/{run_id}")
    def run_json(run_id: str, token: str | None = None, authorization: str | None = Header(None)) -> Response:
        run = authorised_run(run_id, token, authorization)
        evidence = run.evidence()
        if evidence is None:
            raise HTTPException(409, f"run is {run.status}: no evidence yet")
        return Response(evidence.model_dump_json(), media_type="application/json")

    @router.get("/api/runs")
    def list_runs(
        repo: str | None = None,
        branch: str | None = None,
        sha: str | None = None,
        limit: int = Query(20, ge=1, le=100),
        authorization: str | None = Header(None),
    ) -> list[dict[str, Any]]:
        if not api_token_ok(authorization):
            raise HTTPException(401, "the API bearer token is required")
        return [
            {
                "id": run.id,
                "repo": run.repo,
                "branch": run.branch,
                "head_sha": run.head_sha,
                "attempt": run.attempt,
                "status": run.status.value,
                "verdict": run.verdict,
                "conclusion": run.conclusion,
                "created_at": run.created_at.isoformat(),
                "finished_at": run.finished_at.isoformat() if run.finished_at else None,
                "evidence": f"/api/runs/{run.id}",
            }
            for run in store.find(repo=_clean(repo), branch=_clean(branch), sha=_clean(sha), limit=limit)
        ]

    return router
