"""The webhook's general way: decode, record and act on one delivery, and replay after a crash.

The route itself (`bot.server.endpoint`) verifies and answers; it takes a fast path for pushes and
events only recorded, and calls `receive_delivery` here, in the thread pool, for everything else.
The webhook never does pipeline work.

Events dispatch through a table of handlers (`@handlers.on("push", model=Push)`): the payload is
parsed into the handler's typed model *before* anything is stored, so a malformed signed delivery is
recorded as `rejected` with its reason and answered 400, and a handler never meets a half-parsed
payload. Each event acts once, as DESIGN "Durability and idempotency" says.

Which branches are gated is the worker's decision, read from the repository's trusted
`.loopgate.yml`: the webhook queues a run for a push of any branch (tags and deletions aside), and a
pull request's head gets a run if its commit has none, so a required check always appears — `neutral`
for a branch loopgate does not gate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import BackgroundTasks

from bot.github.events import MalformedEvent, envelope, parse, printable
from bot.server import intake
from bot.server.handlers import Context, handlers
from bot.server.intake import MAX_BODY, Refused
from bot.store import Store
from bot.store.snapshots import DeliverySnapshot

__all__ = ["MAX_BODY", "handlers", "receive_delivery", "replay_unprocessed"]

log = logging.getLogger("loopgate.webhooks")


def _act(ctx: Context, payload: dict[str, Any]) -> str:
    """Parse for the handler, then act; a payload its handler cannot read is rejected, not acted on."""
    entry = handlers.find(ctx.event, ctx.action)
    if entry is None:
        ctx.accept()
        outcome = "ignored: event not used"
    else:
        try:
            event = parse(entry.model, payload)
        except MalformedEvent as exc:
            ctx.reject(str(exc))
            raise
        outcome = entry.handler(ctx, event)
    if ctx.recorded and not ctx.replaying:
        ctx.store.mark_delivery_processed(ctx.delivery_id)
    return outcome


def _context(
    store: Store,
    delivery_id: str,
    event: str,
    payload_text: str,
    background: BackgroundTasks,
    refresh_comment: Callable[[str, str, int | None], None],
    new_run_id: Callable[[], str],
    *,
    replaying: bool = False,
) -> Context:
    return Context(
        store,
        delivery_id,
        event,
        None,
        payload_text,
        background,
        refresh_comment,
        new_run_id,
        replaying=replaying,
    )


def receive_delivery(ctx: Context, body: bytes) -> str:
    """Decode, record and act, off the event loop: a malformed body is stored as rejected (400)."""
    try:
        payload = intake.decode(body)
    except Refused as exc:
        ctx.payload_text = intake.storable_text(body)
        ctx.reject(str(exc))
        raise
    head = envelope(payload)
    ctx.action, ctx.repo, ctx.installation_id = head.action, head.repo, head.installation_id
    ctx.payload = payload
    return _act(ctx, payload)


def replay_unprocessed(store: Store, new_run_id: Callable[[], str]) -> int:
    """Deliveries persisted by a process that died before acting on them are acted on now, each on
    its own: one that fails is marked `failed` with its error, and start-up goes on."""
    replayed, seen = 0, set[str]()
    while True:
        try:
            batch = [d for d in store.unprocessed_deliveries() if d.id not in seen]
        except Exception:
            log.exception("listing the deliveries to replay failed; they wait for the next start")
            return replayed
        if not batch:
            return replayed
        for delivery in batch:
            seen.add(delivery.id)
            _replay_one(store, delivery, new_run_id)
            replayed += 1


def _replay_one(store: Store, delivery: DeliverySnapshot, new_run_id: Callable[[], str]) -> None:
    ctx = _context(
        store,
        delivery.id,
        delivery.event,
        delivery.payload,
        BackgroundTasks(),
        lambda *_: None,
        new_run_id,
        replaying=True,
    )
    try:
        receive_delivery(ctx, delivery.payload.encode("utf-8", "surrogatepass"))
    except Exception as exc:
        log.warning("delivery %s cannot be replayed: %s", delivery.id, printable(str(exc), 300))
        _mark(store, delivery.id, "failed", printable(f"{type(exc).__name__}: {exc}"))
        return
    _mark(store, delivery.id, "processed", None)


def _mark(store: Store, delivery_id: str, outcome: str, error: str | None) -> None:
    try:
        if outcome == "failed":
            store.mark_delivery(delivery_id, "failed", error)
        else:
            store.mark_delivery(delivery_id, "processed")
    except Exception:
        log.exception("marking delivery %s %s failed", delivery_id, outcome)
