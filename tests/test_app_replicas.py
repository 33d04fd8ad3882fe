"""Replicas sharing one PostgreSQL, against the GitHub contract fake over HTTP: one sticky comment per
PR whoever refreshes it, reports that reach GitHub after it refused them (and after a restart), silent
runs reaped by another replica, and no check left `in_progress` by an interrupted run.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from github.Issue import Issue

from bot.config import AppSettings
from bot.evidence import Verdict
from bot.github.client import GitHubApp
from bot.github.gate import CHECK_NAME
from bot.github.publish import CheckReport
from bot.report import COMMENT_MARKER
from bot.runtimes.protocol import Runtime
from bot.store import NewRun, RunSnapshot, Store
from bot.worker import Mirrors, RunEnvironment, WorkerPool
from bot.worker.outbox import Outbox, check_report
from bot.worker.pool import conclude_interrupted
from tests.conftest import TINY_CONFIG
from tests.github_fake import CheckRun, GitHubFake
from tests.gitrepo import GitRepo

REPO = "acme/tiny"
BRANCH = "agent/change"
RACES = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> GitRepo:
    repo = GitRepo.init(tmp_path_factory.mktemp("replicas") / "tiny", {".loopgate.yml": TINY_CONFIG})
    repo.branch(BRANCH, {"README.md": "a change\n"})
    for race in range(RACES):
        repo.branch(f"agent/race-{race}", {"README.md": f"race {race}\n"}, start="main")
    return repo


@pytest.fixture(scope="module")
def fake(tiny: GitRepo) -> Iterator[GitHubFake]:
    with GitHubFake.running(repos={REPO: tiny.path}) as running:
        yield running


def settings(fake: GitHubFake, state_dir: Path, **intervals: Any) -> AppSettings:
    return AppSettings(
        github_app_id=fake.app_id,
        github_private_key=fake.private_key_pem,
        github_api_url=fake.url,
        webhook_secret="secret",
        state_dir=state_dir,
        github_throttle=False,
        **intervals,
    )


def github(fake: GitHubFake) -> GitHubApp:
    """No retries inside a request: the outbox's own retries are under test."""
    return GitHubApp(fake.app_id, fake.private_key_pem, fake.url, throttle=False, retries=0)


def environment(store: Store, fake: GitHubFake, state_dir: Path, **intervals: float) -> RunEnvironment:
    """A replica without a runtime: what it runs here (reaper, outbox) verifies nothing."""
    return RunEnvironment(
        settings(fake, state_dir, **intervals),
        store,
        github(fake),
        cast(Runtime, None),
        Mirrors(state_dir / "mirrors"),
    )


def running_run(store: Store, fake: GitHubFake, tiny: GitRepo, worker: str) -> RunSnapshot:
    """A run claimed by `worker`, its check `in_progress` on GitHub, as a worker leaves it mid-run."""
    head = tiny.git("rev-parse", BRANCH)
    run, _ = store.enqueue_next(
        NewRun(
            id=f"run-{time.monotonic_ns()}",
            repo=REPO,
            branch=BRANCH,
            head_sha=head,
            check_name=CHECK_NAME,
            trigger="push",
            base_ref="main",
            installation_id=fake.installation_id(REPO),
        )
    )
    claimed = store.claim(worker)
    assert claimed is not None and claimed.id == run.id
    client = github(fake).repo(REPO, run.installation_id)
    check_id = client.create_check(CHECK_NAME, head, run.id, "https://loopgate.example/runs/x")
    client.update_check(check_id, status="in_progress")
    return store.set_check_run(run.id, check_id)


def check(fake: GitHubFake, check_id: int | None) -> CheckRun:
    (found,) = [c for c in fake.check_runs(REPO) if c.id == check_id]
    return found


# The sticky comment


def _refresh(
    url: str, fake_url: str, app_id: int, key: str, numbers: list[int], start: Any, out: Any, index: int
) -> None:
    """One replica refreshing each PR of `numbers`, released together with the other each time.
    GitHub takes its time to create a comment here, so an unserialised pair would both create one."""
    create = Issue.create_comment

    def slow_create(issue: Issue, body: str) -> Any:
        time.sleep(0.3)
        return create(issue, body)

    Issue.create_comment = slow_create  # type: ignore[method-assign,assignment]
    with Store.open(url) as store:
        client = GitHubApp(app_id, key, fake_url, throttle=False).repo(REPO)
        client.app.bot_login()
        for number in numbers:
            start.wait(timeout=60)
            body = f"{COMMENT_MARKER}\nrefreshed by replica {index}"
            out.put((number, client.upsert_comment(number, body, COMMENT_MARKER, None, store.comment_lock)))


def test_two_replicas_refreshing_one_pr_at_once_post_one_comment(
    fake: GitHubFake, postgres_database: str
) -> None:
    Store.open(postgres_database).close()  # migrated once, before the race
    numbers = [fake.open_pull(REPO, f"agent/race-{race}").number for race in range(RACES)]
    spawn = multiprocessing.get_context("spawn")
    start, out = spawn.Barrier(2), spawn.Queue()
    args = (postgres_database, fake.url, fake.app_id, fake.private_key_pem, numbers, start, out)
    replicas = [spawn.Process(target=_refresh, args=(*args, index)) for index in (0, 1)]
    for replica in replicas:
        replica.start()
    answers = [out.get(timeout=60) for _ in range(2 * RACES)]
    for replica in replicas:
        replica.join(timeout=30)
        assert replica.exitcode == 0

    with Store.open(postgres_database) as store:
        for number in numbers:
            comments = fake.comments(REPO, number)
            assert len(comments) == 1, f"PR #{number} got {len(comments)} sticky comments"
            assert [i for n, i in answers if n == number] == [comments[0].id] * 2
            assert store.comment_id(REPO, number) == comments[0].id
            fake.close_pull(REPO, number)
    fake.assert_no_violations()


# The outbox


def test_a_report_github_refuses_is_delivered_later_and_after_a_restart(
    fake: GitHubFake, tiny: GitRepo, postgres_database: str, tmp_path: Path
) -> None:
    intervals = {"outbox_backoff_s": 0.3, "outbox_backoff_max_s": 1.0}
    store = Store.open(postgres_database)
    run = running_run(store, fake, tiny, "replica-a:0")
    assert run.check_run_id is not None
    report = CheckReport.completed(run.check_run_id, "success", "verified", "all good")
    store.complete(
        run.id, "pass", "success", None, reports=[check_report(run, report)], claimed_by="replica-a:0"
    )
    fake.fail_next("checks/update", 2)
    outbox = Outbox(store, github(fake), settings(fake, tmp_path, **intervals))

    assert outbox.deliver_due() == 0, "GitHub answered 503"
    assert outbox.deliver_due() == 0, "and the report waits for its pause"
    assert check(fake, run.check_run_id).status == "in_progress"
    time.sleep(0.4)
    assert outbox.deliver_due() == 0, "503 again"
    store.close()  # the replica stops; another starts

    with Store.open(postgres_database) as restarted:
        [pending] = restarted.reports(pending=True)
        assert pending.attempts == 2 and "503" in (pending.last_error or "")
        outbox = Outbox(restarted, github(fake), settings(fake, tmp_path, **intervals))
        deadline = time.monotonic() + 5
        while outbox.deliver_due() == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert restarted.reports(pending=True) == []
        [delivered] = restarted.reports()
        assert (delivered.outcome, delivered.attempts) == ("delivered", 3)
    done = check(fake, run.check_run_id)
    assert (done.status, done.conclusion) == ("completed", "success")
    fake.assert_no_violations()


def test_an_interrupted_run_never_leaves_its_check_in_progress(
    fake: GitHubFake, tiny: GitRepo, postgres_database: str, tmp_path: Path
) -> None:
    store = Store.open(postgres_database)
    env = environment(store, fake, tmp_path, outbox_backoff_s=0.2, outbox_backoff_max_s=0.5)
    run = running_run(store, fake, tiny, "replica-a:0")
    fake.fail_next("pulls/list", 1)  # gating cannot read the PR
    fake.fail_next("checks/update", 1)  # nor the check be concluded, at first

    conclude_interrupted(env, run, "the worker crashed")

    concluded = store.get(run.id)
    assert concluded is not None and (concluded.status, concluded.verdict) == ("completed", Verdict.ERROR)
    assert check(fake, run.check_run_id).status == "in_progress", "GitHub refused the conclusion"
    pool = WorkerPool(env, count=0)
    pool.start()  # the replica's dispatcher retries it
    try:
        fake.wait_until(lambda: check(fake, run.check_run_id).status == "completed", timeout=10)
    finally:
        pool.stop()
        store.close()
    done = check(fake, run.check_run_id)
    assert done.conclusion == "failure" and "the worker crashed" in str(done.output)
    fake.assert_no_violations()


# Reaping


def test_another_replica_reaps_a_run_whose_heartbeat_stopped(
    fake: GitHubFake, tiny: GitRepo, postgres_database: str, tmp_path: Path
) -> None:
    worker = "replica-a:0"
    replica_a = Store.open(postgres_database)
    run = running_run(replica_a, fake, tiny, worker)
    replica_b = Store.open(postgres_database)
    env_b = environment(replica_b, fake, tmp_path, stale_after_s=0.8, reap_every_s=0.2, outbox_poll_s=0.2)
    beating = threading.Event()
    beating.set()

    def heartbeat() -> None:
        while beating.is_set():
            replica_a.heartbeat(run.id, worker)
            time.sleep(0.1)

    beats = threading.Thread(target=heartbeat, daemon=True)
    beats.start()
    reaper = WorkerPool(env_b, count=0)
    reaper.start()
    try:
        time.sleep(2.0)
        alive = replica_b.get(run.id)
        assert alive is not None and alive.status == "running", "a run that beats is never reaped"
        assert alive.claimed_by == worker
        beating.clear()  # replica A hangs
        beats.join()
        fake.wait_until(lambda: check(fake, run.check_run_id).status == "completed", timeout=10)
    finally:
        reaper.stop()
    reaped = replica_b.get(run.id)
    assert reaped is not None and reaped.status == "completed" and reaped.verdict == Verdict.ERROR
    assert reaped.claimed_by is not None and reaped.claimed_by.endswith(":reaper")
    assert replica_a.heartbeat(run.id, worker) is True, "replica A's worker learns to stop"
    assert replica_a.get(run.id) == reaped, "and its heartbeat changed nothing"
    assert check(fake, run.check_run_id).conclusion == "failure"
    replica_a.close()
    replica_b.close()
    fake.assert_no_violations()
