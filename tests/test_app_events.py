"""Each GitHub event acts once, as DESIGN says: re-runs, deletions, PR events, installations,
oversized bodies, and the operational endpoints."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.app_harness import REPO, SECRET, AppServer, adapted, app_server
from tests.app_harness import push_payload as shop_push
from tests.conftest import SHOP, make_shop, run_cli
from tests.github_fake import GitHubFake, webhooks
from tests.gitrepo import GitRepo

CHECK = "loopgate / sandbox verification"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> GitRepo:
    repo = make_shop(
        tmp_path_factory.mktemp("events") / "shop", ["refactor-orders", "contract-break"], controls=False
    )
    # Fails in a second (its fork exits at start): for tests of what re-runs do, not of why runs fail.
    orders = (repo.path / "services/orders/orders_app.py").read_text()
    repo.branch("agent/orders-crash", {"services/orders/orders_app.py": orders + "\nraise SystemExit(3)\n"})
    return repo


def run_branch(fake: GitHubFake, shop: GitRepo, server: AppServer, branch: str) -> dict[str, Any]:
    head = shop.git("rev-parse", branch)
    server.deliver("push", shop_push(shop, branch, head, installation_id=fake.installation_id(REPO)))
    return server.wait_for_run(head)


def test_rerequested_check_and_rerun_button_start_new_attempts(
    shop: GitRepo, fake: GitHubFake, server: AppServer
) -> None:
    first = run_branch(fake, shop, server, "agent/orders-crash")
    head = first["head_sha"]
    check = next(c for c in fake.check_runs(REPO, head_sha=head) if c.name == CHECK)
    rerequest = adapted(
        fake,
        "check_run",
        "rerequested",
        head_sha=head,
        head_ref="agent/orders-crash",
        check_run_id=check.id,
        check_name=CHECK,
        app_id=fake.app_id,
    )
    assert server.deliver("check_run", rerequest).status_code == 202
    button = adapted(
        fake,
        "check_run",
        "requested_action",
        head_sha=head,
        head_ref="agent/orders-crash",
        check_run_id=check.id,
        check_name=CHECK,
        app_id=fake.app_id,
        overrides={"requested_action": {"identifier": "rerun"}},
    )
    assert server.deliver("check_run", button).status_code == 202
    end = time.monotonic() + 180
    done: list[dict[str, Any]] = []
    while len(done) < 3 and time.monotonic() < end:
        time.sleep(0.3)
        done = [r for r in server.runs(sha=head) if r["status"] == "completed"]
    assert sorted(r["attempt"] for r in done) == [1, 2, 3], server.runs(sha=head)
    assert [r["verdict"] for r in done] == ["fail"] * 3, done
    fake.assert_no_violations()


def test_check_suite_requested_is_ignored(shop: GitRepo, fake: GitHubFake, server: AppServer) -> None:
    head = shop.git("rev-parse", "agent/refactor-orders")
    before = len(server.runs(sha=head))
    payload = adapted(fake, "check_suite", "requested", head_sha=head, head_ref="agent/refactor-orders")
    answer = server.deliver("check_suite", payload)
    assert answer.status_code == 202 and "the push starts the run" in answer.json()["status"]
    assert len(server.runs(sha=head)) == before


def test_deleted_branch_cancels_its_queued_run(
    shop: GitRepo, fake: GitHubFake, tmp_path: Path
) -> None:
    """No worker runs here, so the run is still queued when the branch goes: the delete cancels it,
    and it never reaches GitHub as a check."""
    head = shop.branch("agent/short-lived", {"services/orders/NOTE.md": "x\n"})
    with app_server(fake, tmp_path / "state", workers=0) as idle:
        push = shop_push(shop, "agent/short-lived", head, installation_id=fake.installation_id(REPO))
        assert idle.deliver("push", push).status_code == 202
        assert [r["status"] for r in idle.runs(sha=head)] == ["queued"]
        deleted = adapted(fake, "delete", "with-installation", ref="agent/short-lived")
        deleted["ref_type"] = "branch"
        assert idle.deliver("delete", deleted).status_code == 202
        (run,) = idle.runs(sha=head)
        assert (run["status"], run["verdict"]) == ("cancelled", None)
        # A push reporting the deletion is not a second signal: it is ignored.
        gone = shop_push(
            shop, "agent/short-lived", "0" * 40, before=head, installation_id=fake.installation_id(REPO)
        )
        assert "ignored" in idle.deliver("push", gone).json()["status"]
        assert [r["status"] for r in idle.runs(sha=head)] == ["cancelled"]
    assert fake.check_runs(REPO, head_sha=head) == []


def test_pull_request_events_attach_one_sticky_comment(
    shop: GitRepo, fake: GitHubFake, server: AppServer
) -> None:
    shop.branch("agent/commented", patch=SHOP / "changes" / "contract-break.patch")
    run = run_branch(fake, shop, server, "agent/commented")
    pull = fake.open_pull(REPO, "agent/commented", "main", title="agent change")
    for action in ("opened", "synchronize", "ready_for_review"):
        payload = adapted(
            fake,
            "pull_request",
            action,
            number=pull.number,
            head_ref="agent/commented",
            head_sha=run["head_sha"],
            base_ref="main",
        )
        assert server.deliver("pull_request", payload).status_code == 202
    fake.wait_until(lambda: len(fake.comments(REPO, pull.number)) == 1, timeout=20)
    (comment,) = fake.comments(REPO, pull.number)
    assert comment.body.startswith("<!-- loopgate:evidence -->") and "FAIL" in comment.body
    assert not fake.pull(REPO, pull.number).draft  # comment events never gate; pushes do


def test_draft_refusal_is_reported_and_the_verdict_stands(
    shop: GitRepo, fake: GitHubFake, server: AppServer
) -> None:
    head = shop.branch("agent/refused", patch=SHOP / "changes" / "contract-break.patch")
    pull = fake.open_pull(REPO, "agent/refused", "main", title="agent change")
    fake.refuse_draft_conversion = "Resource not accessible by integration"
    try:
        server.deliver(
            "push", shop_push(shop, "agent/refused", head, installation_id=fake.installation_id(REPO))
        )
        run = server.wait_for_run(head)
    finally:
        fake.refuse_draft_conversion = None
    assert run["verdict"] == "fail" and run["conclusion"] == "failure"
    evidence = server.api(f"/api/runs/{run['id']}").json()
    assert any(note.startswith("could not convert to draft: GitHub answered") for note in evidence["notes"])
    assert not fake.pull(REPO, pull.number).draft


def test_installation_events_are_recorded_and_ping_answered(fake: GitHubFake, server: AppServer) -> None:
    """GitHub's own examples, in the order an installation lives: what the store holds follows them."""
    created = webhooks.load_payload("installation", "created")
    installation = created["installation"]["id"]
    assert server.deliver("installation", created).status_code == 202
    recorded = server.store.installation(installation)
    assert recorded is not None and recorded.account == created["installation"]["account"]["login"]
    assert set(recorded.repositories) == {r["full_name"] for r in created["repositories"]}

    added = webhooks.load_payload("installation_repositories", "added")
    added["installation"]["id"] = installation
    assert server.deliver("installation_repositories", added).status_code == 202
    grown = server.store.installation(installation)
    assert grown is not None
    assert set(grown.repositories) == set(recorded.repositories) | {
        r["full_name"] for r in added["repositories_added"]
    }

    deleted = webhooks.load_payload("installation", "deleted")
    deleted["installation"]["id"] = installation
    assert server.deliver("installation", deleted).status_code == 202
    assert server.store.installation(installation) is None
    assert server.deliver("ping", webhooks.load_payload("ping")).json()["status"] == "pong"


def test_oversized_and_malformed_bodies(server: AppServer) -> None:
    huge = b"{" + b" " * (25 * 1024 * 1024 + 1) + b"}"
    headers = webhooks.headers_for("push", huge, SECRET)
    assert (
        httpx.post(f"{server.url}/webhooks/github", content=huge, headers=headers, timeout=30).status_code
        == 413
    )
    headers = webhooks.headers_for("push", b"[1, 2]", SECRET)
    assert httpx.post(f"{server.url}/webhooks/github", content=b"[1, 2]", headers=headers).status_code == 400


def test_health_readiness_and_metrics(server: AppServer) -> None:
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200 and ready.json() == {"database": "ok", "workers": "ok"}
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'loopgate_webhook_deliveries_total{event="push"}' in metrics
    assert "loopgate_queue_depth" in metrics
    assert 'loopgate_stage_duration_seconds_count{stage="verify"}' in metrics
    assert 'loopgate_runs{verdict="fail"}' in metrics


def test_app_manifest_lists_the_permissions_and_events() -> None:
    done = run_cli("app", "manifest", "--url", "https://lg.example.com")
    manifest = json.loads(done.stdout)
    assert manifest["default_permissions"] == {
        "checks": "write",
        "contents": "read",
        "pull_requests": "write",
        "metadata": "read",
    }
    assert set(manifest["default_events"]) == {
        "push",
        "pull_request",
        "check_run",
        "check_suite",
        "delete",
        "installation_repositories",
    }
    assert manifest["hook_attributes"]["url"] == "https://lg.example.com/webhooks/github"


def test_missing_setting_stops_start_up_by_name(tmp_path: Path) -> None:
    done = run_cli("serve", env={"LOOPGATE_GITHUB_APP_ID": "1", "LOOPGATE_WEBHOOK_SECRET": ""})
    assert done.returncode == 2
    assert done.stderr.strip().startswith("loopgate: LOOPGATE_WEBHOOK_SECRET")


def test_a_later_pass_marks_the_drafted_pr_ready(shop: GitRepo, fake: GitHubFake, server: AppServer) -> None:
    orders = "services/orders/orders_app.py"
    shop.branch("agent/fixed-later", {orders: shop.git("show", f"agent/orders-crash:{orders}") + "\n"})
    pull = fake.open_pull(REPO, "agent/fixed-later", "main", title="agent change")
    assert run_branch(fake, shop, server, "agent/fixed-later")["verdict"] == "fail"
    assert fake.pull(REPO, pull.number).draft
    shop.git("checkout", "-q", "agent/fixed-later")
    shop.write("services/inventory/NOTES.md", "still broken\n")
    shop.commit("agent: another try")  # fails again, finding the PR already a draft
    shop.git("checkout", "-q", "main")
    assert run_branch(fake, shop, server, "agent/fixed-later")["verdict"] == "fail"
    shop.git("checkout", "-q", "agent/fixed-later")
    shop.git("checkout", "-q", "main", "--", orders)
    shop.commit("agent: orders starts again")
    shop.git("checkout", "-q", "main")
    assert run_branch(fake, shop, server, "agent/fixed-later")["verdict"] == "pass"
    assert not fake.pull(REPO, pull.number).draft
    assert [p.number for p in fake.pulls(REPO) if p.head_ref == "agent/fixed-later"] == [pull.number]
    fake.assert_no_violations()


def test_when_main_moves_the_old_baseline_is_retired(
    shop: GitRepo, fake: GitHubFake, server: AppServer
) -> None:
    """Runs at the end of the module: it moves `main`."""
    state = Path(server.env["LOOPGATE_STATE_DIR"])
    run_branch(fake, shop, server, "agent/refactor-orders")
    old = {json.loads(p.read_text())["base_sha"] for p in state.glob("envs/*/env.json")}
    shop.write("docs/RELEASE.md", "main moved on\n")
    new_main = shop.commit("team: release notes")
    shop.branch("agent/after-release", patch=SHOP / "changes" / "refactor-orders.patch")
    assert run_branch(fake, shop, server, "agent/after-release")["verdict"] == "pass"
    assert old and new_main not in old

    def remaining() -> set[str]:
        return {json.loads(p.read_text())["base_sha"] for p in state.glob("envs/*/env.json")}

    deadline = time.monotonic() + 30  # retiring happens right after the run is recorded
    while remaining() != {new_main} and time.monotonic() < deadline:
        time.sleep(0.2)
    assert remaining() == {new_main}


def test_a_persons_pr_gets_a_neutral_check_so_a_required_check_never_blocks_it(
    shop: GitRepo, fake: GitHubFake, server: AppServer
) -> None:
    head = shop.branch("feature/by-a-person", {"docs/PERSON.md": "written by a person\n"})
    pull = fake.open_pull(REPO, "feature/by-a-person", "main", title="a person's change")
    opened = adapted(
        fake, "pull_request", "opened", number=pull.number, head_ref="feature/by-a-person", head_sha=head
    )
    answer = server.deliver("pull_request", opened)
    assert answer.status_code == 202 and "queued run" in answer.json()["status"], answer.text
    run = server.wait_for_run(head)
    assert (run["conclusion"], run["verdict"]) == ("neutral", None)
    (check,) = [c for c in fake.check_runs(REPO, head_sha=head) if c.name == CHECK]
    assert (check.conclusion, check.output["title"]) == ("neutral", "not an agent branch — not gated")
    # Another event for the same head attaches to the commit's run: one commit, one check.
    again = adapted(
        fake, "pull_request", "reopened", number=pull.number, head_ref="feature/by-a-person", head_sha=head
    )
    assert f"attached to run {run['id']}" in server.deliver("pull_request", again).json()["status"]
    assert len(server.runs(sha=head)) == 1
    assert not fake.pull(REPO, pull.number).draft
