"""Webhook intake, case by case, from GitHub issue #9: each delivery that used to get a 500 (or to
stop `loopgate serve` from starting again) gets a 4xx, is stored as rejected, and never replayed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.server.intake import MAX_BODY, declared_too_large
from bot.server.webhooks import replay_unprocessed
from tests.intake_harness import API_TOKEN, INSTALLATION, REPO, Intake, example, intake_app, push


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Intake]:
    with intake_app(tmp_path) as running:
        yield running


def rejected(app: Intake, delivery: str) -> str:
    stored = app.store.delivery(delivery)
    assert stored is not None and stored.outcome == "rejected" and stored.processed_at is not None
    assert stored.error
    return stored.error


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("installation.id", None),
        ("installation.id", "4242"),
        ("installation.id", 1e30),
        ("installation.id", 2**70),
        ("after", ["a" * 40]),
        ("ref", "refs/heads/agent/\ud800"),
        ("ref", "refs/heads/agent/\x00x"),
        ("repository.full_name", 7),
        ("repository", None),
    ],
)
def test_a_signed_push_of_the_wrong_shape_is_rejected_and_stored(app: Intake, field: str, value: Any) -> None:
    payload = push()
    outer, _, inner = field.partition(".")
    if inner:
        payload[outer][inner] = value
    else:
        payload[outer] = value
    answer = app.deliver("push", payload, delivery=f"bad-{field}")
    assert answer.status_code == 400, answer.text
    assert field.split(".")[0] in rejected(app, f"bad-{field}")
    assert app.store.find(repo=REPO) == []


def test_fields_loopgate_does_not_read_may_be_anything(app: Intake) -> None:
    payload = push()
    payload["head_commit"] = "not an object"
    payload["commits"] = None
    assert app.deliver("push", payload).status_code == 202
    assert [run.head_sha for run in app.store.find(repo=REPO)] == [payload["after"]]


def test_a_pull_request_number_that_is_a_list_and_a_null_check_run_are_rejected(app: Intake) -> None:
    pull = example("pull_request", "opened", head_ref="feature/x")
    pull["number"] = [pull["number"]]
    assert app.deliver("pull_request", pull, delivery="pr-list").status_code == 400
    assert "number" in rejected(app, "pr-list")
    rerun = example("check_run", "rerequested")
    rerun["check_run"] = None
    assert app.deliver("check_run", rerun, delivery="null-check").status_code == 400
    assert "check_run" in rejected(app, "null-check")


def test_json_nested_100000_deep_is_refused_and_stored_safely(app: Intake) -> None:
    deep = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert app.post(deep, delivery="deep").status_code == 400
    assert "nested deeper" in rejected(app, "deep")
    shallow_but_over = json.dumps({"a": json.loads("[" * 70 + "]" * 70)}).encode()
    assert app.post(shallow_but_over, delivery="deep-70").status_code == 400


def test_bodies_that_are_not_utf8_or_hold_nul_are_stored_safely(app: Intake) -> None:
    assert app.post(b'{"ref": "\xed\xa0\x80"}', delivery="surrogate-bytes").status_code == 400
    assert "UTF-8" in rejected(app, "surrogate-bytes")
    assert app.post(b'{"ref": "a\x00b"}', delivery="nul").status_code == 400
    stored = app.store.delivery("nul")
    assert stored is not None and "\x00" not in stored.payload


@pytest.mark.parametrize("signature", ["sha256=é", "sha256=\u2603", "ünïcode", "sha256=" + "ff" * 40])
def test_a_non_ascii_or_wrong_signature_is_401_and_nothing_is_stored(app: Intake, signature: str) -> None:
    header = signature.encode("utf-8") if not signature.isascii() else signature
    answer = app.post(
        json.dumps(push()).encode(), delivery="unsigned", headers={"X-Hub-Signature-256": header}
    )
    assert answer.status_code == 401
    assert app.store.delivery("unsigned") is None


def test_non_ascii_tokens_on_the_runs_api_are_401(app: Intake) -> None:
    assert app.client.get("/runs/abc?token=%C3%A9%E2%98%83").status_code == 401
    assert app.client.get("/api/runs/abc", params={"token": "\u2603"}).status_code == 401
    for bearer in ("Bearer é".encode(), "Bearer \u2603".encode()):
        assert app.client.get("/api/runs", headers={"Authorization": bearer}).status_code == 401
    ok = {"Authorization": f"Bearer {API_TOKEN}"}
    assert app.client.get("/api/runs", params={"repo": "a\x00b"}, headers=ok).status_code == 400
    assert app.client.get("/api/runs", params={"repo": REPO}, headers=ok).json() == []


def test_headers_and_sizes_that_cannot_be_stored_are_refused(app: Intake) -> None:
    body = json.dumps(push()).encode()
    assert app.post(body, delivery="x" * 65).status_code == 400
    assert app.post(body, event="push" * 20).status_code == 400
    assert [declared_too_large(v) for v in ("²", "١٢", "", " 12 ", str(MAX_BODY + 1))] == [False] * 4 + [True]


def test_pushes_of_any_branch_are_queued_but_tags_and_deletions_are_not(app: Intake) -> None:
    assert "queued run" in app.deliver("push", push("feature/person", after="1" * 40)).json()["status"]
    assert "queued run" in app.deliver("push", push("agent/x", after="2" * 40)).json()["status"]
    tag = push(after="3" * 40)
    tag["ref"] = "refs/tags/v1"
    assert "tag push" in app.deliver("push", tag).json()["status"]
    gone = push("feature/person", after="0" * 40, before="1" * 40)
    gone["deleted"] = True
    assert "ignored" in app.deliver("push", gone).json()["status"]
    assert sorted(run.branch for run in app.store.find(repo=REPO)) == ["agent/x", "feature/person"]


def test_a_pull_request_head_gets_a_run_and_attaches_to_its_commits_run(app: Intake) -> None:
    sha = "4" * 40
    app.deliver("push", push("feature/person", after=sha))
    opened = example("pull_request", "opened", head_ref="feature/person", head_sha=sha)
    assert "attached to run" in app.deliver("pull_request", opened).json()["status"]
    other = example("pull_request", "synchronize", head_ref="feature/new", head_sha="5" * 40, after="5" * 40)
    assert "queued run" in app.deliver("pull_request", other).json()["status"]
    (run,) = app.store.find(repo=REPO, sha="5" * 40)
    assert (run.branch, run.trigger, run.pr_number) == ("feature/new", "pull_request", other["number"])


def test_a_pull_request_from_a_fork_runs_under_a_name_no_branch_can_have(app: Intake) -> None:
    pull = example("pull_request", "opened", head_ref="agent/x", head_sha="6" * 40)
    pull["pull_request"]["head"]["repo"] = {"full_name": "mallory/shop"}
    assert app.deliver("pull_request", pull).status_code == 202
    (run,) = app.store.find(repo=REPO, sha="6" * 40)
    assert run.branch == "fork:agent/x"


def test_re_requests_make_new_attempts_and_a_redelivery_is_a_noop(app: Intake) -> None:
    sha = "7" * 40
    app.deliver("push", push("agent/x", after=sha), delivery="p-1")
    assert app.deliver("push", push("agent/x", after=sha), delivery="p-1").status_code == 200
    suite = example("check_suite", "rerequested", head_sha=sha, head_ref="agent/x")
    for number in range(2):
        assert app.deliver("check_suite", suite, delivery=f"rerun-{number}").status_code == 202
    assert sorted(run.attempt for run in app.store.find(repo=REPO, sha=sha)) == [1, 2, 3]


def test_start_up_replay_marks_bad_deliveries_failed_and_goes_on(app: Intake) -> None:
    good = json.dumps(push("agent/x", after="8" * 40))
    broken = json.loads(good)
    broken["installation"]["id"] = "not a number"
    store = app.store
    # As a process before this fix stored them: unparsed, then died.
    store.record_delivery("old-bad", "push", None, REPO, None, json.dumps(broken))
    store.record_delivery("old-deep", "push", None, REPO, None, "[" * 5000 + "]" * 5000)
    store.record_delivery("old-junk", "pull_request", "opened", REPO, None, "{not json")
    store.record_delivery("old-good", "push", None, REPO, INSTALLATION, good)
    assert replay_unprocessed(store, app.new_run_id) == 4
    outcomes = {d: store.delivery(d) for d in ("old-bad", "old-deep", "old-junk", "old-good")}
    assert {d: s.outcome for d, s in outcomes.items() if s} == {
        "old-bad": "failed",
        "old-deep": "failed",
        "old-junk": "failed",
        "old-good": "processed",
    }
    assert "installation" in (outcomes["old-bad"].error or "")  # type: ignore[union-attr]
    assert [run.head_sha for run in store.find(repo=REPO)] == ["8" * 40]
    assert store.unprocessed_deliveries() == []
