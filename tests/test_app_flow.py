"""The GitHub App end to end: real server over HTTP, real payloads, the GitHub contract fake, real
pipeline on the example shop."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import httpx
import jsonschema
import pytest

from tests.app_harness import REPO, SECRET, AppServer, app_server, new_delivery
from tests.app_harness import push_payload as shop_push
from tests.conftest import ROOT, SHOP
from tests.github_fake import GitHubFake, webhooks
from tests.gitrepo import GitRepo

CHECK = "loopgate / sandbox verification"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> GitRepo:
    path = tmp_path_factory.mktemp("app") / "shop"
    shutil.copytree(
        SHOP, path, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.db", "changes")
    )
    repo = GitRepo.init(path)
    for change in ("refactor-orders", "contract-break"):
        repo.branch(f"agent/{change}", patch=SHOP / "changes" / f"{change}.patch")
    config = (path / ".loopgate.yml").read_text()
    without_suites = config.split("verify:")[0] + "verify:\n  suites: []\n"
    repo.branch("agent/drop-suite", {".loopgate.yml": without_suites}, start="agent/contract-break")
    return repo


@pytest.fixture(scope="module")
def fake(shop: GitRepo) -> Iterator[GitHubFake]:
    with GitHubFake.running(repos={REPO: shop.path}) as running:
        yield running


@pytest.fixture(scope="module")
def server(fake: GitHubFake, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    with app_server(fake, tmp_path_factory.mktemp("app-state")) as running:
        yield running


def push_payload(fake: GitHubFake, repo: GitRepo, branch: str, head: str, before: str | None = None) -> dict:  # type: ignore[type-arg]
    return shop_push(repo, branch, head, before, installation_id=fake.installation_id(REPO))


def sha(repo: GitRepo, ref: str) -> str:
    return repo.git("rev-parse", ref)


def check_for(fake: GitHubFake, head: str) -> list:  # type: ignore[type-arg]
    return [c for c in fake.check_runs(REPO, head_sha=head) if c.name == CHECK]


def test_good_push_succeeds_and_opens_exactly_one_pr(
    shop: GitRepo, fake: GitHubFake, server: AppServer
) -> None:
    head = sha(shop, "agent/refactor-orders")
    answer = server.deliver("push", push_payload(fake, shop, "agent/refactor-orders", head))
    assert answer.status_code == 202, answer.text
    run = server.wait_for_run(head)
    assert run["verdict"] == "pass" and run["conclusion"] == "success"
    (check,) = check_for(fake, head)
    assert check.status == "completed" and check.conclusion == "success"
    assert [h["body"].get("status") for h in check.history] == ["queued", "in_progress", "completed"]
    assert check.external_id == run["id"] and check.details_url and "token=" in check.details_url
    pulls = [p for p in fake.pulls(REPO) if p.head_ref == "agent/refactor-orders"]
    assert len(pulls) == 1 and not pulls[0].draft
    assert len(fake.requests_for("pulls/create")) == 1
    comments = fake.comments(REPO, pulls[0].number)
    assert len(comments) == 1 and comments[0].body.startswith("<!-- loopgate:evidence -->")
    fake.assert_no_violations()

    # The evidence the agent reads validates against the published schema.
    evidence = server.api(f"/api/runs/{run['id']}").json()
    schema = json.loads((ROOT / "docs" / "evidence.schema.json").read_text())
    jsonschema.validate(evidence, schema)
    assert evidence["verdict"] == "pass" and evidence["head"]["ref"] == "agent/refactor-orders"
    page = httpx.get(check.details_url, timeout=10)
    assert page.status_code == 200 and "PASS" in page.text
    assert httpx.get(f"{server.url}/runs/{run['id']}", timeout=10).status_code == 401
    assert httpx.get(f"{server.url}/runs/{run['id']}?token=forged", timeout=10).status_code == 401


def test_redelivery_is_a_no_op(shop: GitRepo, fake: GitHubFake, server: AppServer) -> None:
    head = sha(shop, "agent/refactor-orders")
    before = len(server.runs(sha=head))
    delivery = new_delivery()
    first = server.deliver(
        "push", push_payload(fake, shop, "agent/refactor-orders", head, before="1" * 40), delivery
    )
    again = server.deliver(
        "push", push_payload(fake, shop, "agent/refactor-orders", head, before="1" * 40), delivery
    )
    assert first.status_code == 202 and again.status_code == 200
    assert "duplicate" in again.json()["status"]
    assert len(server.runs(sha=head)) == before + 1


def test_bad_or_missing_signature_is_refused(shop: GitRepo, fake: GitHubFake, server: AppServer) -> None:
    payload = push_payload(fake, shop, "agent/unsigned", "a" * 40)
    unsigned = webhooks.deliver(f"{server.url}/webhooks/github", "push", payload, None)
    assert unsigned.status_code == 401
    body = json.dumps(payload).encode()
    headers = webhooks.headers_for("push", body, "wrong-secret")
    assert httpx.post(f"{server.url}/webhooks/github", content=body, headers=headers).status_code == 401
    assert server.runs(branch="agent/unsigned") == []
    headers = webhooks.headers_for("push", b"{not json", SECRET)
    assert (
        httpx.post(f"{server.url}/webhooks/github", content=b"{not json", headers=headers).status_code == 400
    )


def test_failing_push_blocks_and_drafts_the_open_pr(
    shop: GitRepo, fake: GitHubFake, server: AppServer
) -> None:
    pull = fake.open_pull(REPO, "agent/contract-break", "main", title="agent: rename field")
    head = sha(shop, "agent/contract-break")
    assert server.deliver("push", push_payload(fake, shop, "agent/contract-break", head)).status_code == 202
    run = server.wait_for_run(head)
    assert run["verdict"] == "fail" and run["conclusion"] == "failure"
    (check,) = check_for(fake, head)
    assert check.conclusion == "failure"
    assert "suite e2e failed" in check.output["summary"]
    assert any(a["path"] == "e2e/test_checkout.py" for a in check.annotations)
    assert [a["identifier"] for a in check.actions] == ["rerun"]
    assert fake.pull(REPO, pull.number).draft
    assert not [
        p for p in fake.pulls(REPO) if p.head_ref == "agent/contract-break" and p.number != pull.number
    ]
    comments = fake.comments(REPO, pull.number)
    assert len(comments) == 1 and "FAIL" in comments[0].body
    fake.assert_no_violations()


def test_head_cannot_drop_the_failing_suite(shop: GitRepo, fake: GitHubFake, server: AppServer) -> None:
    head = sha(shop, "agent/drop-suite")
    assert server.deliver("push", push_payload(fake, shop, "agent/drop-suite", head)).status_code == 202
    run = server.wait_for_run(head)
    assert run["verdict"] == "fail"
    evidence = server.api(f"/api/runs/{run['id']}").json()
    assert [s["source"] for s in evidence["suites"]] == ["base"]
    assert not [p for p in fake.pulls(REPO) if p.head_ref == "agent/drop-suite"]
