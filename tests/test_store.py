"""The durable store on real SQLite files and a real PostgreSQL: idempotency, the queue, recovery.

PostgreSQL is the server at `LOOPGATE_TEST_POSTGRES_URL` (default: trust auth on 127.0.0.1:5432); this
module makes its own database there and drops it afterwards. Every test runs on both backends.
"""

from __future__ import annotations

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
from bot.store import NewRun, RunSnapshot, RunStatus, Store, UnknownRun
from bot.store import database as store_database
from bot.store.migrate import VERSION_TABLE, current
from bot.store.models import Base
from tests import evidence_samples

PG_URL = os.environ.get("LOOPGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REPO = "acme/shop"
SHA_A, SHA_B, SHA_C = "a" * 40, "b" * 40, "c" * 40
CHECK = "loopgate / sandbox verification"


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


def new_run(branch: str = "agent/fix", sha: str = SHA_A, **overrides: Any) -> NewRun:
    values: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "repo": REPO,
        "branch": branch,
        "head_sha": sha,
        "check_name": CHECK,
        "trigger": "push",
        "base_ref": "main",
        "clone_url": f"https://github.com/{REPO}.git",
        "installation_id": 42,
        "delivery_id": uuid.uuid4().hex,
    }
    return NewRun(**{**values, **overrides})


def enqueued(store: Store, branch: str = "agent/fix", sha: str = SHA_A, **overrides: Any) -> RunSnapshot:
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
    payload = '{"ref": "refs/heads/agent/fix",  "after": "%s", "z": 1, "a": [1, 2]}' % SHA_A

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
    first = enqueued(store)

    again, created = store.enqueue(new_run())  # a new id, the same key: GitHub told us twice
    assert (created, again.id) == (False, first.id)
    assert store.next_attempt(REPO, SHA_A, CHECK) == 2

    second = enqueued(store, attempt=2)
    assert second.attempt == 2
    assert store.next_attempt(REPO, SHA_A, CHECK) == 3
    assert store.next_attempt(REPO, SHA_B, CHECK) == 1

    with pytest.raises(ValueError, match="already taken"):
        store.enqueue(new_run(sha=SHA_C, id=first.id))


def test_concurrent_enqueues_of_one_key_make_one_run(store: Store) -> None:
    results = in_threads(8, lambda _: store.enqueue(new_run()))
    assert sorted(created for _, created in results) == [False] * 7 + [True]
    assert len({run.id for run, _ in results}) == 1
    assert store.queue_depth() == 1


def test_a_newer_push_supersedes_the_branch(store: Store) -> None:
    running = enqueued(store, sha=SHA_A)
    assert store.claim("w1") == store.get(running.id)
    queued = enqueued(store, sha=SHA_B)
    other_branch = enqueued(store, branch="agent/other", sha=SHA_B)

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
    assert store.heartbeat(running.id) is True, "the heartbeat tells the worker to stop"
    assert store.get(other_branch.id) == other_branch

    assert store.supersede(REPO, "agent/fix", by_sha=SHA_C) == [], "nothing left to supersede"

    newest = enqueued(store, sha=SHA_C)
    assert store.supersede(REPO, "agent/fix", by_sha=SHA_C) == [], "a push never supersedes its own SHA"
    assert store.claim("w2") == store.get(other_branch.id) | {}  # type: ignore[operator]
