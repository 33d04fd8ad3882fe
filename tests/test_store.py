"""The durable store on real SQLite files and a real PostgreSQL: idempotency, the queue, recovery.

PostgreSQL is the server at `LOOPGATE_TEST_POSTGRES_URL` (default: trust auth on 127.0.0.1:5432); this
module makes its own database there and drops it afterwards. Every test runs on both backends.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from psycopg import sql
from sqlalchemy import make_url

from bot.config import InfrastructureError
from bot.evidence import Evidence
from bot.store import LostClaim, NewReport, NewRun, RunSnapshot, RunStatus, Store, UnknownRun
from bot.store import database as store_database
from bot.store.migrate import VERSION_TABLE, current
from bot.store.models import Base
from tests import evidence_samples

PG_URL = os.environ.get("LOOPGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REPO = "acme/shop"
SHA_A, SHA_B, SHA_C = "a" * 40, "b" * 40, "c" * 40
CHECK = "loopgate / sandbox verification"
# The newest revision file: `Store.open` migrates to it.
HEAD_REVISION = max(
    p.name[:4] for p in (Path(__file__).parents[1] / "bot/store/migrations/versions").glob("0*.py")
)


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _admin(url: str = PG_URL) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(_libpq(url), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0]
        pytest.fail(
            f"PostgreSQL at {store_database.redact(url)} is not reachable ({first}); "
            "`make test` starts it, or set LOOPGATE_TEST_POSTGRES_URL",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    name = f"loopgate_test_store_{uuid.uuid4().hex[:12]}"
    with _admin() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with _admin() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each backend: a fresh SQLite file, or the module's database reset."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'loopgate.db'}"
    pg_url: str = request.getfixturevalue("pg_database")
    with _admin(pg_url) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return pg_url


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    with Store.open(url) as opened:
        yield opened


def new_run(branch: str = "agent/fix", sha: str | None = None, **overrides: Any) -> NewRun:
    """A run of `branch`; without a SHA, a fresh one (a SHA is part of a run's key, a branch is not)."""
    values: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "repo": REPO,
        "branch": branch,
        "head_sha": sha or (uuid.uuid4().hex + uuid.uuid4().hex)[:40],
        "check_name": CHECK,
        "trigger": "push",
        "base_ref": "main",
        "clone_url": f"https://github.com/{REPO}.git",
        "installation_id": 42,
        "delivery_id": uuid.uuid4().hex,
    }
    return NewRun(**{**values, **overrides})


def enqueued(
    store: Store, branch: str = "agent/fix", sha: str | None = None, **overrides: Any
) -> RunSnapshot:
    run, created = store.enqueue(new_run(branch, sha, **overrides))
    assert created
    return run


def in_threads(count: int, target: Any) -> list[Any]:
    """Run `target(i)` in `count` threads released together; their results in order."""
    results: list[Any] = [None] * count
    start = threading.Barrier(count)

    def work(index: int) -> None:
        start.wait(timeout=30)
        results[index] = target(index)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


# Webhook deliveries


def test_a_redelivery_is_a_noop(store: Store) -> None:
    payload = '{"ref": "refs/heads/agent/fix",  "after": "' + SHA_A + '", "z": 1, "a": [1, 2]}'

    assert store.record_delivery("d-1", "push", None, REPO, 42, payload) is True
    assert store.record_delivery("d-1", "push", None, REPO, 42, payload) is False

    stored = store.delivery("d-1")
    assert stored is not None
    assert stored.payload == payload, "the raw body is kept byte for byte: the signature covered it"
    assert (stored.event, stored.repo, stored.installation_id) == ("push", REPO, 42)


def test_concurrent_redeliveries_record_once(store: Store) -> None:
    results = in_threads(8, lambda _: store.record_delivery("d-race", "push", None, REPO, 42, "{}"))
    assert sorted(results) == [False] * 7 + [True]


def test_a_delivery_not_processed_before_a_crash_is_found_again(url: str) -> None:
    with Store.open(url) as before:
        before.record_delivery("d-done", "push", None, REPO, 42, "{}")
        before.mark_delivery_processed("d-done")
        before.record_delivery("d-lost", "push", None, REPO, 42, "{}")
    with Store.open(url) as after:
        assert [d.id for d in after.unprocessed_deliveries()] == ["d-lost"]
        assert after.record_delivery("d-lost", "push", None, REPO, 42, "{}") is False


def test_installations(store: Store) -> None:
    first = store.upsert_installation(7, "acme", ["acme/shop"])
    assert (first.account, first.repositories, first.suspended) == ("acme", ("acme/shop",), False)
    again = store.upsert_installation(7, "acme", ["acme/shop", "acme/web"], suspended=True)
    assert (again.repositories, again.suspended) == (("acme/shop", "acme/web"), True)
    assert store.installation(7) == again
    assert store.remove_installation(7) is True
    assert store.remove_installation(7) is False
    assert store.installation(7) is None


# Enqueueing and superseding


def test_enqueue_is_idempotent_on_repo_sha_check_and_attempt(store: Store) -> None:
    first = enqueued(store, sha=SHA_A)

    again, created = store.enqueue(new_run(sha=SHA_A))  # a new id, the same key: GitHub told us twice
    assert (created, again.id) == (False, first.id)
    assert store.next_attempt(REPO, SHA_A, CHECK) == 2

    second = enqueued(store, sha=SHA_A, attempt=2)
    assert second.attempt == 2
    assert store.next_attempt(REPO, SHA_A, CHECK) == 3
    assert store.next_attempt(REPO, SHA_B, CHECK) == 1

    with pytest.raises(ValueError, match="already taken"):
        store.enqueue(new_run(sha=SHA_C, id=first.id))


def test_concurrent_enqueues_of_one_key_make_one_run(store: Store) -> None:
    results = in_threads(8, lambda _: store.enqueue(new_run(sha=SHA_A)))
    assert sorted(created for _, created in results) == [False] * 7 + [True]
    assert len({run.id for run, _ in results}) == 1
    assert store.queue_depth() == 1


def test_a_newer_push_supersedes_the_branch(store: Store) -> None:
    running = enqueued(store, sha=SHA_A)
    assert store.claim("w1") == store.get(running.id)
    queued = enqueued(store, sha=SHA_B)
    other_branch = enqueued(store, branch="agent/other")

    affected = store.supersede(REPO, "agent/fix", by_sha=SHA_C)

    by_id = {run.id: run for run in affected}
    assert set(by_id) == {running.id, queued.id}
    cancelled = by_id[queued.id]
    assert (cancelled.status, cancelled.conclusion, cancelled.superseded_by) == (
        RunStatus.CANCELLED,
        "cancelled",
        SHA_C,
    )
    assert cancelled.finished_at is not None
    stopping = by_id[running.id]
    assert (stopping.status, stopping.cancel_requested, stopping.superseded_by) == (
        RunStatus.RUNNING,
        True,
        SHA_C,
    )
    assert stopping.cancel_reason == f"superseded by {SHA_C}"
    assert store.cancel_requested(running.id) is True
    assert store.heartbeat(running.id, "w1") is True, "the heartbeat tells the worker to stop"
    assert store.get(other_branch.id) == other_branch

    assert store.supersede(REPO, "agent/fix", by_sha=SHA_C) == [], "nothing left to supersede"

    newest = enqueued(store, sha=SHA_C)
    assert store.supersede(REPO, "agent/fix", by_sha=SHA_C) == [], "a push never supersedes its own SHA"
    claimed = store.claim("w2")
    assert claimed is not None and claimed.id == other_branch.id, "agent/fix still has a run stopping"
    assert store.claim("w3") is None

    store.complete(running.id, None, "cancelled", None, status="cancelled")
    claimed = store.claim("w3")
    assert claimed is not None and claimed.id == newest.id


def accept(store: Store, sha: str, before: str, delivery: str | None = None) -> Any:
    run = new_run(sha=sha, delivery_id=delivery or uuid.uuid4().hex)
    return store.accept_push(str(run.delivery_id), "{}", run, 42, replaces=before)


def test_a_push_supersedes_only_the_commit_it_moved_from(store: Store) -> None:
    """Deliveries of A→B and B→C arrive as B→C, then A→B: the late one cancels nothing newer."""
    newer = accept(store, SHA_C, before=SHA_B)
    assert newer.created and newer.superseded == []
    running = store.claim("w1")
    assert running is not None and running.id == newer.run.id

    late = accept(store, SHA_B, before=SHA_A)
    assert late.created and late.superseded == [], "an older push never cancels the newer run"
    assert store.cancel_requested(running.id) is False

    newest = accept(store, SHA_A, before=SHA_C)  # a force-push back to A is newer than C
    assert [r.id for r in newest.superseded] == [running.id]
    assert store.cancel_requested(running.id) is True


def test_a_second_delivery_of_a_queued_sha_attaches_to_its_run(store: Store) -> None:
    first = accept(store, SHA_B, before=SHA_A)
    again = accept(store, SHA_B, before=SHA_A)
    assert (again.new_delivery, again.created, again.run.id) == (True, False, first.run.id)
    redelivered = accept(store, SHA_B, before=SHA_A, delivery=first.run.delivery_id)
    assert redelivered.new_delivery is False and redelivered.run is None
    assert store.queue_depth() == 1


def test_pushes_of_branches_at_one_commit_racing_get_distinct_attempts(store: Store) -> None:
    """Two replicas used to read the same max(attempt): a unique violation, a 500, a lost delivery."""
    results = in_threads(
        8, lambda i: store.accept_push(f"race-{i}", "{}", new_run(f"agent/b{i}", SHA_A), 42, replaces=SHA_B)
    )
    assert all(result.created for result in results)
    assert sorted(result.run.attempt for result in results) == list(range(1, 9))


def test_re_requests_racing_each_make_a_new_attempt(store: Store) -> None:
    results = in_threads(8, lambda i: store.enqueue_next(new_run(sha=SHA_C, trigger="rerun")))
    assert [created for _, created in results] == [True] * 8
    assert sorted(run.attempt for run, _ in results) == list(range(1, 9))


def test_enqueue_next_attaches_a_replayed_delivery_and_reuses_the_commits_run(store: Store) -> None:
    first, created = store.enqueue_next(new_run(sha=SHA_A, delivery_id="d-1"))
    assert created and first.attempt == 1
    again, created = store.enqueue_next(new_run(sha=SHA_A, delivery_id="d-1"))
    assert (again.id, created) == (first.id, False), "a replay of one delivery makes no second run"
    pull, created = store.enqueue_next(new_run(sha=SHA_A, trigger="pull_request"), reuse=True)
    assert (pull.id, created) == (first.id, False)
    store.complete(first.id, None, "cancelled", None, status="cancelled")
    fresh, created = store.enqueue_next(new_run(sha=SHA_A, trigger="pull_request"), reuse=True)
    assert created and fresh.attempt == 2, "a cancelled run is no check: the PR head gets a new one"


def test_supersede_runs_stops_exactly_the_runs_seen(store: Store) -> None:
    seen = enqueued(store, sha=SHA_A)
    head = enqueued(store, sha=SHA_C)
    later = enqueued(store, sha=SHA_B)  # queued after the head was read: maybe newer, left alone
    assert [r.id for r in store.active_runs(REPO, "agent/fix")] == [seen.id, head.id, later.id]

    affected = store.supersede_runs([seen.id, head.id], by_sha=SHA_C)

    assert [r.id for r in affected] == [seen.id], "the head's own run is never superseded"
    assert [r.id for r in store.active_runs(REPO, "agent/fix")] == [head.id, later.id]
    assert store.supersede_runs([], by_sha=SHA_C) == []


def test_drafts_loopgate_made_are_data_that_outlives_the_process(url: str) -> None:
    with Store.open(url) as first:
        assert first.drafted_by_us(REPO, 7) is False
        first.mark_drafted(REPO, 7, "run-1")
        first.mark_drafted(REPO, 7, "run-2")  # drafted again: still one record
        first.mark_drafted("acme/web", 8, None)
    with Store.open(url) as restarted:
        assert restarted.drafted_by_us(REPO, 7) and restarted.drafted_by_us("acme/web", 8)
        assert not restarted.drafted_by_us(REPO, 8)
        assert restarted.clear_drafted(REPO, 7) is True
        assert restarted.clear_drafted(REPO, 7) is False
        assert restarted.drafted_by_us(REPO, 7) is False and restarted.drafted_by_us("acme/web", 8)


def test_a_deleted_branch_cancels_all_its_runs(store: Store) -> None:
    running = enqueued(store, sha=SHA_A)
    store.claim("w1")
    queued = enqueued(store, sha=SHA_A, check_name="another check")

    affected = store.cancel_branch(REPO, "agent/fix", reason="branch deleted")

    assert {run.id: (run.status, run.cancel_requested) for run in affected} == {
        running.id: (RunStatus.RUNNING, True),
        queued.id: (RunStatus.CANCELLED, False),
    }
    assert all(run.cancel_reason == "branch deleted" and run.superseded_by is None for run in affected)
    assert [run.id for run in store.in_flight()] == [running.id]


# Claiming


def test_one_running_run_per_branch(store: Store) -> None:
    first = enqueued(store, "agent/fix", SHA_A)
    second = enqueued(store, "agent/fix", SHA_A, check_name="another check")
    elsewhere = enqueued(store, "agent/other", SHA_B)
    same_branch_other_repo = enqueued(store, "agent/fix", SHA_A, repo="acme/web")

    claims = [store.claim(f"w{i}") for i in range(4)]

    expected = [first.id, elsewhere.id, same_branch_other_repo.id, None]
    assert [run.id if run else None for run in claims] == expected
    store.complete(first.id, "pass", "success", None)
    after = store.claim("w5")
    assert after is not None and after.id == second.id


def test_workers_racing_for_one_branch_start_one_run(store: Store) -> None:
    for i in range(12):
        enqueued(store, "agent/fix", check_name=f"check {i}")

    claims = in_threads(8, lambda i: store.claim(f"w{i}"))

    assert len([run for run in claims if run is not None]) == 1
    assert [run.status for run in store.in_flight()].count(RunStatus.RUNNING) == 1


def test_claim_takes_the_oldest_queued_run_and_a_requeued_run_keeps_its_place(store: Store) -> None:
    runs = [enqueued(store, f"agent/b{i}") for i in range(5)]

    first = store.claim("w1")
    assert first is not None and first.id == runs[0].id
    assert (first.status, first.claimed_by) == (RunStatus.RUNNING, "w1")
    assert first.claimed_at is not None and first.heartbeat_at == first.claimed_at

    requeued = store.requeue(first.id)
    assert (requeued.status, requeued.claimed_by, requeued.heartbeat_at) == (RunStatus.QUEUED, None, None)
    order = [store.claim("w2") for _ in range(6)]
    assert [run.id if run else None for run in order] == [run.id for run in runs] + [None]
    assert store.queue_depth() == 0


# What a run records


def test_ids_are_stored_the_moment_they_exist_and_read_back(store: Store) -> None:
    run = enqueued(store, pr_number=None)
    store.claim("w1")

    store.set_check_run(run.id, 2**40)  # GitHub ids outgrew 32 bits long ago
    store.set_comment(run.id, 2**35 + 1)
    store.set_pr(run.id, 17)
    store.set_routing_key(run.id, "k3y9abc1")

    stored = store.get(run.id)
    assert stored is not None
    assert (stored.check_run_id, stored.comment_id, stored.pr_number, stored.routing_key) == (
        2**40,
        2**35 + 1,
        17,
        "k3y9abc1",
    )
    assert (stored.base_ref, stored.clone_url, stored.installation_id, stored.delivery_id) == (
        "main",
        f"https://github.com/{REPO}.git",
        42,
        run.delivery_id,
    )
    assert stored.created_at.tzinfo is not None and stored.updated_at >= stored.created_at
    with pytest.raises(ValueError, match="routing key"):
        store.set_routing_key(run.id, "Not-DNS-Safe")
    with pytest.raises(UnknownRun):
        store.set_check_run("no-such-run", 1)


def test_complete_stores_the_verdict_and_evidence(store: Store) -> None:
    passing, failing = enqueued(store, "agent/a"), enqueued(store, "agent/b")
    evidence = evidence_samples.passing()
    store.claim("w1")

    done = store.complete(passing.id, "pass", "success", evidence.model_dump_json())
    store.complete(failing.id, "fail", "failure", None)

    assert (done.status, done.verdict, done.conclusion) == (RunStatus.COMPLETED, "pass", "success")
    assert done.finished_at is not None and not done.in_flight
    assert isinstance(done.evidence(), Evidence) and done.evidence() == evidence
    assert store.counts_by_verdict() == {"pass": 1, "fail": 1}
    with pytest.raises(ValueError):
        store.complete(passing.id, "maybe", "success", None)
    with pytest.raises(ValueError):
        store.complete(passing.id, "pass", "success", None, status="running")


def test_find_newest_first(store: Store) -> None:
    old = enqueued(store, "agent/fix", SHA_A)
    new = enqueued(store, "agent/fix", SHA_B)
    other = enqueued(store, "agent/other", SHA_A, repo="acme/web")

    assert [r.id for r in store.find()] == [other.id, new.id, old.id]
    assert [r.id for r in store.find(repo=REPO)] == [new.id, old.id]
    assert [r.id for r in store.find(sha=SHA_A[:7])] == [other.id, old.id]
    assert [r.id for r in store.find(repo=REPO, branch="agent/fix", sha=SHA_B)] == [new.id]
    assert [r.id for r in store.find(limit=1)] == [other.id]
    assert store.find(sha="a%") == [], "a LIKE wildcard in the SHA is matched literally"
    latest = store.latest_for_branch(REPO, "agent/fix")
    assert latest is not None and latest.id == new.id
    assert store.latest_for_branch(REPO, "agent/none") is None


# Restarts


def test_a_new_store_after_a_crash_sees_every_run_in_flight(url: str) -> None:
    crashed = Store.open(url)
    running = enqueued(crashed, "agent/a")
    done = enqueued(crashed, "agent/b")
    crashed.claim("w-dead")
    crashed.set_check_run(running.id, 99)
    crashed.claim("w-dead")
    crashed.complete(done.id, "pass", "success", None)
    queued = enqueued(crashed, "agent/c")
    # The process dies here: no close, no cleanup.

    with Store.open(url) as restarted:
        in_flight = {run.id: run for run in restarted.in_flight()}
        assert set(in_flight) == {running.id, queued.id}
        assert in_flight[running.id].status == RunStatus.RUNNING
        assert (in_flight[running.id].claimed_by, in_flight[running.id].check_run_id) == ("w-dead", 99)

        time.sleep(0.01)
        assert [run.id for run in restarted.stale_running(timedelta(0))] == [running.id]
        assert restarted.stale_running(timedelta(hours=1)) == []
        restarted.requeue(running.id)
        resumed = restarted.claim("w-new")
        assert resumed is not None and (resumed.id, resumed.check_run_id) == (running.id, 99)
    crashed.close()


def test_a_heartbeat_counts_only_for_the_worker_holding_the_claim(store: Store) -> None:
    run = enqueued(store)
    claimed = store.claim("w-old")
    assert claimed is not None
    time.sleep(0.01)
    assert store.heartbeat(run.id, "w-other") is True, "a stranger's heartbeat says: stop"
    assert store.get(run.id) == claimed, "and it changes nothing"
    assert store.heartbeat(run.id, "w-old") is False
    beating = store.get(run.id)
    assert beating is not None and claimed.heartbeat_at is not None
    assert beating.heartbeat_at is not None and beating.heartbeat_at > claimed.heartbeat_at


def test_a_stale_run_is_taken_over_once_and_its_old_worker_loses_it(store: Store) -> None:
    run = enqueued(store)
    store.claim("w-old")
    time.sleep(0.01)
    [stale] = store.stale_running(timedelta(0))

    taken = in_threads(3, lambda i: store.take_over(stale, f"reaper-{i}"))

    winners = [t for t in taken if t is not None]
    assert len(winners) == 1, "one reaper of three takes the run"
    reaper = winners[0].claimed_by
    assert reaper is not None and reaper.startswith("reaper-")
    assert store.holds(run.id, "w-old") is False and store.holds(run.id, reaper) is True
    assert store.heartbeat(run.id, "w-old") is True, "the old worker's heartbeat no longer counts"
    with pytest.raises(LostClaim):
        store.complete(run.id, "pass", "success", None, claimed_by="w-old")
    concluded = store.complete(run.id, "error", "failure", None, claimed_by=reaper)
    assert concluded.status == RunStatus.COMPLETED


def test_a_beat_after_the_stale_read_keeps_the_run_from_its_reaper(store: Store) -> None:
    run = enqueued(store)
    store.claim("w-slow")
    time.sleep(0.01)
    [stale] = store.stale_running(timedelta(0))
    assert store.heartbeat(run.id, "w-slow") is False
    assert store.take_over(stale, "reaper") is None
    assert store.holds(run.id, "w-slow") is True


def _report(target: int, body: str = "x", run_id: str | None = None) -> NewReport:
    return NewReport(REPO, 42, "check", target, json.dumps({"summary": body}), run_id)


def test_reports_join_the_outbox_with_the_conclusion_and_a_newer_one_replaces_a_pending_one(
    store: Store,
) -> None:
    run = enqueued(store)
    claimed = store.claim("w1")
    assert claimed is not None
    with pytest.raises(LostClaim):
        store.complete(run.id, "pass", "success", None, reports=[_report(7)], claimed_by="w2")
    assert store.reports() == [], "a lost claim writes no report"
    store.complete(run.id, "pass", "success", None, reports=[_report(7, "old", run.id)], claimed_by="w1")
    store.enqueue_reports([_report(7, "new"), _report(8)])

    reports = store.reports()
    assert [(r.target, json.loads(r.payload)["summary"], r.outcome) for r in reports] == [
        (7, "old", "replaced"),
        (7, "new", None),
        (8, "x", None),
    ]
    assert [r.target for r in store.reports(pending=True)] == [7, 8]


def test_reports_are_claimed_once_leased_and_retried_after_their_pause(store: Store) -> None:
    store.enqueue_reports([_report(n) for n in range(1, 7)])

    claims = in_threads(3, lambda _: store.claim_reports(timedelta(minutes=1), limit=2))

    ids = Counter(report.id for claim in claims for report in claim)
    assert sorted(ids) == [r.id for r in store.reports()] and set(ids.values()) == {1}
    assert store.claim_reports(timedelta(minutes=1)) == [], "leased reports wait for their lease"
    first, second = store.reports()[:2]
    store.report_delivered(first.id)
    store.report_failed(second.id, "GitHub answered 503", timedelta(0))
    [again] = store.claim_reports(timedelta(minutes=1))
    assert (again.id, again.attempts, again.last_error) == (second.id, 2, "GitHub answered 503")
    assert store.report_pending(first.id) is False and store.report_pending(second.id) is True


def test_the_comment_lock_serialises_a_pull_request_and_keeps_its_comment_id(store: Store) -> None:
    inside: list[int] = []
    overlaps: list[int] = []

    def upsert(index: int) -> int | None:
        with store.comment_lock(REPO, 5) as slot:
            inside.append(index)
            if len(inside) > 1:
                overlaps.append(index)
            time.sleep(0.05)
            if slot.comment_id is None:
                slot.comment_id = 1000 + index
            inside.remove(index)
            return slot.comment_id

    if store.backend == "sqlite":
        # SQLite serves one process; the adapter's in-process lock serialises there.
        assert upsert(0) == 1000 and upsert(1) == 1000
    else:
        ids = in_threads(4, upsert)
        assert overlaps == [], "two holders of one PR's lock at once"
        assert len(set(ids)) == 1, f"each caller must see the first caller's comment id: {ids}"
    assert store.comment_id(REPO, 5) in {1000, 1001, 1002, 1003}
    assert store.comment_id(REPO, 6) is None


def test_migrations_run_twice_are_a_noop_and_match_the_models(url: str) -> None:
    with Store.open(url) as first:
        run = enqueued(first)
    with Store.open(url) as second:
        assert second.get(run.id) == run
        with second._engine.connect() as connection:  # a look behind the API, for the schema only
            assert current(connection) == HEAD_REVISION
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "version_table": VERSION_TABLE}
            )
            assert compare_metadata(context, Base.metadata) == []


def test_replicas_starting_together_migrate_once(url: str) -> None:
    stores = in_threads(4, lambda _: Store.open(url))
    try:
        assert all(store.ping() for store in stores)
    finally:
        for store in stores:
            store.close()


# Errors


def test_an_unreachable_postgres_names_the_redacted_url() -> None:
    with pytest.raises(InfrastructureError) as caught:
        Store.open("postgresql://loopgate:s3cr3t@127.0.0.1:1/loopgate")
    message = str(caught.value)
    assert "postgresql+psycopg://loopgate:***@127.0.0.1:1/loopgate" in message
    assert "s3cr3t" not in message and "\n" not in message


def test_an_unusable_sqlite_path_and_unknown_schemes_are_infrastructure_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(InfrastructureError, match=r"file/loopgate\.db"):
        Store.open(f"sqlite:///{tmp_path / 'file' / 'loopgate.db'}")
    with pytest.raises(InfrastructureError, match="neither"):
        Store.open("mysql://root:pw@localhost/x")


def test_the_default_is_sqlite_in_the_state_dir(tmp_path: Path) -> None:
    with Store.open(state_dir=tmp_path) as store:
        assert store.backend == "sqlite" and store.url.endswith(f"{tmp_path}/loopgate.db")
    assert (tmp_path / "loopgate.db").exists()


def test_ping_is_false_when_the_database_is_gone() -> None:
    url = store_database.normalise("postgresql://postgres@127.0.0.1:1/nowhere")
    store = Store(store_database.create(url), url)
    assert store.ping() is False
    store.close()


# Many workers in many processes


def _claim_everything(url: str, name: str, threads: int, start: Any, results: Any) -> None:
    store = Store.open(url)
    claimed: list[tuple[str, str]] = []
    lock = threading.Lock()

    def work(worker: str) -> None:
        while True:
            run = store.claim(worker)
            if run is None:
                if store.queue_depth() == 0:
                    return
                continue  # every queued run was locked by someone else at that instant
            with lock:
                claimed.append((run.id, worker))

    start.wait(timeout=60)
    pool = [threading.Thread(target=work, args=(f"{name}-t{i}",)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    store.close()
    results.put(claimed)


@pytest.mark.timeout(180)
def test_workers_in_two_processes_claim_each_run_exactly_once(store: Store, url: str) -> None:
    runs = [enqueued(store, f"agent/b{i:03}") for i in range(200)]
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(2), context.Queue()
    processes = [
        context.Process(target=_claim_everything, args=(url, f"p{i}", 4, start, results)) for i in range(2)
    ]
    for process in processes:
        process.start()
    try:
        per_process = [results.get(timeout=90) for _ in processes]
    except queue.Empty:
        pytest.fail("a claiming process did not finish")
    finally:
        for process in processes:
            process.join(timeout=30)
    assert [process.exitcode for process in processes] == [0, 0]

    claims = [claim for claimed in per_process for claim in claimed]
    duplicates = [run_id for run_id, count in Counter(run_id for run_id, _ in claims).items() if count > 1]
    assert duplicates == []
    assert {run_id for run_id, _ in claims} == {run.id for run in runs}, "a run was lost"
    assert all(per_process), f"one process claimed nothing: {[len(c) for c in per_process]}"
    stored = {run.id: run.claimed_by for run in store.in_flight()}
    assert stored == dict(claims), "the store agrees with what each worker was told"
