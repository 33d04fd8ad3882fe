"""The App's HTTP side, built by a factory from Settings so tests build their own."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

from bot.config import AppSettings
from bot.github.client import GitHubApp
from bot.github.gate import is_gated
from bot.report import COMMENT_MARKER, render_comment
from bot.server.ack_queue import AckQueue
from bot.server.endpoint import WEBHOOK_PATH, WebhookEndpoint
from bot.server.metrics import Metrics
from bot.server.runs import runs_router
from bot.server.settings import ServerSettings
from bot.store import NewReport, Store

log = logging.getLogger("loopgate.server")


class LoopgateApp(FastAPI):
    """FastAPI with the webhook's route answered before FastAPI's own routing and middleware, whose
    per-request cost was most of a delivery's (see `bot.server.endpoint`)."""

    webhook: WebhookEndpoint | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.webhook is not None and scope["type"] == "http" and scope["path"] == WEBHOOK_PATH:
            await self.webhook(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(
    settings: AppSettings,
    store: Store,
    github: GitHubApp,
    *,
    workers_alive: Callable[[], bool] = lambda: True,
    new_run_id: Callable[[], str],
    metrics: Metrics | None = None,
) -> FastAPI:
    metrics = metrics or Metrics()
    metrics.count_warmups(store.warmup_outcomes)
    acks = AckQueue(store.ack_writer())
    warm = ServerSettings().warm_baselines
    if not warm:
        skipped = store.skip_queued_warmups("LOOPGATE_WARM_BASELINES is off")
        if skipped:
            log.info("skipped %d queued baseline warm-ups: LOOPGATE_WARM_BASELINES is off", skipped)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        acks.close()  # what was acknowledged is committed already; this releases the connection

    app = LoopgateApp(title="loopgate", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.metrics = metrics

    def refresh_comment(repo: str, branch: str, number: int | None) -> None:
        """A PR opened or updated on a gated branch: attach or refresh the sticky comment, under the
        PR's lock shared by all replicas; if GitHub refuses, the outbox delivers it later."""
        run = store.latest_for_branch(repo, branch)
        evidence = run.evidence() if run else None
        if run is None or evidence is None or number is None or not is_gated(branch):
            return
        store.set_pr(run.id, number)
        body = render_comment(evidence)
        try:
            client = github.repo(repo, run.installation_id)
            comment_id = client.upsert_comment(
                number, body, COMMENT_MARKER, run.comment_id, store.comment_lock
            )
            store.set_comment(run.id, comment_id)
        except Exception:
            log.exception("refreshing the comment on %s#%s failed; queued for the outbox", repo, number)
            payload = json.dumps({"body": body, "known_id": run.comment_id})
            store.enqueue_reports([NewReport(repo, run.installation_id, "comment", number, payload, run.id)])

    app.webhook = WebhookEndpoint(
        settings, store, metrics, refresh_comment, new_run_id, acks, warm_baselines=warm
    )
    app.include_router(runs_router(settings, store))

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        database, workers = store.ping(), workers_alive()
        ready = database and workers
        body = {"database": "ok" if database else "unreachable", "workers": "ok" if workers else "stopped"}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    def metrics_page() -> Response:
        for verdict, count in store.counts_by_verdict().items():
            metrics.runs.labels(verdict).set(count)
        metrics.queue_depth.set(store.queue_depth())
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
