"""Baseline warm-ups in the store (`bot.store.warmups`), on real SQLite files and a real PostgreSQL:
one queued per repository (a newer push folds in), runs first, one running per repository, the
acknowledgement's upsert and the ORM's agree, and conclusions only by the worker holding it."""

from __future__ import annotations

import socket
import subprocess
import uuid
from datetime import timedelta
from types import SimpleNamespace
from typing import cast

import pytest

from bot.store import NewWarmup, Store, WarmupStatus
from bot.store.acks import Acked, AckWriter, PushAck
from bot.worker import RunEnvironment
from bot.worker.pool import reap, recover
from tests.test_store import REPO, SHA_A, SHA_B, SHA_C, enqueued, new_run, pg_database, store, url

__all__ = ["pg_database", "store", "url"]  # fixtures, imported for pytest


def warmup(sha: str, repo: str = REPO) -> NewWarmup:
    return NewWarmup(repo, "main", sha, f"https://github.com/{repo}.git", 42, uuid.uuid4().hex)


def test_a_newer_push_folds_into_the_queued_warm_up(store: Store) -> None:
    store.enqueue_warmup(warmup(SHA_A))
    store.enqueue_warmup(warmup(SHA_B))
    store.enqueue_warmup(warmup(SHA_A, repo="acme/other"))
    (ours,) = store.warmups(repo=REPO)
    assert (ours.status, ours.head_sha, ours.pushes) == (WarmupStatus.QUEUED, SHA_B, 2)
    assert ours.created_at.tzinfo is not None and ours.updated_at >= ours.created_at
    assert len(store.warmups()) == 2
    # Once it runs, the next push queues a new one (warmed after it).
    assert store.claim_warmup("w1") is not None
    store.enqueue_warmup(warmup(SHA_C))
    statuses = sorted((w.status.value, w.head_sha) for w in store.warmups(repo=REPO))
    assert statuses == [("queued", SHA_C), ("running", SHA_B)]
    assert store.warmup_outcomes() == {"superseded": 1}


def test_runs_first_then_one_warm_up_per_repository_at_a_time(store: Store) -> None:
    run = enqueued(store)
    store.enqueue_warmup(warmup(SHA_A))
    assert store.claim_warmup("w1") is None, "a queued run is waiting"
    claimed = store.claim("w1")
    assert claimed is not None and claimed.id == run.id
    enqueued(store, branch="agent/fix")  # queued, but its branch is busy: not claimable
    first = store.claim_warmup("w2")
    assert first is not None and first.status == WarmupStatus.RUNNING and first.claimed_by == "w2"
    store.enqueue_warmup(warmup(SHA_B))
    assert store.claim_warmup("w3") is None, "one running warm-up per repository"
    assert store.finish_warmup(first.id, WarmupStatus.READY, "started", warmed_sha=SHA_A, claimed_by="w2")
    second = store.claim_warmup("w3")
    assert second is not None and second.head_sha == SHA_B
    assert store.claim_warmup("w4") is None


def test_only_the_holder_concludes_and_a_stale_one_is_found(store: Store) -> None:
    store.enqueue_warmup(warmup(SHA_A))
    claimed = store.claim_warmup("w1")
    assert claimed is not None
    assert store.warmup_heartbeat(claimed.id, "w1")
    assert not store.warmup_heartbeat(claimed.id, "someone-else")
    assert [w.id for w in store.stale_warmups(timedelta(seconds=-1))] == [claimed.id]
    assert store.stale_warmups(timedelta(hours=1)) == []
    assert not store.finish_warmup(claimed.id, WarmupStatus.READY, "x", claimed_by="someone-else")
    assert store.finish_warmup(claimed.id, WarmupStatus.FAILED, "interrupted", claimed_by="w1")
    assert not store.finish_warmup(claimed.id, WarmupStatus.READY, "late", claimed_by="w1")
    (done,) = store.warmups()
    assert (done.status, done.detail, done.finished_at is not None) == (
        WarmupStatus.FAILED,
        "interrupted",
        True,
    )
    with pytest.raises(ValueError):
        store.finish_warmup(claimed.id, WarmupStatus.QUEUED, None)
    store.enqueue_warmup(warmup(SHA_B))
    assert store.skip_queued_warmups("switched off") == 1
    assert store.warmup_outcomes() == {"failed": 1, "skipped": 1, "superseded": 0}
    assert store.running_warmups() == []


def test_the_acknowledgement_and_the_store_queue_the_same_warm_up(store: Store) -> None:
    writer: AckWriter = store.ack_writer()
    try:
        delivery = uuid.uuid4().hex
        run = new_run("main", sha=SHA_A, delivery_id=delivery)
        ack = PushAck(delivery, "{}", run, "0" * 40, warmup(SHA_A))
        (first,) = writer.write([ack])
        assert isinstance(first, Acked) and first.created
        (again,) = writer.write([ack])
        assert again == Acked(False), "a redelivery folds nothing in"
        second = new_run("main", sha=SHA_B, delivery_id=uuid.uuid4().hex)
        accepted = store.accept_push(
            str(second.delivery_id), "{}", second, 42, replaces=SHA_A, warmup=warmup(SHA_B)
        )
        assert accepted.created
    finally:
        writer.close()
    (queued,) = store.warmups()
    assert (queued.head_sha, queued.pushes, queued.status) == (SHA_B, 2, WarmupStatus.QUEUED)
    assert queued.created_at.tzinfo is not None


def test_recovery_and_the_reaper_conclude_a_warm_up_whose_worker_is_gone(store: Store) -> None:
    """A warm-up of a dead local process is `failed` at start; a silent one on any replica when reaped;
    queued ones wait for a worker."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    env = cast(
        RunEnvironment,
        SimpleNamespace(
            store=store, settings=SimpleNamespace(stale_after_s=3600), runtime=SimpleNamespace(gc=lambda: [])
        ),
    )
    store.enqueue_warmup(warmup(SHA_A))
    dead = store.claim_warmup(f"{socket.gethostname()}:{gone.pid}:0")
    store.enqueue_warmup(warmup(SHA_A, repo="acme/other"))
    silent = store.claim_warmup("elsewhere:1:0")
    store.enqueue_warmup(warmup(SHA_B))
    assert dead is not None and silent is not None
    recover(env)
    by_id = {w.id: w for w in store.warmups(limit=10)}
    assert (by_id[dead.id].status, by_id[dead.id].detail) == (
        WarmupStatus.FAILED,
        "interrupted: loopgate restarted while it ran",
    )
    assert by_id[silent.id].status == WarmupStatus.RUNNING, "another host's live warm-up is left alone"
    assert [w.head_sha for w in store.warmups() if w.status == WarmupStatus.QUEUED] == [SHA_B]
    reap(cast(RunEnvironment, SimpleNamespace(store=store, settings=SimpleNamespace(stale_after_s=-1))), "r")
    reaped = next(w for w in store.warmups(limit=10) if w.id == silent.id)
    assert (reaped.status, reaped.detail) == (
        WarmupStatus.FAILED,
        "interrupted: its worker stopped answering",
    )
