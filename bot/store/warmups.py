"""The Store's baseline warm-ups: queued by a push of the default branch, taken by an idle worker.

A warm-up is not a run: it has no check, no verdict, no branch to supersede. It has its own table so
that nothing that reads runs (the queue depth, the runs API, verdict counts, recovery that concludes
checks) ever meets one. The rules:

- one queued warm-up per repository: a newer push of the default branch updates the queued row
  (`pushes` + 1) instead of queueing another, so only the latest head is warmed. The acknowledgement
  does this with one upsert (`UPSERT`, run on its own connection by `bot.store.acks`);
- agent runs first: a warm-up is claimed only while no queued run could be claimed, in the same
  transaction (on SQLite under BEGIN IMMEDIATE; on PostgreSQL a run queued concurrently may be missed
  by one claim, never taken away);
- one running warm-up per repository (a partial unique index), claimed exactly once like a run
  (`FOR UPDATE SKIP LOCKED` on PostgreSQL);
- a warm-up whose worker died (its heartbeat stopped) is concluded `failed`: the next push warms
  again, and a run starts the baseline itself meanwhile.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Result, exists, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from bot.evidence import utcnow
from bot.store import claim as claiming
from bot.store.base import WARMUP_UPSERT as UPSERT
from bot.store.base import StoreBase
from bot.store.models import QUEUED, Run, Warmup
from bot.store.snapshots import NewWarmup, RunStatus, WarmupSnapshot, WarmupStatus

_QUEUED, _RUNNING = WarmupStatus.QUEUED.value, WarmupStatus.RUNNING.value
DONE = (WarmupStatus.READY, WarmupStatus.FAILED, WarmupStatus.SKIPPED)
__all__ = ["DONE", "UPSERT", "Warmups"]


class Warmups(StoreBase):
    """Queueing, claiming and concluding baseline warm-ups."""

    def enqueue_warmup(self, warmup: NewWarmup) -> None:
        """Queue it, or fold it into the repository's queued warm-up (the general webhook path and
        replays; the acknowledgement runs the same statement on its own connection)."""
        with self._session("queueing a warm-up", write=True) as session:
            self._upsert_warmup(session, warmup)

    def claim_warmup(self, worker_id: str) -> WarmupSnapshot | None:
        """The oldest queued warm-up of a repository with none running, if no queued run could be
        claimed now (runs first); None otherwise."""
        other, busy = aliased(Warmup), aliased(Run)
        running_here = exists().where(other.repo == Warmup.repo, other.status == _RUNNING)
        branch_busy = exists().where(
            busy.repo == Run.repo, busy.branch == Run.branch, busy.status == RunStatus.RUNNING.value
        )
        run_waiting = exists().where(Run.status == RunStatus.QUEUED.value, ~branch_busy)
        query = (
            select(Warmup)
            .where(Warmup.status == _QUEUED, ~running_here, ~run_waiting)
            .order_by(Warmup.created_at, Warmup.id)
            .limit(1)
        )
        if self.backend == "postgresql":
            query = query.with_for_update(skip_locked=True, of=Warmup)
        for _ in range(claiming.TRIES):
            try:
                with self._session("claiming a warm-up", write=True) as session:
                    row = session.scalars(query).first()
                    if row is None:
                        return None
                    now = utcnow()
                    row.status, row.claimed_by = _RUNNING, worker_id
                    row.claimed_at = row.heartbeat_at = row.updated_at = now
                    session.flush()
                    return _warmup(row)
            except IntegrityError:
                continue  # another worker started this repository's warm-up an instant ago
        return None

    def warmup_heartbeat(self, warmup_id: int, worker_id: str) -> bool:
        """Mark it alive for the worker holding it; False when that worker no longer holds it."""
        query = (
            update(Warmup)
            .where(Warmup.id == warmup_id, Warmup.status == _RUNNING, Warmup.claimed_by == worker_id)
            .values(heartbeat_at=utcnow())
        )
        with self._session("recording a warm-up's heartbeat", write=True) as session:
            return _changed(session.execute(query)) > 0

    def finish_warmup(
        self,
        warmup_id: int,
        status: WarmupStatus,
        detail: str | None,
        *,
        warmed_sha: str | None = None,
        claimed_by: str | None = None,
    ) -> bool:
        """Conclude a warm-up (ready, failed or skipped) — with `claimed_by`, only while that worker
        holds it. False when it did not (reaped meanwhile)."""
        if status not in DONE:
            raise ValueError(f"a warm-up concludes ready, failed or skipped, not {status!r}")
        now = utcnow()
        query = update(Warmup).where(Warmup.id == warmup_id, Warmup.status.in_([_QUEUED, _RUNNING]))
        if claimed_by is not None:
            query = query.where(Warmup.status == _RUNNING, Warmup.claimed_by == claimed_by)
        values = {"status": status.value, "detail": detail, "updated_at": now, "finished_at": now}
        if warmed_sha is not None:
            values["warmed_sha"] = warmed_sha
        with self._session("concluding a warm-up", write=True) as session:
            return _changed(session.execute(query.values(**values))) > 0

    def skip_queued_warmups(self, reason: str) -> int:
        """Conclude every queued warm-up as skipped (warm-ups were switched off)."""
        now = utcnow()
        query = (
            update(Warmup)
            .where(text(QUEUED))
            .values(status=WarmupStatus.SKIPPED.value, detail=reason, updated_at=now, finished_at=now)
        )
        with self._session("skipping queued warm-ups", write=True) as session:
            return _changed(session.execute(query))

    def stale_warmups(self, older_than: timedelta) -> list[WarmupSnapshot]:
        """Running warm-ups whose worker has not beaten for `older_than`."""
        cutoff = utcnow() - older_than
        query = select(Warmup).where(
            Warmup.status == _RUNNING, or_(Warmup.heartbeat_at < cutoff, Warmup.heartbeat_at.is_(None))
        )
        with self._session("listing stale warm-ups") as session:
            return [_warmup(row) for row in session.scalars(query.order_by(Warmup.id))]

    def running_warmups(self) -> list[WarmupSnapshot]:
        query = select(Warmup).where(Warmup.status == _RUNNING).order_by(Warmup.id)
        with self._session("listing running warm-ups") as session:
            return [_warmup(row) for row in session.scalars(query)]

    def warmups(self, repo: str | None = None, limit: int = 50) -> list[WarmupSnapshot]:
        """Warm-ups newest first."""
        query = select(Warmup)
        if repo is not None:
            query = query.where(Warmup.repo == repo)
        with self._session("listing warm-ups") as session:
            return [_warmup(row) for row in session.scalars(query.order_by(Warmup.id.desc()).limit(limit))]

    def warmup_outcomes(self) -> dict[str, int]:
        """Concluded warm-ups by status, plus `superseded`: the pushes a newer one folded in."""
        by_status = (
            select(Warmup.status, func.count())
            .where(Warmup.status.in_([s.value for s in DONE]))
            .group_by(Warmup.status)
        )
        folded = select(func.coalesce(func.sum(Warmup.pushes - 1), 0))
        with self._session("counting warm-ups") as session:
            counts = {str(status): int(count) for status, count in session.execute(by_status)}
            counts["superseded"] = int(session.scalar(folded) or 0)
        return counts


def _changed(result: Result[Any]) -> int:
    """Rows an UPDATE matched (an UPDATE's result is a CursorResult)."""
    return int(cast(CursorResult[Any], result).rowcount)


def _warmup(row: Warmup) -> WarmupSnapshot:
    values = {f.name: getattr(row, f.name) for f in fields(WarmupSnapshot) if f.name != "status"}
    return WarmupSnapshot(**values, status=WarmupStatus(row.status))
