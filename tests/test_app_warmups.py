"""Baseline warm-ups end to end: the real `loopgate serve` on loopback, the GitHub contract fake, real
git and the real local runtime. A push of the default branch starts its new head's baseline before any
agent run asks for it; the next run reuses it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.store import WarmupSnapshot, WarmupStatus
from tests.app_harness import REPO, AppServer, app_server
from tests.app_harness import push_payload as shop_push
from tests.conftest import SHOP, make_shop
from tests.github_fake import GitHubFake
from tests.gitrepo import GitRepo

DONE = (WarmupStatus.READY, WarmupStatus.FAILED, WarmupStatus.SKIPPED)
PATCH = SHOP / "changes" / "refactor-orders.patch"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> GitRepo:
    return make_shop(tmp_path_factory.mktemp("warm") / "shop", [], controls=False)


def push(fake: GitHubFake, server: AppServer, shop: GitRepo, branch: str, head: str, before: str) -> str:
    payload = shop_push(shop, branch, head, before, installation_id=fake.installation_id(REPO))
    answer = server.deliver("push", payload)
    assert answer.status_code == 202, answer.text
    status: str = answer.json()["status"]
    return status


def move_main(shop: GitRepo, name: str, text: str) -> tuple[str, str]:
    """(before, after): a commit on main."""
    before = shop.git("rev-parse", "main")
    shop.write(name, text)
    return before, shop.commit(f"team: {name}")


def wait_for_warmup(
    server: AppServer, done: Callable[[WarmupSnapshot], bool], timeout: float = 120
) -> WarmupSnapshot:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [w for w in server.store.warmups(repo=REPO) if done(w)]
        if found:
            return found[0]
        if server.process.poll() is not None:
            raise AssertionError(f"the server exited: {server.log.read_text()[-2000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no such warm-up in {timeout}s: {server.store.warmups(repo=REPO)}")


def ready_baselines(server: AppServer) -> set[str]:
    state = Path(server.env["LOOPGATE_STATE_DIR"])
    records = [json.loads(p.read_text()) for p in state.glob("envs/*/env.json")]
    return {r["base_sha"] for r in records if r["state"] == "ready"}


def stage(evidence: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in evidence["stages"] if s["name"] == name)
    return found


def test_a_push_to_main_warms_the_baseline_the_next_agent_run_reuses(
    shop: GitRepo, fake: GitHubFake, server: AppServer
) -> None:
    before, head = move_main(shop, "docs/WARM.md", "main moved\n")
    assert push(fake, server, shop, "main", head, before).endswith("; baseline warm-up queued")
    warm = wait_for_warmup(server, lambda w: w.head_sha == head and w.status in DONE)
    assert (warm.status, warm.warmed_sha) == (WarmupStatus.READY, head), warm
    assert warm.detail is not None and warm.detail.startswith(f"started {head[:12]} in ")
    assert head in ready_baselines(server)

    agent = shop.branch("agent/after-warm", patch=PATCH)
    push(fake, server, shop, "agent/after-warm", agent, "0" * 40)
    run = server.wait_for_run(agent)
    assert run["verdict"] == "pass", run
    evidence = server.api(f"/api/runs/{run['id']}").json()
    assert stage(evidence, "baseline")["detail"] == "reused a running baseline"
    # The warm-up is no check: main's head has only its own run's `neutral` one.
    assert {c.conclusion for c in fake.check_runs(REPO, head_sha=head)} <= {"neutral"}
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert 'loopgate_baseline_warmups_total{outcome="ready"} 1.0' in metrics
    fake.assert_no_violations()


def test_two_quick_pushes_to_main_warm_only_the_latest(
    shop: GitRepo, fake: GitHubFake, server: AppServer
) -> None:
    start, first = move_main(shop, "docs/ONE.md", "one\n")
    _, second = move_main(shop, "docs/TWO.md", "two\n")
    push(fake, server, shop, "main", first, start)
    push(fake, server, shop, "main", second, first)
    warm = wait_for_warmup(server, lambda w: w.head_sha == second and w.status in DONE)
    assert (warm.status, warm.warmed_sha, warm.pushes) == (WarmupStatus.READY, second, 2), warm
    assert not [w for w in server.store.warmups(repo=REPO) if w.head_sha == first]
    # Only the latest head runs, the older warm baseline retired (no run uses it).
    assert ready_baselines(server) == {second}


def test_a_queued_warm_up_survives_a_restart_and_waits_for_the_agent_run(
    shop: GitRepo, fake: GitHubFake, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    before, head = move_main(shop, "docs/RESTART.md", "restart\n")
    agent = shop.branch("agent/before-warm", patch=PATCH)
    with app_server(fake, state, workers=0) as first:
        assert push(fake, first, shop, "main", head, before).endswith("warm-up queued")
        push(fake, first, shop, "agent/before-warm", agent, "0" * 40)
        (queued,) = first.store.warmups(repo=REPO)
        assert queued.status == WarmupStatus.QUEUED
    with app_server(fake, state, workers=1) as second:
        run = second.wait_for_run(agent)
        warm = wait_for_warmup(second, lambda w: w.status in DONE)
        assert (warm.id, warm.status, warm.warmed_sha) == (queued.id, WarmupStatus.READY, head), warm
        # Agent runs first: the warm-up was taken after the waiting run, and found its baseline.
        taken = second.store.get(run["id"])
        assert taken is not None and taken.claimed_at is not None and warm.claimed_at is not None
        assert warm.claimed_at > taken.claimed_at
        assert warm.detail is not None and warm.detail.startswith(f"reused a running baseline of {head[:12]}")


def test_a_service_that_cannot_start_fails_the_warm_up_with_its_cause(
    shop: GitRepo, fake: GitHubFake, server: AppServer
) -> None:
    config = (shop.path / ".loopgate.yml").read_text()
    command = "python -m uvicorn payments_app:app --host 127.0.0.1 --port {port}"
    assert command in config
    broken = config.replace(command, "python -c 'raise SystemExit(3)'")
    before, head = move_main(shop, ".loopgate.yml", broken)
    push(fake, server, shop, "main", head, before)
    warm = wait_for_warmup(server, lambda w: w.head_sha == head and w.status in DONE)
    assert warm.status == WarmupStatus.FAILED and warm.detail, warm
    assert "\n" not in warm.detail and "payments" in warm.detail
    assert head not in ready_baselines(server), "what the failed start left is stopped"
    server.wait_for_run(head)
    assert [c.conclusion for c in fake.check_runs(REPO, head_sha=head)] == ["neutral"]


def test_a_broken_config_on_main_is_recorded_and_never_a_check(
    shop: GitRepo, fake: GitHubFake, server: AppServer
) -> None:
    """Runs last in the module: it leaves main's config broken."""
    before, bad = move_main(shop, ".loopgate.yml", "services: [not valid\n")
    push(fake, server, shop, "main", bad, before)
    warm = wait_for_warmup(server, lambda w: w.head_sha == bad and w.status in DONE)
    assert warm.status == WarmupStatus.FAILED and warm.detail, warm
    assert "\n" not in warm.detail and ".loopgate.yml" in warm.detail
    run = server.wait_for_run(bad)
    assert run["conclusion"] == "neutral", run
    assert [c.conclusion for c in fake.check_runs(REPO, head_sha=bad)] == ["neutral"]
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert 'loopgate_baseline_warmups_total{outcome="failed"} 2.0' in metrics
