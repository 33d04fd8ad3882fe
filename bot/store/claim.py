"""Which queued run a worker takes next, so that every run is taken exactly once.

The next run is the oldest queued one whose branch has no running run (one active run per branch;
a superseded run still tearing down holds its branch until it concludes). Workers run as threads in
several processes, on several machines with PostgreSQL, so the choice and the status change must be
one atomic step:

- **PostgreSQL**: `SELECT … FOR UPDATE OF runs SKIP LOCKED LIMIT 1`, then the UPDATE, in one
  transaction. A row another worker is claiming is locked, so the query skips it rather than waiting
  or taking it twice; after a lock is released the row's WHERE clause is re-evaluated, so a run that
  just became `running` is not returned. Two workers may still pick two *different* queued runs of
  the same branch at once; the partial unique index `uq_runs_one_running_per_branch` makes the
  second UPDATE fail, and that worker looks again (by then it sees the branch busy).
- **SQLite** has neither row locks nor SKIP LOCKED: a transaction locks the whole database. The claim
  runs in a `BEGIN IMMEDIATE` transaction, which takes the write lock before the SELECT. Claims are
  therefore serialised (the others wait, within the busy timeout) and each sees the
  previous claim committed. A plain deferred BEGIN would let two claimers read the same queued run;
  the second to write would then fail at once with SQLITE_BUSY, which the busy timeout cannot cure.
"""

from __future__ import annotations

from sqlalchemy import Select, exists, select
from sqlalchemy.orm import aliased

from bot.store.models import Run
from bot.store.snapshots import RunStatus

# A lost race on PostgreSQL costs one retry; this many in a row means something else is wrong.
TRIES = 8


def next_run(backend: str) -> Select[Run]:
    busy = aliased(Run)
    branch_busy = exists().where(
        busy.repo == Run.repo, busy.branch == Run.branch, busy.status == RunStatus.RUNNING.value
    )
    query = (
        select(Run)
        .where(Run.status == RunStatus.QUEUED.value, ~branch_busy)
        .order_by(Run.created_at, Run.id)
        .limit(1)
    )
    if backend == "postgresql":
        query = query.with_for_update(skip_locked=True, of=Run)
    return query
