"""Which deliveries queue a baseline warm-up, on every way into the store: the webhook's fast path, its
general path (a body too large to decode on the event loop), the start-up replay, and the switch."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.server.endpoint import FAST_BODY
from bot.server.webhooks import replay_unprocessed
from bot.store import NewWarmup, Store, WarmupStatus
from tests.intake_harness import INSTALLATION, REPO, Intake, intake_app, push

MAIN_1, MAIN_2, MAIN_3 = "1" * 40, "2" * 40, "3" * 40


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Intake]:
    with intake_app(tmp_path) as running:
        yield running


def main_push(
    after: str, before: str = "0" * 40, default: str | None = "main", **extra: Any
) -> dict[str, Any]:
    payload = push("main", after=after, before=before)
    payload["repository"]["default_branch"] = default
    return {**payload, **extra}


def test_a_push_of_the_default_branch_queues_one_warm_up_for_the_latest_head(app: Intake) -> None:
    first = app.deliver("push", main_push(MAIN_1))
    assert first.status_code == 202 and first.json()["status"].endswith("; baseline warm-up queued")
    second = app.deliver("push", main_push(MAIN_2, before=MAIN_1))
    assert second.json()["status"].endswith("; baseline warm-up queued")
    (queued,) = app.store.warmups()
    assert (queued.repo, queued.branch, queued.head_sha, queued.pushes) == (REPO, "main", MAIN_2, 2)
    assert (queued.status, queued.installation_id) == (WarmupStatus.QUEUED, INSTALLATION)
    # The push still queues its run, as every branch's push does.
    assert {run.head_sha for run in app.store.find(repo=REPO, branch="main")} == {MAIN_1, MAIN_2}


@pytest.mark.parametrize(
    "payload",
    [
        push("agent/fix", after=MAIN_1),
        main_push(MAIN_1, default="trunk"),
        main_push(MAIN_1, default=None),
        main_push(MAIN_1, installation=None),
        main_push("0" * 40, before=MAIN_1, deleted=True),
    ],
    ids=["agent-branch", "not-the-default", "no-default-named", "no-installation", "deletion"],
)
def test_other_pushes_warm_nothing(app: Intake, payload: dict[str, Any]) -> None:
    answer = app.deliver("push", payload)
    assert answer.status_code == 202 and "warm-up" not in answer.json()["status"], answer.text
    assert app.store.warmups() == []


def test_the_general_path_and_the_replay_queue_the_same_warm_up(app: Intake) -> None:
    large = main_push(MAIN_1, padding="x" * (FAST_BODY + 1))
    answer = app.deliver("push", large)
    assert answer.status_code == 202 and answer.json()["status"].endswith("; baseline warm-up queued")
    app.store.record_delivery("crashed", "push", None, REPO, INSTALLATION, json.dumps(main_push(MAIN_2)))
    assert replay_unprocessed(app.store, app.new_run_id) == 1
    (queued,) = app.store.warmups()
    assert (queued.head_sha, queued.pushes, queued.status) == (MAIN_2, 2, WarmupStatus.QUEUED)


def test_switched_off_no_push_warms_and_queued_ones_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store.open(state_dir=tmp_path) as store:
        store.enqueue_warmup(NewWarmup(REPO, "main", MAIN_3, "https://github.com/acme/shop.git", 1, "d"))
    monkeypatch.setenv("LOOPGATE_WARM_BASELINES", "false")
    with intake_app(tmp_path) as app:
        (skipped,) = app.store.warmups()
        assert (skipped.status, skipped.detail) == (WarmupStatus.SKIPPED, "LOOPGATE_WARM_BASELINES is off")
        answer = app.deliver("push", main_push(MAIN_1))
        assert answer.status_code == 202 and "warm-up" not in answer.json()["status"]
        assert len(app.store.warmups()) == 1
        metrics = app.client.get("/metrics").text
        assert 'loopgate_baseline_warmups_total{outcome="skipped"} 1.0' in metrics
