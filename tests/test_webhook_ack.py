"""The webhook's acknowledgement over a real `loopgate serve` on loopback (workers off, so the rows
are exactly what the webhook wrote), on SQLite and PostgreSQL: the fast path for pushes and events
only recorded, and every hostile delivery answered with its status and one-line cause."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.github.signature import sign
from bot.store import RunStatus, Store
from tests.app_harness import free_port, wait_until_serving
from tests.conftest import LOOPGATE, scratch_database

SECRET = "ack-secret"
REPO = "acme/shop"
URL_PATH = "/webhooks/github"


@dataclass
class Served:
    url: str
    process: subprocess.Popen[bytes]
    store: Store

    def post(
        self,
        body: bytes,
        event: str = "push",
        delivery: str | None = None,
        *,
        secret: str | None = SECRET,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        sent = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4())}
        sent["Content-Type"] = "application/json"
        if secret is not None:
            sent["X-Hub-Signature-256"] = sign(body, secret)
        sent.update(headers or {})
        return httpx.post(self.url + URL_PATH, content=body, headers=sent, timeout=30)

    def deliver(self, event: str, payload: Any, delivery: str | None = None) -> httpx.Response:
        return self.post(json.dumps(payload).encode(), event, delivery)


@contextmanager
def serving(state: Path, database_url: str | None = None) -> Iterator[Served]:
    port = free_port()
    env = {
        **os.environ,
        "LOOPGATE_GITHUB_APP_ID": "1",
        "LOOPGATE_GITHUB_PRIVATE_KEY": "unused: workers are off",
        "LOOPGATE_WEBHOOK_SECRET": SECRET,
        "LOOPGATE_WORKERS": "0",
        "LOOPGATE_STATE_DIR": str(state),
        "LOOPGATE_GITHUB_API_URL": "http://127.0.0.1:9",
        **({"LOOPGATE_DATABASE_URL": database_url} if database_url else {}),
    }
    state.mkdir(parents=True, exist_ok=True)
    log = state / f"server-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(LOOPGATE), "serve", "--port", str(port)], env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url, process, log, timeout=60)
        with Store.open(database_url, state_dir=state) as store:
            yield Served(url, process, store)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
        return
    with scratch_database("loopgate_test_ack") as url:
        yield url


@pytest.fixture(scope="module")
def served(backend: str | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(tmp_path_factory.mktemp("ack"), backend) as running:
        yield running


def push(branch: str, after: str, before: str = "0" * 40, **changes: Any) -> dict[str, Any]:
    return {
        "ref": f"refs/heads/{branch}",
        "before": before,
        "after": after,
        "deleted": False,
        "repository": {"full_name": REPO, "clone_url": "https://github.com/acme/shop.git"},
        "installation": {"id": 4242},
        "commits": [],
        **changes,
    }


def sha() -> str:
    return (uuid.uuid4().hex * 2)[:40]


def test_a_push_queues_its_run_once_and_a_redelivery_is_a_no_op(served: Served) -> None:
    after = sha()
    answer = served.deliver("push", push("agent/fast", after), delivery="push-1")
    assert answer.status_code == 202 and answer.json()["status"].startswith("queued run "), answer.text
    run_id = answer.json()["status"].removeprefix("queued run ")
    (run,) = served.store.find(repo=REPO, sha=after)
    assert (run.id, run.branch, run.trigger, run.status, run.installation_id) == (
        run_id,
        "agent/fast",
        "push",
        RunStatus.QUEUED,
        4242,
    )
    stored = served.store.delivery("push-1")
    assert (
        stored is not None and stored.outcome == "processed" and json.loads(stored.payload)["after"] == after
    )
    again = served.deliver("push", push("agent/fast", after), delivery="push-1")
    assert again.status_code == 200 and "duplicate" in again.json()["status"]
    assert [r.id for r in served.store.find(repo=REPO, sha=after)] == [run_id]
    other = served.deliver("star", {"action": "created"}, delivery="push-1")
    assert other.status_code == 200, "the delivery id is the key, whatever the event"


def test_a_push_from_a_queued_runs_commit_supersedes_it_and_a_second_push_attaches(served: Served) -> None:
    first, second = sha(), sha()
    served.deliver("push", push("agent/moving", first))
    answer = served.deliver("push", push("agent/moving", second, before=first)).json()["status"]
    assert answer.startswith("queued run ") and answer.endswith("; superseded 1")
    (old,) = served.store.find(repo=REPO, sha=first)
    assert old.status == RunStatus.CANCELLED and old.superseded_by == second
    attached = served.deliver("push", push("agent/moving", second, before=first)).json()["status"]
    assert attached.startswith("attached to run ")


def pull_request(
    action: str, branch: str, head: str, head_repo: str = REPO, **changes: Any
) -> dict[str, Any]:
    return {
        "action": action,
        "number": 7,
        "pull_request": {
            "head": {"ref": branch, "sha": head, "repo": {"full_name": head_repo}},
            "base": {"ref": "main"},
        },
        "repository": {"full_name": REPO, "clone_url": "https://github.com/acme/shop.git"},
        "installation": {"id": 4242},
        **changes,
    }


def test_a_pull_request_head_attaches_to_its_commits_run_or_queues_one(served: Served) -> None:
    pushed, other = sha(), sha()
    run_id = served.deliver("push", push("agent/pr", pushed)).json()["status"].removeprefix("queued run ")
    opened = served.deliver("pull_request", pull_request("opened", "agent/pr", pushed), "pr-opened")
    assert opened.status_code == 202 and opened.json()["status"] == f"attached to run {run_id}"
    stored = served.store.delivery("pr-opened")
    assert stored is not None and (stored.event, stored.action, stored.outcome) == (
        "pull_request",
        "opened",
        "processed",
    )
    assert (
        served.deliver("pull_request", pull_request("opened", "agent/pr", pushed), "pr-opened").status_code
        == 200
    )
    queued = served.deliver("pull_request", pull_request("synchronize", "agent/pr", other)).json()["status"]
    assert queued.startswith("queued run ")
    (run,) = served.store.find(repo=REPO, sha=other)
    assert (run.id, run.branch, run.trigger, run.pr_number) == (
        queued.removeprefix("queued run "),
        "agent/pr",
        "pull_request",
        7,
    )
    forked = sha()
    assert (
        served.deliver("pull_request", pull_request("opened", "agent/pr", forked, "mallory/shop")).status_code
        == 202
    )
    assert [r.branch for r in served.store.find(repo=REPO, sha=forked)] == ["fork:agent/pr"]
    closed = served.deliver("pull_request", pull_request("closed", "agent/pr", other))
    assert closed.json()["status"] == "ignored" and len(served.store.find(repo=REPO, sha=other)) == 1
    bad = pull_request("opened", "agent/pr", sha(), number=[7])
    assert served.deliver("pull_request", bad, "pr-bad").status_code == 400
    assert "number" in _rejected(served, "pr-bad")


@pytest.mark.parametrize(
    ("event", "payload", "answer"),
    [
        ("star", {"action": "created", "repository": {"full_name": REPO}}, "ignored: event not used"),
        ("ping", {"zen": "Keep it logically awesome."}, "pong"),
        ("check_suite", {"action": "requested", "check_suite": None}, "ignored: the push starts the run"),
        ("push", push("agent/x", "1" * 40, ref="refs/tags/v1"), "ignored: a tag push"),
        ("push", push("agent/x", "0" * 40, before="2" * 40, deleted=True), "ignored: branch deletions"),
    ],
)
def test_events_only_recorded_are_answered_and_stored_processed(
    served: Served, event: str, payload: dict[str, Any], answer: str
) -> None:
    delivery = str(uuid.uuid4())
    runs_before = len(served.store.find(limit=10_000))
    response = served.deliver(event, payload, delivery)
    assert response.status_code == 202 and response.json()["status"].startswith(answer), response.text
    stored = served.store.delivery(delivery)
    assert stored is not None and stored.outcome == "processed" and stored.event == event
    assert len(served.store.find(limit=10_000)) == runs_before
    assert served.deliver(event, payload, delivery).status_code == 200


def _rejected(served: Served, delivery: str) -> str:
    stored = served.store.delivery(delivery)
    assert stored is not None and stored.outcome == "rejected" and stored.processed_at is not None
    assert stored.error and "\n" not in stored.error
    return stored.error


@pytest.mark.parametrize(
    ("body", "cause"),
    [
        (b"this is not json", "malformed JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"ref": "\xff"}', "not UTF-8"),
        (b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}", "nested deeper"),
        (json.dumps(push("agent/x", sha(), installation={"id": "4242"})).encode(), "installation"),
        (json.dumps(push("agent/x", "not a sha")).encode(), "after"),
    ],
)
def test_a_signed_body_loopgate_cannot_read_is_400_and_stored_rejected_with_its_cause(
    served: Served, body: bytes, cause: str
) -> None:
    delivery = str(uuid.uuid4())
    answer = served.post(body, "push", delivery)
    assert answer.status_code == 400 and cause in answer.json()["error"], answer.text
    assert cause in _rejected(served, delivery)
    assert served.post(body, "push", delivery).status_code in (200, 400), "never acted on when redelivered"
    assert served.store.unprocessed_deliveries() == []


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Hub-Signature-256": "sha256=" + "0" * 64},
        {"X-Hub-Signature-256": sign(b"another body", SECRET)},
        {"X-Hub-Signature-256": "sha1=abc"},
        {"X-Hub-Signature-256": ""},
    ],
)
def test_a_wrong_or_missing_signature_is_401_and_nothing_is_stored(
    served: Served, headers: dict[str, str]
) -> None:
    delivery = str(uuid.uuid4())
    body = json.dumps(push("agent/x", sha())).encode()
    answer = served.post(body, "push", delivery, headers=headers)
    assert answer.status_code == 401 and "X-Hub-Signature-256" in answer.json()["error"]
    assert served.store.delivery(delivery) is None
    unsigned = served.post(body, "push", delivery, secret=None)
    assert unsigned.status_code == 401 and served.store.delivery(delivery) is None


def test_headers_that_cannot_be_stored_are_400_and_a_get_is_405(served: Served) -> None:
    body = json.dumps(push("agent/x", sha())).encode()
    assert served.post(body, "push", "x" * 65).status_code == 400
    assert served.post(body, "Push!").status_code == 400
    missing = httpx.post(
        served.url + URL_PATH, content=body, headers={"X-Hub-Signature-256": sign(body, SECRET)}
    )
    assert missing.status_code == 400 and "X-GitHub-Delivery" in missing.json()["error"]
    assert httpx.get(served.url + URL_PATH).status_code == 405


def test_a_body_over_the_limit_is_413_whether_declared_or_streamed(served: Served) -> None:
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 26214401\r\n\r\n{"
        )
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    assert b" 413 " in status_line + b" ", status_line

    def chunks() -> Iterator[bytes]:
        yield b"{"
        for _ in range(26):
            yield b" " * (1024 * 1024)

    delivery = str(uuid.uuid4())
    headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": "sha256=00"}
    try:
        answer = httpx.post(served.url + URL_PATH, content=chunks(), headers=headers, timeout=60)
    except httpx.HTTPError:
        pass  # the server may close the connection while the rest is still being sent
    else:
        assert answer.status_code == 413 and "25 MB" in answer.json()["error"]
    assert served.store.delivery(delivery) is None


def test_metrics_count_what_the_webhook_answered(served: Served) -> None:
    served.deliver("push", push("agent/metrics", sha()))
    served.post(b"nope", "push")
    served.post(b"{}", "push", secret="wrong")
    metrics = httpx.get(served.url + "/metrics").text
    for line in (
        'loopgate_webhook_deliveries_total{event="push"}',
        'loopgate_webhook_rejected_total{reason="malformed"}',
        'loopgate_webhook_rejected_total{reason="signature"}',
        "loopgate_webhook_redeliveries_total",
        "loopgate_queue_depth",
    ):
        assert line in metrics, line


def test_every_acknowledged_delivery_survives_a_kill_and_a_restart(
    backend: str | None, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Concurrent pushes (so they commit in batches), the server killed at once after the last 2xx:
    every delivery answered 2xx is in the database with its run, and nothing is left to replay."""
    pushes = [(str(uuid.uuid4()), push(f"agent/k{i}", sha())) for i in range(60)]
    if backend is not None:  # a database of its own: the module's has other tests' rows
        backend = request.getfixturevalue("postgres_database")
    with serving(tmp_path / "state", backend) as running:
        with ThreadPoolExecutor(max_workers=12) as pool:
            answers = list(pool.map(lambda p: running.deliver("push", p[1], p[0]), pushes))
        running.process.send_signal(signal.SIGKILL)
        running.process.wait(timeout=30)
        assert [a.status_code for a in answers] == [202] * len(pushes)
    with serving(tmp_path / "state", backend) as restarted:
        store = restarted.store
        assert store.unprocessed_deliveries() == []
        runs = store.find(repo=REPO, limit=1000)
        assert sorted(r.delivery_id or "" for r in runs) == sorted(d for d, _ in pushes)
        assert all(store.delivery(d) is not None for d, _ in pushes)
        assert restarted.deliver("push", pushes[0][1], pushes[0][0]).status_code == 200
