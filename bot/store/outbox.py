"""The Store's outbox: reports (check conclusions, comments) that must reach GitHub."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from datetime import timedelta

from sqlalchemy import select

from bot.evidence import utcnow
from bot.store.base import StoreBase
from bot.store.models import Report
from bot.store.rows import _add_reports
from bot.store.snapshots import NewReport, ReportSnapshot


class Outbox(StoreBase):
    """Reports queued for GitHub, claimed on a lease by the dispatcher, and settled."""

    # The outbox: reports that must reach GitHub

    def enqueue_reports(self, reports: Sequence[NewReport]) -> None:
        """Reports not tied to a run's conclusion (a superseded run's check, a refreshed comment)."""
        if reports:
            with self._session("queueing reports", write=True) as session:
                _add_reports(session, reports, utcnow())

    def claim_reports(
        self, lease: timedelta, *, limit: int = 10, run_id: str | None = None
    ) -> list[ReportSnapshot]:
        """Take due reports (oldest first) for `lease`: another dispatcher skips them until it ends,
        so a dispatcher that dies mid-delivery only delays them. PostgreSQL skips rows another
        replica is claiming (SKIP LOCKED); SQLite's claim holds the write lock."""
        now = utcnow()
        query = (
            select(Report)
            .where(Report.delivered_at.is_(None), Report.next_attempt_at <= now)
            .order_by(Report.id)
            .limit(limit)
        )
        if run_id is not None:
            query = query.where(Report.run_id == run_id)
        if self.backend == "postgresql":
            query = query.with_for_update(skip_locked=True)
        with self._session("claiming reports", write=True) as session:
            rows = session.scalars(query).all()
            for row in rows:
                row.attempts += 1
                row.next_attempt_at = now + lease
            session.flush()
            return [_report(row) for row in rows]

    def report_pending(self, report_id: int) -> bool:
        """False once the report was delivered or replaced by a newer one for the same target."""
        with self._session("reading a report") as session:
            row = session.get(Report, report_id)
            return row is not None and row.delivered_at is None

    def report_delivered(self, report_id: int, outcome: str = "delivered", error: str | None = None) -> None:
        """GitHub accepted the report (or it can never be delivered: `outcome` says which)."""
        with self._session("recording a delivered report", write=True) as session:
            row = session.get(Report, report_id, with_for_update=True)
            if row is not None and row.delivered_at is None:
                row.delivered_at, row.outcome, row.last_error = utcnow(), outcome, error

    def report_failed(self, report_id: int, error: str, retry_in: timedelta) -> None:
        with self._session("recording a failed report", write=True) as session:
            row = session.get(Report, report_id, with_for_update=True)
            if row is not None and row.delivered_at is None:
                row.last_error, row.next_attempt_at = error, utcnow() + retry_in

    def reports(self, *, pending: bool = False) -> list[ReportSnapshot]:
        query = select(Report).order_by(Report.id)
        if pending:
            query = query.where(Report.delivered_at.is_(None))
        with self._session("listing reports") as session:
            return [_report(row) for row in session.scalars(query)]


def _report(row: Report) -> ReportSnapshot:
    return ReportSnapshot(**{field.name: getattr(row, field.name) for field in fields(ReportSnapshot)})
