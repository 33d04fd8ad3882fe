"""The Store's webhook deliveries: recorded once, marked handled, replayed after a crash."""

from __future__ import annotations

from typing import Literal

from sqlalchemy import select

from bot.evidence import utcnow
from bot.store.base import StoreBase
from bot.store.models import Delivery, Run
from bot.store.rows import _IN_FLIGHT, _insert_next, _replaced, _run, _stop
from bot.store.snapshots import AcceptedPush, DeliverySnapshot, NewRun, NewWarmup

DeliveryOutcome = Literal["processed", "rejected", "failed"]


class Deliveries(StoreBase):
    """Webhook deliveries, and a gated push accepted in one transaction with its run."""

    # Deliveries

    def record_delivery(
        self,
        delivery_id: str,
        event: str,
        action: str | None,
        repo: str | None,
        installation_id: int | None,
        payload_text: str,
        *,
        outcome: DeliveryOutcome | None = None,
        error: str | None = None,
    ) -> bool:
        """Persist a webhook delivery: True when new, False when GitHub redelivered it. With an
        `outcome` (a rejected delivery) it is recorded as already handled, so it is never replayed."""
        now = utcnow()
        values = {
            "id": delivery_id,
            "event": event,
            "action": action,
            "repo": repo,
            "installation_id": installation_id,
            "received_at": now,
            "processed_at": now if outcome else None,
            "payload": payload_text,
            "outcome": outcome,
            "error": error,
        }
        stmt = self._insert(Delivery).values(values).on_conflict_do_nothing(index_elements=["id"])
        with self._session("recording a delivery", write=True) as session:
            return session.execute(stmt.returning(Delivery.id)).first() is not None

    def accept_push(
        self,
        delivery_id: str,
        payload_text: str,
        run: NewRun,
        installation_id: int | None,
        *,
        replaces: str,
        warmup: NewWarmup | None = None,
    ) -> AcceptedPush:
        """One transaction for a gated push: record the delivery, supersede the runs of the commit
        the push moved the branch from (`replaces`, the push's `before`), and queue the new run — or
        attach to the branch's run of that SHA already queued or running. Either all of it happens or
        none, so a crash can never leave a recorded delivery without its run (or, for a push of the
        default branch, its baseline's `warmup`).

        Only `before` supersedes: a delivery arriving late, after a newer push, names an older
        `before` and cancels nothing newer (the worker concludes its run when it finds it is not the
        branch head). Statements take their values as parameters so SQLAlchemy compiles each once:
        this is the webhook's hot path."""
        now = utcnow()
        delivery = {
            "id": delivery_id,
            "event": "push",
            "action": None,
            "repo": run.repo,
            "installation_id": installation_id,
            "received_at": now,
            "processed_at": now,
            "payload": payload_text,
            "outcome": "processed",
        }
        insert_delivery = (
            self._insert(Delivery).on_conflict_do_nothing(index_elements=["id"]).returning(Delivery.id)
        )
        with self._session("accepting a push", write=True) as session:
            if session.execute(insert_delivery, [delivery]).first() is None:
                return AcceptedPush(new_delivery=False, run=None, created=False, superseded=[])
            if warmup is not None:
                self._upsert_warmup(session, warmup)
            self._lock_key(session, run.repo, run.head_sha, run.check_name)
            superseded = _stop(
                session,
                _replaced(run.repo, run.branch, run.head_sha, [replaces]),
                reason=f"superseded by {run.head_sha}",
                by_sha=run.head_sha,
            )
            same = select(Run).where(
                Run.repo == run.repo,
                Run.branch == run.branch,
                Run.head_sha == run.head_sha,
                Run.check_name == run.check_name,
                Run.status.in_(_IN_FLIGHT),
                Run.cancel_requested.is_(False),
            )
            existing = session.scalars(same.limit(1)).first()
            if existing is not None:
                return AcceptedPush(True, _run(existing), False, superseded)
            return AcceptedPush(True, _insert_next(session, run, now), True, superseded)

    def mark_delivery_processed(self, delivery_id: str) -> None:
        """The delivery's runs are enqueued: a restart need not handle it again."""
        self.mark_delivery(delivery_id, "processed")

    def mark_delivery(self, delivery_id: str, outcome: DeliveryOutcome, error: str | None = None) -> None:
        """The delivery is handled (`processed`) or never will be (`failed`, with its error)."""
        with self._session("marking a delivery handled", write=True) as session:
            delivery = session.get(Delivery, delivery_id)
            if delivery is not None and delivery.processed_at is None:
                delivery.processed_at = utcnow()
                delivery.outcome = outcome
                delivery.error = error

    def unprocessed_deliveries(self, limit: int = 100) -> list[DeliverySnapshot]:
        """Deliveries received but never marked processed (a crash between 202 and enqueue)."""
        query = (
            select(Delivery)
            .where(Delivery.processed_at.is_(None))
            .order_by(Delivery.received_at, Delivery.id)
            .limit(limit)
        )
        with self._session("listing unprocessed deliveries") as session:
            return [_delivery(row) for row in session.scalars(query)]

    def delivery(self, delivery_id: str) -> DeliverySnapshot | None:
        with self._session("reading a delivery") as session:
            row = session.get(Delivery, delivery_id)
            return None if row is None else _delivery(row)


def _delivery(row: Delivery) -> DeliverySnapshot:
    return DeliverySnapshot(
        id=row.id,
        event=row.event,
        action=row.action,
        repo=row.repo,
        installation_id=row.installation_id,
        received_at=row.received_at,
        processed_at=row.processed_at,
        payload=row.payload,
        outcome=row.outcome,
        error=row.error,
    )
