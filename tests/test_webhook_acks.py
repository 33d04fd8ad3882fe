"""The webhook's acknowledgement writer (`bot.store.acks`) on real SQLite files and a real PostgreSQL:
the same rows and rules as `Store.accept_push`, read back through the Store as any other part reads
them, batches that commit together and fail one by one."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from bot.config import InfrastructureError
from bot.server.ack_queue import AckQueue
from bot.store import RunStatus, Store
from bot.store.acks import Acked, AckWriter, PullAck, PushAck, RecordAck
from tests.test_store import REPO, SHA_A, SHA_B, SHA_C, in_threads, new_run, pg_database, store, url

__all__ = ["pg_database", "store", "url"]  # fixtures, imported for pytest


@pytest.fixture
def writer(store: Store) -> Iterator[AckWriter]:
    made = store.ack_writer()
    yield made
    made.close()


def push(sha: str, before: str, delivery: str | None = None, branch: str = "agent/fix") -> PushAck:
    delivery = delivery or uuid.uuid4().hex
    run = new_run(branch, sha=sha, delivery_id=delivery)
    return PushAck(delivery, '{"ref": "refs/heads/' + branch + '"}', run, before)


def one(writer: AckWriter, ack: PushAck | RecordAck) -> Acked:
    (result,) = writer.write([ack])
    assert isinstance(result, Acked), result
    return result


def test_a_recorded_delivery_is_processed_once_and_reads_back_as_the_store_wrote_it(
    store: Store, writer: AckWriter
) -> None:
    ack = RecordAck("d-1", "ping", None, REPO, 42, '{"zen": "é"}')
    assert one(writer, ack) == Acked(True)
    assert one(writer, ack) == Acked(False), "a redelivery is a no-op"
    stored = store.delivery("d-1")
    assert stored is not None
    assert (stored.event, stored.repo, stored.installation_id, stored.payload) == (
        "ping",
        REPO,
        42,
        '{"zen": "é"}',
    )
    assert stored.outcome == "processed" and stored.processed_at == stored.received_at
    assert stored.received_at.tzinfo is not None
    assert store.unprocessed_deliveries() == []
    assert store.record_delivery("d-1", "ping", None, REPO, 42, "{}") is False, "one key for both writers"


def test_a_push_queues_a_run_the_worker_can_claim(store: Store, writer: AckWriter) -> None:
    acked = one(writer, push(SHA_B, before=SHA_A, delivery="p-1"))
    assert acked.new_delivery and acked.created and acked.superseded == ()
    (run,) = store.find(repo=REPO)
    assert (run.id, run.head_sha, run.attempt, run.status, run.delivery_id) == (
        acked.run_id,
        SHA_B,
        1,
        RunStatus.QUEUED,
        "p-1",
    )
    assert run.cancel_requested is False and run.created_at.tzinfo is not None
    assert store.queue_depth() == 1
    claimed = store.claim("w1")
    assert claimed is not None and claimed.id == acked.run_id
    delivery = store.delivery("p-1")
    assert delivery is not None and delivery.outcome == "processed" and delivery.event == "push"


def test_a_push_supersedes_only_the_commit_it_moved_from(store: Store, writer: AckWriter) -> None:
    """As `test_store`'s test of `accept_push`: deliveries of A→B and B→C arrive as B→C, then A→B."""
    newer = one(writer, push(SHA_C, before=SHA_B))
    running = store.claim("w1")
    assert running is not None and running.id == newer.run_id
    late = one(writer, push(SHA_B, before=SHA_A))
    assert late.created and late.superseded == (), "an older push never cancels the newer run"
    assert store.cancel_requested(running.id) is False
    newest = one(writer, push(SHA_A, before=SHA_C))  # a force-push back to A is newer than C
    assert newest.superseded == (running.id,)
    assert store.cancel_requested(running.id) is True


def test_a_second_delivery_of_a_queued_sha_attaches_to_its_run(store: Store, writer: AckWriter) -> None:
    first = one(writer, push(SHA_B, before=SHA_A, delivery="p-1"))
    again = one(writer, push(SHA_B, before=SHA_A))
    assert (again.new_delivery, again.created, again.run_id) == (True, False, first.run_id)
    assert one(writer, push(SHA_B, before=SHA_A, delivery="p-1")) == Acked(False)
    assert store.queue_depth() == 1


def test_a_queued_run_superseded_is_cancelled_with_its_reason(store: Store, writer: AckWriter) -> None:
    first = one(writer, push(SHA_A, before=SHA_C))
    second = one(writer, push(SHA_B, before=SHA_A))
    assert second.superseded == (first.run_id,)
    (cancelled,) = store.find(repo=REPO, sha=SHA_A)
    assert (cancelled.status, cancelled.conclusion) == (RunStatus.CANCELLED, "cancelled")
    assert cancelled.superseded_by == SHA_B and cancelled.finished_at is not None
    assert store.queue_depth() == 1


def test_a_batch_commits_together_in_order_and_a_refused_ack_fails_only_itself(
    store: Store, writer: AckWriter
) -> None:
    taken = push(SHA_C, before=SHA_B, branch="agent/other")
    assert one(writer, taken).created
    clash = push(SHA_A, before=SHA_C, branch="agent/third")
    clash = PushAck(
        clash.delivery_id, clash.payload, new_run("agent/third", sha=SHA_A, id=taken.run.id), SHA_C
    )
    batch: list[Any] = [
        push(SHA_A, before=SHA_C),
        clash,  # the same run id again: the database refuses it
        push(SHA_B, before=SHA_A),  # sees the first in the same transaction, and supersedes it
        RecordAck("r-1", "ping", None, None, None, "{}"),
    ]
    first, refused, second, recorded = writer.write(batch)
    assert isinstance(refused, Exception) and not isinstance(refused, InfrastructureError)
    assert isinstance(first, Acked) and isinstance(second, Acked) and isinstance(recorded, Acked)
    assert second.superseded == (first.run_id,)
    assert recorded.new_delivery and store.delivery("r-1") is not None
    assert store.delivery(clash.delivery_id) is None, "nothing of a refused ack is kept"


def test_pushes_of_branches_at_one_commit_racing_get_distinct_attempts(store: Store) -> None:
    """Writers of several replicas at once: the key's lock gives each its own attempt."""
    writers = [store.ack_writer() for _ in range(6)]
    try:
        results = in_threads(
            6, lambda i: writers[i].write([push(SHA_A, before=SHA_B, branch=f"agent/b{i}")])[0]
        )
    finally:
        for made in writers:
            made.close()
    assert all(isinstance(r, Acked) and r.created for r in results), results
    assert sorted(run.attempt for run in store.find(repo=REPO, sha=SHA_A)) == list(range(1, 7))


def test_a_database_gone_is_an_infrastructure_error_for_each_ack(tmp_path: Any) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'gone.db'}") as opened:
        made = opened.ack_writer()
        assert isinstance(made.write([RecordAck("d-0", "ping", None, None, None, "{}")])[0], Acked)
        (tmp_path / "gone.db").unlink()
        (tmp_path / "gone.db").mkdir()  # the path is no database any more
        made.close()
        opened.close()  # the pool lets its connections go: a new one must be opened, and cannot be
        results = made.write([RecordAck(f"d-{i}", "ping", None, None, None, "{}") for i in (1, 2)])
        assert all(isinstance(r, InfrastructureError) for r in results), results
        assert "acknowledging a delivery failed" in str(results[0])
        made.close()


def test_the_writer_thread_commits_before_it_answers_and_refuses_once_closed(store: Store) -> None:
    """Many acks at once are written in batches and each answered; after `close`, a write is an
    infrastructure error (a 503, so GitHub may redeliver), never a request left waiting."""

    async def scenario() -> list[Acked]:
        acks = AckQueue(store.ack_writer())
        pushes = [push((uuid.uuid4().hex * 2)[:40], before=SHA_A, branch=f"agent/q{i}") for i in range(40)]
        answers = await asyncio.gather(*(acks.write(p) for p in pushes))
        acks.close()
        with pytest.raises(InfrastructureError, match="shutting down"):
            await acks.write(RecordAck("late", "ping", None, None, None, "{}"))
        return answers

    answers = asyncio.run(scenario())
    assert all(a.created for a in answers) and len({a.run_id for a in answers}) == 40
    assert store.queue_depth() == 40 and store.delivery("late") is None


def pull(sha: str, delivery: str | None = None, branch: str = "agent/fix") -> PullAck:
    delivery = delivery or uuid.uuid4().hex
    run = new_run(branch, sha=sha, delivery_id=delivery, trigger="pull_request", pr_number=7)
    return PullAck(delivery, "synchronize", "{}", run)


def test_a_pull_request_attaches_to_its_commits_run_unless_cancelled(store: Store, writer: AckWriter) -> None:
    """As `test_store`'s test of `enqueue_next(reuse=True)`."""
    pushed = one(writer, push(SHA_A, before=SHA_C))
    attached = one(writer, pull(SHA_A, delivery="pr-1"))
    assert (attached.new_delivery, attached.created, attached.run_id) == (True, False, pushed.run_id)
    assert one(writer, pull(SHA_A, delivery="pr-1")) == Acked(False)
    stored = store.delivery("pr-1")
    assert stored is not None and (stored.event, stored.action, stored.outcome) == (
        "pull_request",
        "synchronize",
        "processed",
    )
    store.complete(str(pushed.run_id), None, "cancelled", None, status="cancelled")
    fresh = one(writer, pull(SHA_A))
    assert fresh.created, "a cancelled run is no check: the PR head gets a new one"
    (run,) = [r for r in store.find(repo=REPO, sha=SHA_A) if r.id == fresh.run_id]
    assert (run.attempt, run.trigger, run.pr_number) == (2, "pull_request", 7)
    queued = one(writer, pull(SHA_B))
    assert queued.created and store.queue_depth() == 2
