"""The webhook route accepts, verifies, persists and enqueues; it never does pipeline work.

Events dispatch through a table of handlers (`@handlers.on("push")`), each acting once as DESIGN
"Durability and idempotency" says.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from bot.config import AppSettings
from bot.github.events import (
    MalformedEvent,
    parse_check_run,
    parse_check_suite,
    parse_delete,
    parse_installation,
    parse_pull_request,
    parse_push,
)
from bot.github.gate import CHECK_NAME, is_gated
from bot.github.signature import verify_signature
from bot.server.metrics import Metrics
from bot.store import Store
from bot.store.snapshots import NewRun

log = logging.getLogger("loopgate.webhooks")
MAX_BODY = 25 * 1024 * 1024
Handler = Callable[["Context", dict[str, Any]], str]


class Redelivery(Exception):
    """GitHub sent a delivery already handled: answer it, act on nothing."""


@dataclass
class Context:
    """What a handler needs. Handlers record their delivery themselves — `accept()`, or
    `accept_push()` which records it together with the run in one transaction."""

    store: Store
    delivery_id: str
    event: str
    action: str | None
    payload_text: str
    background: BackgroundTasks
    refresh_comment: Callable[[str, str, int | None], None]
    new_run_id: Callable[[], str]
    replaying: bool = False

    def accept(self) -> None:
        if self.replaying:
            return
        payload = json.loads(self.payload_text)
        repo = (payload.get("repository") or {}).get("full_name")
        installation = (payload.get("installation") or {}).get("id")
        if not self.store.record_delivery(
            self.delivery_id, self.event, self.action, repo, installation, self.payload_text
        ):
            raise Redelivery


@dataclass
class Handlers:
    table: dict[tuple[str, str | None], Handler] = field(default_factory=dict)

    def on(self, event: str, action: str | None = None) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.table[(event, action)] = handler
            return handler

        return register

    def find(self, event: str, action: str | None) -> Handler | None:
        return self.table.get((event, action)) or self.table.get((event, None))


handlers = Handlers()


def _enqueue(
    ctx: Context,
    repo: str,
    branch: str,
    sha: str,
    trigger: str,
    clone_url: str,
    installation: int | None,
    pr_number: int | None = None,
) -> str:
    attempt = ctx.store.next_attempt(repo, sha, CHECK_NAME)
    run, created = ctx.store.enqueue(
        NewRun(
            id=ctx.new_run_id(),
            repo=repo,
            branch=branch,
            head_sha=sha,
            check_name=CHECK_NAME,
            trigger=trigger,
            attempt=attempt,
            clone_url=clone_url,
            installation_id=installation,
            delivery_id=ctx.delivery_id,
            pr_number=pr_number,
        )
    )
    return f"queued run {run.id}" if created else f"run {run.id} already queued"


@handlers.on("push")
def on_push(ctx: Context, payload: dict[str, Any]) -> str:
    """A push supersedes only the runs of the commit it moved the branch from (`before`), never by
    arrival order: GitHub may deliver an older push after a newer one. The worker settles the rest
    against the branch head (see `bot.worker.executor`)."""
    push = parse_push(payload)
    if push.deleted or not is_gated(push.branch):
        ctx.accept()
        return "ignored: " + (
            "branch deletions act on the delete event" if push.deleted else "not an agent branch"
        )
    assert push.branch is not None
    run = NewRun(
        id=ctx.new_run_id(),
        repo=push.repo.full_name,
        branch=push.branch,
        head_sha=push.after,
        check_name=CHECK_NAME,
        trigger="push",
        clone_url=push.repo.clone_url,
        installation_id=push.installation_id,
        delivery_id=ctx.delivery_id,
    )
    if ctx.replaying:
        ctx.store.supersede(run.repo, run.branch, run.head_sha, heads=[push.before])
        return _enqueue(
            ctx, run.repo, run.branch, run.head_sha, "push", push.repo.clone_url, push.installation_id
        )
    accepted = ctx.store.accept_push(
        ctx.delivery_id, ctx.payload_text, run, push.installation_id, replaces=push.before
    )
    if not accepted.new_delivery or accepted.run is None:
        raise Redelivery
    done = "queued run" if accepted.created else "attached to run"
    superseded = accepted.superseded
    return f"{done} {accepted.run.id}" + (f"; superseded {len(superseded)}" if superseded else "")


@handlers.on("delete")
def on_delete(ctx: Context, payload: dict[str, Any]) -> str:
    ctx.accept()
    deleted = parse_delete(payload)
    if deleted is None or not is_gated(deleted.branch):
        return "ignored"
    stopped = ctx.store.cancel_branch(deleted.repo.full_name, deleted.branch, "the branch was deleted")
    return f"cancelled {len(stopped)} runs"


def _rerun(ctx: Context, rerun: Any) -> str:
    branch = rerun.branch
    if not branch:
        previous = ctx.store.find(repo=rerun.repo.full_name, sha=rerun.head_sha, limit=1)
        branch = previous[0].branch if previous else None
    if not branch or not is_gated(branch):
        return "ignored: not an agent branch"
    return _enqueue(
        ctx,
        rerun.repo.full_name,
        branch,
        rerun.head_sha,
        "rerun",
        rerun.repo.clone_url,
        rerun.installation_id,
    )


@handlers.on("check_run", "rerequested")
def on_check_run_rerequested(ctx: Context, payload: dict[str, Any]) -> str:
    ctx.accept()
    if payload.get("check_run", {}).get("name") != CHECK_NAME:
        return "ignored: another app's check"
    return _rerun(ctx, parse_check_run(payload))


@handlers.on("check_run", "requested_action")
def on_requested_action(ctx: Context, payload: dict[str, Any]) -> str:
    ctx.accept()
    rerun = parse_check_run(payload)
    if rerun.requested_action != "rerun":
        return "ignored: unknown action"
    return _rerun(ctx, rerun)


@handlers.on("check_suite", "rerequested")
def on_check_suite_rerequested(ctx: Context, payload: dict[str, Any]) -> str:
    ctx.accept()
    return _rerun(ctx, parse_check_suite(payload))


@handlers.on("check_suite", "requested")
def on_check_suite_requested(ctx: Context, payload: dict[str, Any]) -> str:
    ctx.accept()
    return "ignored: the push starts the run"


@handlers.on("pull_request", "edited")
def on_pull_request_edited(ctx: Context, payload: dict[str, Any]) -> str:
    """A retargeted PR is verified again: the verdict it has was against another base. The run
    reads the PR's base when it starts, so a later retarget is never missed."""
    ctx.accept()
    pull = parse_pull_request(payload)
    if not pull.base_changed or not is_gated(pull.head_branch):
        return "ignored: only a base change on an agent branch re-verifies"
    return _enqueue(
        ctx,
        pull.repo.full_name,
        pull.head_branch,
        pull.head_sha,
        "base_changed",
        pull.repo.clone_url,
        pull.installation_id,
        pull.number,
    )


@handlers.on("pull_request", "ready_for_review")
def on_ready_for_review(ctx: Context, payload: dict[str, Any]) -> str:
    """Whoever readied the PR, a draft loopgate made is over: a later failure may draft it again."""
    outcome = on_pull_request(ctx, payload)
    pull = parse_pull_request(payload)
    ctx.store.clear_drafted(pull.repo.full_name, pull.number)
    return outcome


@handlers.on("pull_request")
def on_pull_request(ctx: Context, payload: dict[str, Any]) -> str:
    ctx.accept()
    pull = parse_pull_request(payload)
    if pull.action not in ("opened", "reopened", "synchronize", "ready_for_review") or not is_gated(
        pull.head_branch
    ):
        return "ignored"
    ctx.background.add_task(ctx.refresh_comment, pull.repo.full_name, pull.head_branch, pull.number)
    return "comment refresh scheduled"


@handlers.on("installation")
@handlers.on("installation_repositories")
def on_installation(ctx: Context, payload: dict[str, Any]) -> str:
    ctx.accept()
    change = parse_installation(payload)
    if change.action == "deleted":
        ctx.store.remove_installation(change.installation_id)
        return "installation removed"
    current = ctx.store.installation(change.installation_id)
    repos = set(current.repositories if current else ()) | set(change.added)
    ctx.store.upsert_installation(
        change.installation_id,
        change.account,
        sorted(repos - set(change.removed)),
        change.action == "suspend",
    )
    return "installation recorded"


@handlers.on("ping")
def on_ping(ctx: Context, payload: dict[str, Any]) -> str:
    ctx.accept()
    return "pong"


def replay_unprocessed(store: Store, new_run_id: Callable[[], str]) -> int:
    """Deliveries persisted by a process that died before acting on them are acted on now."""
    replayed = 0
    for delivery in store.unprocessed_deliveries():
        handler = handlers.find(delivery.event, delivery.action)
        if handler is not None:
            try:
                payload = json.loads(delivery.payload)
                ctx = Context(
                    store,
                    delivery.id,
                    delivery.event,
                    delivery.action,
                    delivery.payload,
                    BackgroundTasks(),
                    lambda *_: None,
                    new_run_id,
                    replaying=True,
                )
                handler(ctx, payload)
            except (ValueError, MalformedEvent):
                log.warning("delivery %s cannot be replayed", delivery.id)
        store.mark_delivery_processed(delivery.id)
        replayed += 1
    return replayed


def _act(ctx: Context, payload: dict[str, Any]) -> str:
    handler = handlers.find(ctx.event, ctx.action)
    if handler is None:
        ctx.accept()
        return "ignored: event not used"
    outcome = handler(ctx, payload)
    if ctx.event != "push":
        ctx.store.mark_delivery_processed(ctx.delivery_id)
    return outcome


def webhook_router(
    settings: AppSettings,
    store: Store,
    metrics: Metrics,
    refresh_comment: Callable[[str, str, int | None], None],
    new_run_id: Callable[[], str],
) -> APIRouter:
    router = APIRouter()

    @router.post("/webhooks/github", status_code=202)
    async def receive(request: Request, background: BackgroundTasks) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
            metrics.rejected.labels("too_large").inc()
            return JSONResponse({"error": "payload over 25 MB"}, status_code=413)
        body = await request.body()
        if len(body) > MAX_BODY:
            metrics.rejected.labels("too_large").inc()
            return JSONResponse({"error": "payload over 25 MB"}, status_code=413)
        if not verify_signature(body, settings.webhook_secret, request.headers.get("x-hub-signature-256")):
            metrics.rejected.labels("signature").inc()
            return JSONResponse({"error": "missing or invalid X-Hub-Signature-256"}, status_code=401)
        event = request.headers.get("x-github-event", "")
        delivery = request.headers.get("x-github-delivery", "")
        if not event or not delivery:
            metrics.rejected.labels("headers").inc()
            return JSONResponse(
                {"error": "X-GitHub-Event and X-GitHub-Delivery are required"}, status_code=400
            )
        try:
            payload = json.loads(body)
            if not isinstance(payload, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            metrics.rejected.labels("malformed").inc()
            return JSONResponse({"error": f"malformed JSON: {exc}"}, status_code=400)
        action = payload.get("action") if isinstance(payload.get("action"), str) else None
        ctx = Context(
            store,
            delivery,
            event,
            action,
            body.decode("utf-8", "replace"),
            background,
            refresh_comment,
            new_run_id,
        )
        try:
            # Database work runs off the event loop, so slow commits never stall other deliveries.
            outcome = await run_in_threadpool(_act, ctx, payload)
        except Redelivery:
            metrics.redeliveries.inc()
            return JSONResponse({"status": "duplicate delivery: already handled"}, status_code=200)
        except MalformedEvent as exc:
            metrics.rejected.labels("malformed").inc()
            return JSONResponse({"error": str(exc)}, status_code=400)
        metrics.deliveries.labels(event).inc()
        return JSONResponse({"status": outcome}, status_code=202)

    return router
