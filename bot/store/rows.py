"""Rows to snapshots, and the statements several parts of the Store share."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import asdict, fields
from datetime import datetime

from sqlalchemy import Select, func, insert, select, update
from sqlalchemy.orm import Session

from bot.evidence import utcnow
from bot.store.base import UnknownRun
from bot.store.models import Report, Run
from bot.store.snapshots import IN_FLIGHT, NewReport, NewRun, RunSnapshot, RunStatus

_KEY = ("repo", "head_sha", "check_name", "attempt")
_QUEUED, _RUNNING, _CANCELLED = RunStatus.QUEUED.value, RunStatus.RUNNING.value, RunStatus.CANCELLED.value
_IN_FLIGHT = [status.value for status in IN_FLIGHT]


def _get(session: Session, run_id: str) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise UnknownRun(run_id)
    return run


def _locked(session: Session, run_id: str) -> Run:
    """The run, row-locked on PostgreSQL for this read-modify-write (SQLite holds the whole file)."""
    run = session.get(Run, run_id, with_for_update=True)
    if run is None:
        raise UnknownRun(run_id)
    return run


def _add_reports(session: Session, reports: Sequence[NewReport], now: datetime) -> None:
    """Queue reports; a pending one for the same target is replaced, since the newer says it all."""
    for report in reports:
        session.execute(
            update(Report)
            .where(
                Report.repo == report.repo,
                Report.kind == report.kind,
                Report.target == report.target,
                Report.delivered_at.is_(None),
            )
            .values(delivered_at=now, outcome="replaced")
        )
        session.add(Report(**asdict(report), attempts=0, next_attempt_at=now, created_at=now))
    session.flush()


def _replaced(repo: str, branch: str, by_sha: str, heads: Collection[str] | None) -> Select[Run]:
    query = select(Run).where(Run.repo == repo, Run.branch == branch, Run.head_sha != by_sha)
    return query if heads is None else query.where(Run.head_sha.in_(list(heads)))


def _should_stop(run: Run) -> bool:
    return run.cancel_requested or run.status == _CANCELLED


def _stop(session: Session, query: Select[Run], reason: str, by_sha: str | None = None) -> list[RunSnapshot]:
    # FOR UPDATE: a claim committing meanwhile is waited for and seen, so a run that just started is
    # asked to stop rather than overwritten as a cancelled queued one.
    runs = session.scalars(query.where(Run.status.in_(_IN_FLIGHT)).with_for_update()).all()
    now = utcnow()
    affected = []
    for run in runs:
        if run.status == _RUNNING and run.cancel_requested:
            continue  # already asked to stop; its first reason stands
        if run.status == _QUEUED:
            run.status = _CANCELLED
            run.conclusion = "cancelled"
            run.finished_at = now
        else:
            run.cancel_requested = True
        run.superseded_by = by_sha
        run.cancel_reason = reason
        run.updated_at = now
        affected.append(run)
    session.flush()
    return [_run(run) for run in affected]


def _insert_next(session: Session, run: NewRun, now: datetime) -> RunSnapshot:
    """Insert `run` as the key's next attempt; the caller holds the key's lock."""
    attempts = select(func.max(Run.attempt)).where(
        Run.repo == run.repo, Run.head_sha == run.head_sha, Run.check_name == run.check_name
    )
    values = {
        **asdict(run),
        "attempt": (session.scalar(attempts) or 0) + 1,
        "status": _QUEUED,
        "cancel_requested": False,
        "created_at": now,
        "updated_at": now,
    }
    session.execute(insert(Run), [values])
    return _snapshot_of_new(values)


def _snapshot_of_new(values: dict[str, object]) -> RunSnapshot:
    """The snapshot of a run just inserted, from its values, without reading it back."""
    known = {f.name: values.get(f.name) for f in fields(RunSnapshot)}
    known["status"] = RunStatus(str(values["status"]))
    return RunSnapshot(**known)  # type: ignore[arg-type]


def _run(row: Run) -> RunSnapshot:
    values = {
        field.name: getattr(row, field.name)
        for field in fields(RunSnapshot)
        if field.name not in ("status", "evidence_json")
    }
    return RunSnapshot(**values, status=RunStatus(row.status), evidence_json=row.evidence)
