"""The Store's runs from the worker's side: claims, heartbeats, take-overs and conclusions."""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy.exc import IntegrityError

from bot.evidence import Verdict, utcnow
from bot.store import claim as claiming
from bot.store.base import LostClaim, StoreBase
from bot.store.rows import _RUNNING, _add_reports, _get, _locked, _run, _should_stop
from bot.store.snapshots import FINISHED, NewReport, RunSnapshot, RunStatus

ROUTING_KEY = re.compile(r"^[a-z0-9]{6,16}$")


class WorkerRuns(StoreBase):
    """What a worker does to a run: claim it, keep it alive, annotate and conclude it."""

    # Runs: the worker's side

    def claim(self, worker_id: str) -> RunSnapshot | None:
        """Take the oldest queued run whose branch has none running; None when there is none.

        See `bot.store.claim` for how this stays exactly-once on each backend.
        """
        for _ in range(claiming.TRIES):
            try:
                with self._session("claiming a run", write=True) as session:
                    run = session.scalars(claiming.next_run(self.backend)).first()
                    if run is None:
                        return None
                    now = utcnow()
                    run.status = _RUNNING
                    run.claimed_by = worker_id
                    run.claimed_at = now
                    run.heartbeat_at = now
                    run.updated_at = now
                    session.flush()
                    return _run(run)
            except IntegrityError:
                continue  # another worker started a run of this branch an instant ago
        return None

    def heartbeat(self, run_id: str, worker_id: str) -> bool:
        """Mark a running run alive, only for the worker that holds its claim. Returns whether the
        worker should stop (cancellation requested, or the claim lost), so it learns in one trip."""
        with self._session("recording a heartbeat", write=True) as session:
            run = _locked(session, run_id)
            if run.status != _RUNNING or run.claimed_by != worker_id:
                return True
            run.heartbeat_at = utcnow()
            return _should_stop(run)

    def holds(self, run_id: str, worker_id: str) -> bool:
        """Is the run still running under this worker's claim?"""
        with self._session("reading a run") as session:
            run = _get(session, run_id)
            return run.status == _RUNNING and run.claimed_by == worker_id

    def take_over(self, run: RunSnapshot, by: str) -> RunSnapshot | None:
        """Claim a stale running run for its reaper, only if nobody touched it since `run` was read
        (same claim, same heartbeat): of two reapers, one wins; a worker that beat meanwhile keeps it."""
        with self._session("taking over a run", write=True) as session:
            row = _locked(session, run.id)
            unchanged = row.claimed_by == run.claimed_by and row.heartbeat_at == run.heartbeat_at
            if row.status != _RUNNING or not unchanged:
                return None
            now = utcnow()
            row.claimed_by, row.claimed_at, row.heartbeat_at, row.updated_at = by, now, now, now
            session.flush()
            return _run(row)

    def cancel_requested(self, run_id: str) -> bool:
        """Should the worker stop? True when cancellation was requested or the run was cancelled."""
        with self._session("reading a run") as session:
            return _should_stop(_get(session, run_id))

    def set_check_run(self, run_id: str, check_run_id: int) -> RunSnapshot:
        return self._set(run_id, check_run_id=check_run_id)

    def set_comment(self, run_id: str, comment_id: int) -> RunSnapshot:
        return self._set(run_id, comment_id=comment_id)

    def set_pr(self, run_id: str, number: int) -> RunSnapshot:
        return self._set(run_id, pr_number=number)

    def set_routing_key(self, run_id: str, key: str) -> RunSnapshot:
        if not ROUTING_KEY.match(key):
            raise ValueError(f"routing key {key!r} is not [a-z0-9]{{6,16}}")
        return self._set(run_id, routing_key=key)

    def _set(self, run_id: str, **values: object) -> RunSnapshot:
        with self._session("updating a run", write=True) as session:
            run = _locked(session, run_id)
            for name, value in values.items():
                setattr(run, name, value)
            run.updated_at = utcnow()
            session.flush()
            return _run(run)

    def complete(
        self,
        run_id: str,
        verdict: str | None,
        conclusion: str,
        evidence_json: str | None,
        status: str = RunStatus.COMPLETED.value,
        *,
        reports: Sequence[NewReport] = (),
        claimed_by: str | None = None,
    ) -> RunSnapshot:
        """Conclude a run: `completed` with its verdict, or `cancelled` (superseded, deleted).

        `reports` (its check conclusion, its comment) join the outbox in the same transaction, so a
        concluded run always has them on their way. With `claimed_by`, only that worker's claim
        concludes the run; otherwise LostClaim, and nothing is written."""
        finished = RunStatus(status)
        if finished not in FINISHED:
            raise ValueError(f"a run concludes completed or cancelled, not {status!r}")
        if verdict is not None:
            verdict = Verdict(verdict).value
        now = utcnow()
        with self._session("concluding a run", write=True) as session:
            run = _locked(session, run_id)
            if claimed_by is not None and (run.status != _RUNNING or run.claimed_by != claimed_by):
                raise LostClaim(run_id, claimed_by)
            _add_reports(session, reports, now)
            run.status = finished.value
            run.verdict = verdict
            run.conclusion = conclusion
            run.evidence = evidence_json
            run.finished_at = now
            run.updated_at = now
            session.flush()
            return _run(run)

    def amend_evidence(self, run_id: str, evidence_json: str) -> None:
        """A concluded run's Evidence with what happened after its verdict was reported (teardown's
        outcome); the verdict, conclusion and status stay as concluded."""
        with self._session("recording teardown", write=True) as session:
            run = _locked(session, run_id)
            run.evidence = evidence_json
            run.updated_at = utcnow()
