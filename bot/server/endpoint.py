"""POST /webhooks/github as a plain ASGI callable: the webhook's acknowledgement, cheap per delivery.

Why not a FastAPI route: dependency resolution, the request and response objects, the middleware
stack and a hop to the thread pool cost more CPU per delivery than everything the acknowledgement
itself does (verify the HMAC over the raw bytes, decode the JSON once, validate the few fields a push
needs, one transaction). So this route reads the ASGI messages itself, and what most deliveries
are — a push that queues a run, a pull request's head that needs a check, or an event only recorded
(an event not used, a tag push, a ping, `check_suite.requested`) — is written by one prepared
transaction on the webhook's writer thread (`bot.server.ack_queue`, `bot.store.acks`). Everything
else — events that act on other rows, a malformed payload to record as rejected, a body too large to
decode on the event loop — goes the general way, `bot.server.webhooks`, in the thread pool. Either
way the answer, its status and the stored rows are the same; the 2xx is sent only after the commit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from fastapi import BackgroundTasks
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from bot.config import AppSettings, InfrastructureError
from bot.github.events import MalformedEvent, PullRequestEvent, Push, envelope, parse
from bot.github.signature import verify_signature
from bot.server import intake
from bot.server.ack_queue import AckQueue
from bot.server.handlers import (
    PULL_CHECKED,
    Context,
    Redelivery,
    handlers,
    ignored_push,
    on_pull_request,
    on_push,
    pull_run,
    push_outcome,
    push_run,
    refreshes_comment,
)
from bot.server.intake import Refused
from bot.server.metrics import Metrics
from bot.server.warmups import WARMING, warmup_for
from bot.server.webhooks import receive_delivery
from bot.store import Store
from bot.store.acks import Ack, Acked, PullAck, PushAck, RecordAck

log = logging.getLogger("loopgate.webhooks")

WEBHOOK_PATH = "/webhooks/github"
FAST_BODY = 256 * 1024
"""Bodies up to this size are decoded on the event loop (GitHub's pushes are a few KiB); a larger
one is decoded in the thread pool, so no delivery holds the loop for long."""

Answer = Callable[[Acked], str]


@dataclass(frozen=True, slots=True)
class Fast:
    """The ack to write and the answer once it is committed."""

    ack: Ack
    answer: Answer
    refresh: Callable[[], None] | None = None
    """A pull request's sticky comment, refreshed after the response when the PR attached to a run
    that already was: a run just queued has no evidence to show yet (`refresh_comment` would read
    it and stop), and the worker comments when it concludes."""


_JSON_HEADERS = [(b"content-type", b"application/json")]


class WebhookEndpoint:
    def __init__(
        self,
        settings: AppSettings,
        store: Store,
        metrics: Metrics,
        refresh_comment: Callable[[str, str, int | None], None],
        new_run_id: Callable[[], str],
        acks: AckQueue,
        *,
        warm_baselines: bool = True,
    ) -> None:
        self._warm = warm_baselines
        self._secret = settings.webhook_secret
        self._store = store
        self._metrics = metrics
        self._refresh_comment = refresh_comment
        self._new_run_id = new_run_id
        self._acks = acks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await _respond(send, 405, {"detail": "Method Not Allowed"}, [(b"allow", b"POST")])
            return
        background = BackgroundTasks()
        answer = await self._answer(scope, receive, background)
        if answer is None:
            return  # the client went away before its body arrived
        await _respond(send, *answer)
        await background()

    async def _answer(
        self, scope: Scope, receive: Receive, background: BackgroundTasks
    ) -> tuple[int, dict[str, str]] | None:
        headers = _headers(scope)
        metrics = self._metrics
        try:
            if intake.declared_too_large(_text(headers.get(b"content-length"))):
                raise Refused(413, "payload over 25 MB")
            body = await _body(receive)
            if body is None:
                return None
            if not verify_signature(body, self._secret, headers.get(b"x-hub-signature-256")):
                metrics.rejected.labels("signature").inc()
                return 401, {"error": "missing or invalid X-Hub-Signature-256"}
            event, delivery = intake.delivery_headers(
                _text(headers.get(b"x-github-event")), _text(headers.get(b"x-github-delivery"))
            )
            outcome = await self._act(event, delivery, body, background)
        except Refused as exc:
            metrics.rejected.labels("too_large" if exc.status == 413 else "malformed").inc()
            return exc.status, {"error": str(exc)}
        except MalformedEvent as exc:
            metrics.rejected.labels("malformed").inc()
            return 400, {"error": str(exc)}
        except Redelivery:
            metrics.redeliveries.inc()
            return 200, {"status": "duplicate delivery: already handled"}
        except InfrastructureError as exc:
            log.error("webhook: %s", exc)
            return 503, {"error": "the database is unavailable; GitHub may redeliver"}
        metrics.deliveries.labels(event).inc()
        return 202, {"status": outcome}

    async def _act(self, event: str, delivery: str, body: bytes, background: BackgroundTasks) -> str:
        fast = self._fast(event, delivery, body) if len(body) <= FAST_BODY else None
        if fast is not None:
            acked = await self._acks.write(fast.ack)
            if not acked.new_delivery:
                raise Redelivery
            if fast.refresh is not None and not acked.created:
                background.add_task(fast.refresh)
            return fast.answer(acked)
        ctx = Context(
            self._store,
            delivery,
            event,
            None,
            body.decode("utf-8", "replace"),
            background,
            self._refresh_comment,
            self._new_run_id,
            warm_baselines=self._warm,
        )
        # Database work runs off the event loop, so slow commits never stall other deliveries.
        return await run_in_threadpool(receive_delivery, ctx, body)

    def _fast(self, event: str, delivery: str, body: bytes) -> Fast | None:
        """The one transaction a delivery needs when its handler only records it, or is `on_push`
        or `on_pull_request`; None when it must go the general way (including every malformed
        payload, which that way records as rejected with its reason)."""
        try:
            payload = intake.decode(body)
        except Refused:
            return None
        head = envelope(payload)
        entry = handlers.find(event, head.action)
        text = body.decode("utf-8")  # decode() proved it UTF-8, and JSON holds no raw NUL

        def recorded(answer: str) -> Fast:
            row = RecordAck(delivery, event, head.action, head.repo, head.installation_id, text)
            return Fast(row, lambda _: answer)

        if entry is None:
            return recorded("ignored: event not used")
        if entry.answer is not None:
            return recorded(entry.answer)
        try:
            if entry.handler is on_push:
                return self._push(delivery, parse(Push, payload), payload, text, recorded)
            if entry.handler is on_pull_request:
                return self._pull(delivery, parse(PullRequestEvent, payload), text, recorded)
        except MalformedEvent:
            return None
        return None

    def _push(
        self, delivery: str, push: Push, payload: dict[str, Any], text: str, recorded: Callable[[str], Fast]
    ) -> Fast:
        """As `on_push`: a tag or a deletion is only recorded; a branch's push queues its run, and
        a push of the default branch also its baseline's warm-up, in the same transaction."""
        ignored = ignored_push(push)
        if ignored is not None:
            return recorded(ignored)
        warmup = warmup_for(push, payload, delivery) if self._warm else None
        ack = PushAck(delivery, text, push_run(push, delivery, self._new_run_id()), push.before, warmup)
        warming = WARMING if warmup is not None else ""
        return Fast(
            ack, lambda done: push_outcome(done.created, str(done.run_id), len(done.superseded)) + warming
        )

    def _pull(
        self, delivery: str, pull: PullRequestEvent, text: str, recorded: Callable[[str], Fast]
    ) -> Fast:
        """As `on_pull_request`: the head commit gets a check, and the sticky comment a refresh
        after the response."""
        if pull.action not in PULL_CHECKED:
            return recorded("ignored")
        run = pull_run(pull, delivery, self._new_run_id(), "pull_request")
        refresh = partial(self._refresh_comment, pull.repository.full_name, pull.head_branch, pull.number)
        return Fast(
            PullAck(delivery, pull.action, text, run), _enqueued, refresh if refreshes_comment(pull) else None
        )


def _enqueued(acked: Acked) -> str:
    return f"{'queued run' if acked.created else 'attached to run'} {acked.run_id}"


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The first value of each header (ASGI gives names lower-cased), as bytes: nothing here may
    raise on characters an unauthenticated sender chose."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        found.setdefault(name, value)
    return found


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


async def _body(receive: Receive) -> bytes | None:
    """The body, refused (413) as soon as it passes the limit whatever Content-Length said; None
    when the client disconnects first."""
    chunks = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks += message.get("body", b"")
        if len(chunks) > intake.MAX_BODY:
            raise Refused(413, "payload over 25 MB")
        if not message.get("more_body", False):
            return bytes(chunks)


async def _respond(
    send: Send, status: int, content: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
