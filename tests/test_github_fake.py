"""The GitHub contract fake, driven by the real PyGithub, and the webhook helpers."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from github import Auth, Github, GithubException, GithubIntegration

from bot.github.client import DraftChange, RepoClient
from bot.github.drafts import GitHubRecord
from tests.github_fake import GitHubFake, webhooks
from tests.github_fake import resources as fake_resources
from tests.gitrepo import GitRepo

ROOT = Path(__file__).resolve().parents[1]
REPO = "acme/shop"
CHECK = "loopgate / sandbox verification"


@pytest.fixture
def git_repo(tmp_path: Path) -> GitRepo:
    repo = GitRepo.init(
        tmp_path / "shop",
        {"README.md": "# shop\n", "src/app.py": "print('v1')\n", "docs/guide.md": "guide\n"},
    )
    repo.branch("agent/feature", {"src/app.py": "print('v2')\n", "src/new.py": "x = 1\n"})
    return repo


@pytest.fixture
def fake(git_repo: GitRepo) -> Iterator[GitHubFake]:
    with GitHubFake.running(repos={REPO: git_repo.path}, app_slug="loopgate") as running:
        yield running


# PyGithub throttles itself by default (0.25 s between requests, 1 s between writes); the fake needs none.
NO_THROTTLE: dict[str, Any] = {"seconds_between_requests": 0, "seconds_between_writes": 0}


def integration(fake: GitHubFake, base_url: str | None = None) -> GithubIntegration:
    return GithubIntegration(
        auth=Auth.AppAuth(fake.app_id, fake.private_key_pem), base_url=base_url or fake.url, **NO_THROTTLE
    )


def installation_client(fake: GitHubFake, base_url: str | None = None) -> Github:
    """As loopgate will do it: App JWT -> installation -> installation token (retry=None)."""
    gi = integration(fake, base_url)
    return gi.get_github_for_installation(gi.get_repo_installation("acme", "shop").id)


def test_pygithub_app_flow_has_no_violations(fake: GitHubFake, git_repo: GitRepo) -> None:
    head = git_repo.git("rev-parse", "agent/feature")
    gi = integration(fake)

    app = gi.get_app()
    assert (app.slug, app.id) == ("loopgate", fake.app_id)
    assert fake.bot_login == "loopgate[bot]"
    installation = gi.get_repo_installation("acme", "shop")
    assert installation.id == fake.installation_id(REPO)
    token = gi.get_access_token(installation.id)
    assert token.token.startswith("ghs_")
    assert token.expires_at > datetime.now(UTC) + timedelta(minutes=50)

    g = gi.get_github_for_installation(installation.id)
    repo = g.get_repo(REPO)
    assert (repo.full_name, repo.default_branch) == (REPO, "main")
    assert repo.clone_url == git_repo.path.resolve().as_uri()

    # Check run: create in progress, then complete it.
    run = repo.create_check_run(
        name=CHECK,
        head_sha=head,
        status="in_progress",
        details_url="https://loopgate.example/runs/abc",
        external_id="run-1",
        output={"title": "Running", "summary": "sandbox starting"},
    )
    assert run.status == "in_progress" and run.app.slug == "loopgate"
    run.edit(
        status="completed",
        conclusion="success",
        output={"title": "Passed", "summary": "all suites green", "text": "details"},
    )
    assert run.conclusion == "success" and run.completed_at is not None
    (stored,) = fake.check_runs(REPO, head_sha=head)
    assert (stored.status, stored.conclusion, stored.output["title"]) == ("completed", "success", "Passed")
    assert [h["action"] for h in stored.history] == ["created", "updated"]
    listed = list(repo.get_commit(head).get_check_runs(check_name=CHECK))
    assert [(r.id, r.conclusion) for r in listed] == [(run.id, "success")]

    # Pull request: open as the App, find it by head/base filters, read it back.
    pull = repo.create_pull(base="main", head="agent/feature", title="Agent change", body="body", draft=False)
    assert (pull.number, pull.draft, pull.head.sha, pull.user.login) == (1, False, head, "loopgate[bot]")
    assert pull.changed_files == 2 and pull.node_id
    found = repo.get_pulls(state="open", head="acme:agent/feature", base="main")
    assert [p.number for p in found] == [1]
    assert list(repo.get_pulls(state="closed")) == []
    assert repo.get_pull(1).title == "Agent change"

    # Sticky comment: create, edit in place, list; the App recognises its own by login.
    comment = pull.create_issue_comment("<!-- loopgate -->\nrunning")
    comment.edit("<!-- loopgate -->\npassed")
    comments = list(pull.get_issue_comments())
    assert [(c.id, c.body, c.user.login) for c in comments] == [
        (comment.id, "<!-- loopgate -->\npassed", "loopgate[bot]")
    ]
    assert fake.comments(REPO, 1)[0].history == ["<!-- loopgate -->\nrunning"]

    # Git-backed reads.
    file = repo.get_contents("src/app.py", ref="agent/feature")
    assert not isinstance(file, list) and file.decoded_content == b"print('v2')\n"
    listing = repo.get_contents("src")
    assert isinstance(listing, list) and [c.path for c in listing] == ["src/app.py"]
    assert repo.get_branch("agent/feature").commit.sha == head
    commit = repo.get_commit(head)
    assert sorted(f.filename for f in commit.files) == ["src/app.py", "src/new.py"]
    comparison = repo.compare("main", "agent/feature")
    assert (comparison.status, comparison.ahead_by, comparison.behind_by) == ("ahead", 1, 0)
    commit.create_status(
        "success", target_url="https://loopgate.example", description="ok", context="loopgate"
    )
    assert [s.state for s in fake.statuses(REPO, head)] == ["success"]

    # Draft conversion through GraphQL, by PyGithub and by a raw POST.
    pull.convert_to_draft()
    assert pull.draft is True and fake.pull(REPO, 1).draft is True
    mutation = (
        "mutation($id: ID!) { markPullRequestReadyForReview(input: {pullRequestId: $id}) "
        "{ pullRequest { id number isDraft headRefOid } } }"
    )
    response = httpx.post(
        fake.graphql_url,
        json={"query": mutation, "variables": {"id": pull.node_id}},
        headers={"Authorization": f"bearer {token.token}"},
    )
    assert response.status_code == 200, response.text
    answer = response.json()["data"]["markPullRequestReadyForReview"]["pullRequest"]
    assert answer == {"id": pull.node_id, "number": 1, "isDraft": False, "headRefOid": head}
    assert fake.pull(REPO, 1).draft is False

    fake.assert_no_violations()
    ops = {r.operation_id for r in fake.requests}
    assert {"apps/get-authenticated", "apps/create-installation-access-token", "checks/create"} <= ops
    assert all(r.status < 400 for r in fake.requests)


def test_ghes_style_base_url(fake: GitHubFake, git_repo: GitRepo) -> None:
    """Under `/api/v3` the URLs the fake returns keep the prefix (PyGithub refuses others)."""
    g = installation_client(fake, fake.ghes_url)
    repo = g.get_repo(REPO)
    assert repo.url.startswith(fake.ghes_url)
    run = repo.create_check_run(name=CHECK, head_sha=git_repo.git("rev-parse", "main"))
    run.edit(conclusion="neutral")
    pull = repo.create_pull(base="main", head="agent/feature", title="t")
    pull.convert_to_draft()
    assert fake.pull(REPO, pull.number).draft
    assert {r.path.split("/")[1] for r in fake.requests} == {"api"}
    fake.assert_no_violations()


def test_invalid_conclusion_is_a_violation(fake: GitHubFake, git_repo: GitRepo) -> None:
    repo = installation_client(fake).get_repo(REPO)
    with pytest.raises(GithubException) as raised:
        repo.create_check_run(name=CHECK, head_sha=git_repo.git("rev-parse", "main"), conclusion="passed")
    assert raised.value.status == 599
    (violation,) = fake.violations
    assert violation.kind == "request" and violation.operation_id == "checks/create"
    assert "conclusion" in str(violation) and "'passed' is not one of" in str(violation)
    assert fake.check_runs(REPO) == []
    with pytest.raises(AssertionError, match="1 GitHub contract violation"):
        fake.assert_no_violations()


def test_completed_without_conclusion_and_bad_query_are_violations(
    fake: GitHubFake, git_repo: GitRepo
) -> None:
    token = fake.installation_token(REPO)
    auth = {"Authorization": f"token {token}"}
    sha = git_repo.git("rev-parse", "main")
    with httpx.Client(base_url=fake.url, headers=auth) as client:
        bad = client.post(
            f"/repos/{REPO}/check-runs", json={"name": CHECK, "head_sha": sha, "status": "completed"}
        )
        assert bad.status_code == 599 and "conclusion" in bad.json()["message"]
        assert client.get(f"/repos/{REPO}/pulls", params={"state": "merged"}).status_code == 599
        assert client.get(f"/repos/{REPO}/pulls", params={"per_page": "ten"}).status_code == 599
        assert client.get(f"/repos/{REPO}/pulls", params={"labels": "x"}).status_code == 599
        ok = client.get(f"/repos/{REPO}/pulls", params={"state": "all", "per_page": "5"})
        assert ok.status_code == 200 and ok.json() == []
    messages = [str(v) for v in fake.violations]
    assert len(messages) == 4
    assert "'merged' is not one of" in messages[1]
    assert "not an integer" in messages[2]
    assert "'labels' is not declared" in messages[3]


def test_operation_outside_the_contract_is_a_violation(fake: GitHubFake) -> None:
    fake.open_pull(REPO, "agent/feature")
    comment = installation_client(fake).get_repo(REPO).get_pull(1).create_issue_comment("hi")
    with pytest.raises(GithubException):
        comment.delete()  # DELETE /repos/{o}/{r}/issues/comments/{id} is not in subset.json
    (violation,) = fake.violations
    assert violation.kind == "unknown-operation" and violation.method == "DELETE"
    fake.delete_comment(REPO, comment.id)  # the test helper instead
    assert fake.comments(REPO, 1) == []


def test_a_port_scan_for_another_host_is_misdirected_not_a_violation(fake: GitHubFake) -> None:
    """The confinement tests' hostile probe sends `GET /ready` with `Host: x` to every loopback port,
    this fake's too: not a GitHub client, so not loopgate's contract to keep."""
    scanned = httpx.get(fake.url + "/ready", headers={"host": "x"})
    assert scanned.status_code == 421
    unknown = httpx.get(fake.url + "/ready")  # the same request from a client of the fake is one
    assert unknown.status_code == fake.violation_status
    assert [(v.method, v.path) for v in fake.violations] == [("GET", "/ready")]


def test_bad_graphql_is_a_violation(fake: GitHubFake) -> None:
    pull = fake.open_pull(REPO, "agent/feature")
    headers = {"Authorization": f"token {fake.installation_token(REPO)}"}
    bad_field = (
        "mutation($id: ID!) { convertPullRequestToDraft(input: {pullRequestId: $id}) "
        "{ pullRequest { isDraftt } } }"
    )
    response = httpx.post(
        fake.graphql_url, json={"query": bad_field, "variables": {"id": pull.node_id}}, headers=headers
    )
    assert response.status_code == 599
    bad_variable = (
        "mutation($id: ID!) { convertPullRequestToDraft(input: {pullRequestId: $id}) { clientMutationId } }"
    )
    response = httpx.post(fake.graphql_url, json={"query": bad_variable, "variables": {}}, headers=headers)
    assert response.status_code == 599
    kinds = [(v.kind, v.messages[0]) for v in fake.violations]
    assert kinds[0][0] == "graphql" and "Cannot query field 'isDraftt'" in kinds[0][1]
    assert kinds[1][0] == "graphql" and "$id" in kinds[1][1]
    assert fake.pull(REPO, pull.number).draft is False


def test_draft_conversion_can_be_refused(fake: GitHubFake) -> None:
    fake.open_pull(REPO, "agent/feature")
    fake.refuse_draft_conversion = True
    pull = installation_client(fake).get_repo(REPO).get_pull(1)
    with pytest.raises(GithubException) as raised:
        pull.convert_to_draft()
    error = raised.value.data["errors"][0]
    assert (error["type"], error["message"]) == ("FORBIDDEN", "Resource not accessible by integration")
    assert fake.pull(REPO, 1).draft is False
    fake.assert_no_violations()


def test_auth_is_enforced_like_github(fake: GitHubFake) -> None:
    token = fake.installation_token(REPO)
    with httpx.Client(base_url=fake.url) as client:
        assert client.get(f"/repos/{REPO}").status_code == 401
        assert client.get(f"/repos/{REPO}", headers={"Authorization": "token nope"}).status_code == 401
        assert client.get("/app", headers={"Authorization": f"token {token}"}).status_code == 401
        jwt_headers = {"Authorization": f"Bearer {fake.app_jwt()}"}
        assert client.get("/app", headers=jwt_headers).status_code == 200
        assert client.get(f"/repos/{REPO}", headers=jwt_headers).status_code == 401
        far = {"Authorization": f"Bearer {fake.app_jwt(expires_in=3600)}"}
        assert "too far in the future" in client.get("/app", headers=far).json()["message"]
        expired = {"Authorization": f"Bearer {fake.app_jwt(expires_in=-120, issued_at_offset=-300)}"}
        assert client.get("/app", headers=expired).status_code == 401
        other_key = GitHubFake(app_id=fake.app_id).private_key_pem
        forged = jwt.encode(
            {"iat": int(time.time()) - 60, "exp": int(time.time()) + 300, "iss": str(fake.app_id)},
            other_key,
            algorithm="RS256",
        )
        assert client.get("/app", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
        read_only = fake.installation_token(REPO, permissions={"checks": "read", "metadata": "read"})
        denied = client.post(
            f"/repos/{REPO}/check-runs",
            json={"name": CHECK, "head_sha": "0" * 40},
            headers={"Authorization": f"token {read_only}"},
        )
        assert denied.status_code == 403
        assert denied.json()["message"] == "Resource not accessible by integration"
        assert client.get("/repos/acme/other", headers={"Authorization": f"token {token}"}).status_code == 404
    fake.assert_no_violations()


def test_github_validation_errors(fake: GitHubFake, git_repo: GitRepo) -> None:
    repo = installation_client(fake).get_repo(REPO)
    repo.create_pull(base="main", head="agent/feature", title="first")
    with pytest.raises(GithubException) as duplicate:
        repo.create_pull(base="main", head="agent/feature", title="again")
    assert duplicate.value.status == 422
    assert "already exists" in duplicate.value.data["errors"][0]["message"]
    with pytest.raises(GithubException) as unknown_sha:
        repo.create_check_run(name=CHECK, head_sha="f" * 40)
    assert unknown_sha.value.status == 422
    with pytest.raises(GithubException) as missing:
        repo.get_contents("nope.txt")
    assert missing.value.status == 404
    fake.assert_no_violations()


def test_pagination_and_head_filter(fake: GitHubFake) -> None:
    fake.open_pull(REPO, "agent/feature")
    for i in range(5):
        fake.add_comment(REPO, 1, f"human {i}")
    gi = integration(fake)
    auth = gi.auth.get_installation_auth(fake.installation_id(REPO))
    g = Github(auth=auth, base_url=fake.url, per_page=2, **NO_THROTTLE)
    pull = g.get_repo(REPO).get_pull(1)
    comments = pull.get_issue_comments()
    assert [c.body for c in comments] == [f"human {i}" for i in range(5)]
    assert comments.totalCount == 5
    assert sum(1 for r in fake.requests if r.operation_id == "issues/list-comments") >= 3
    pulls = list(g.get_repo(REPO).get_pulls(head="agent/feature"))  # no `owner:`: GitHub ignores it
    assert [p.number for p in pulls] == [1]
    assert any("lacks the 'owner:' prefix" in w for w in fake.warnings)
    fake.assert_no_violations()


def test_responses_are_validated(
    fake: GitHubFake, git_repo: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = fake_resources.check_run

    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        data = original(*args, **kwargs)
        del data["head_sha"]
        data["status"] = "finished"
        return data

    monkeypatch.setattr(fake_resources, "check_run", broken)
    token = fake.installation_token(REPO)
    response = httpx.post(
        f"{fake.url}/repos/{REPO}/check-runs",
        json={"name": CHECK, "head_sha": git_repo.git("rev-parse", "main")},
        headers={"Authorization": f"token {token}"},
    )
    assert response.status_code == 599
    (violation,) = fake.violations
    assert violation.kind == "response"
    assert "'head_sha' is a required property" in str(violation)
    assert "'finished' is not one of" in str(violation)


def test_fake_endpoints_report_requests_state_and_violations(fake: GitHubFake) -> None:
    fake.open_pull(REPO, "agent/feature", draft=True)
    with httpx.Client(base_url=fake.url) as client:
        client.get(f"/repos/{REPO}", headers={"Authorization": f"token {fake.installation_token(REPO)}"})
        client.get("/nope")
        seen = client.get("/_fake/requests").json()
        assert [(r["method"], r["path"], r["status"]) for r in seen] == [
            ("GET", f"/repos/{REPO}", 200),
            ("GET", "/nope", 599),
        ]
        assert client.get("/_fake/violations").json()[0]["kind"] == "unknown-operation"
        state = client.get("/_fake/state").json()
        assert state["repos"][REPO]["pulls"]["1"]["draft"] is True


def test_cli_runs_the_fake_in_the_foreground(git_repo: GitRepo, tmp_path: Path) -> None:
    key = tmp_path / "app.pem"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.github_fake",
            "--port",
            "0",
            "--repo",
            f"{REPO}={git_repo.path}",
            "--app-id",
            "777",
            "--private-key",
            str(key),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        info = json.loads(process.stdout.readline())
        assert info["app_id"] == 777 and key.exists()
        gi = GithubIntegration(auth=Auth.AppAuth(777, key.read_text()), base_url=info["url"], **NO_THROTTLE)
        g = gi.get_github_for_installation(info["installations"][REPO])
        assert g.get_repo(REPO).default_branch == "main"
        seen = httpx.get(f"{info['url']}/_fake/requests").json()
        assert [r["status"] for r in seen] == [201, 200]
        assert httpx.get(f"{info['url']}/_fake/violations").json() == []
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.parametrize(
    ("event", "path"),
    webhooks.payload_files(),
    ids=[f"{event}/{path.name}" for event, path in webhooks.payload_files()],
)
def test_every_webhook_example_validates_after_adapt(event: str, path: Path) -> None:
    original = json.loads(path.read_text())
    webhooks.validate_payload(event, original.get("action"), original)
    adapted = webhooks.adapt(
        original,
        repo_full_name=REPO,
        clone_url="file:///srv/shop",
        default_branch="main",
        api_url="http://127.0.0.1:9",
        web_url="http://127.0.0.1:9",
        ref="refs/heads/agent/feature" if event == "push" else "agent/feature",
        before="a" * 40,
        after="b" * 40,
        number=7,
        head_ref="agent/feature",
        head_sha="c" * 40,
        base_ref="main",
        base_sha="d" * 40,
        installation_id=1234,
        app_id=424242,
        app_slug="loopgate",
        sender_login="alice",
    )
    webhooks.validate_payload(event, adapted.get("action"), adapted)
    text = json.dumps(adapted)
    assert "api.github.com" not in text
    if isinstance(original.get("repository"), dict):
        assert adapted["repository"]["full_name"] == REPO
        assert adapted["repository"]["clone_url"] == "file:///srv/shop"
    if event == "push":
        assert (adapted["ref"], adapted["after"]) == ("refs/heads/agent/feature", "b" * 40)
    if event == "pull_request":
        pr = adapted["pull_request"]
        assert (adapted["number"], pr["head"]["sha"], pr["head"]["ref"]) == (7, "c" * 40, "agent/feature")
        assert pr["base"]["repo"]["clone_url"] == "file:///srv/shop"
        if adapted["action"] == "synchronize":
            assert (adapted["before"], adapted["after"]) == ("a" * 40, "b" * 40)
    if event == "check_run":
        assert adapted["check_run"]["head_sha"] == "c" * 40
        assert adapted["check_run"]["app"]["id"] == 424242


def test_adapted_payload_that_breaks_the_schema_is_refused() -> None:
    payload = webhooks.adapt(webhooks.load_payload("push", "payload"), overrides={"after": 42})
    with pytest.raises(ValueError, match="after"):
        webhooks.validate_payload("push", None, payload)
    deleted = webhooks.adapt(webhooks.load_payload("push", "with-new-branch"), after=webhooks.ZERO_SHA)
    assert deleted["deleted"] is True and deleted["head_commit"] is None
    webhooks.validate_payload("push", None, deleted)


def test_signing_round_trips_and_matches_githubs_example() -> None:
    # The example of GitHub's "Validating webhook deliveries" documentation.
    assert webhooks.sign(b"Hello, World!", "It's a Secret to Everybody") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )
    body = json.dumps(webhooks.load_payload("ping")).encode()
    assert webhooks.verify(body, "s3cret", webhooks.sign(body, "s3cret"))
    assert not webhooks.verify(body + b" ", "s3cret", webhooks.sign(body, "s3cret"))


def test_deliver_posts_like_github() -> None:
    received: list[tuple[dict[str, str], bytes]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        payload = webhooks.adapt(
            webhooks.load_payload("pull_request", "opened"), repo_full_name=REPO, number=3
        )
        url = f"http://127.0.0.1:{server.server_address[1]}/webhook"
        response = webhooks.deliver(url, "pull_request", payload, "s3cret", delivery_id="d-1")
        assert response.status_code == 202
    finally:
        server.shutdown()
        server.server_close()
    ((headers, body),) = received
    assert headers["x-github-event"] == "pull_request"
    assert headers["x-github-delivery"] == "d-1"
    assert headers["content-type"] == "application/json"
    assert webhooks.verify(body, "s3cret", headers["x-hub-signature-256"])
    assert json.loads(body)["number"] == 3


def test_draft_changes_are_issue_events_with_their_actor(fake: GitHubFake) -> None:
    """GitHub's record of who drafted a PR: the App's GraphQL mutations and a person's clicks each add an
    event with its actor, oldest first; a change to what the PR already is adds none."""
    number = fake.open_pull(REPO, "agent/feature").number
    client = RepoClient.for_token(fake.url, fake.installation_token(REPO), REPO, fake.bot_login)
    record = GitHubRecord(client)
    assert client.last_draft_change(number) is None and not record.drafted_by_us(REPO, number)

    client.convert_to_draft(number)
    assert client.last_draft_change(number) == DraftChange("convert_to_draft", "loopgate[bot]")
    assert record.drafted_by_us(REPO, number)
    fake.set_draft(REPO, number, False)  # the author readies it...
    fake.set_draft(REPO, number, True, user="alice")  # ...a reviewer drafts it again
    fake.set_draft(REPO, number, True)  # already a draft: GitHub records nothing
    assert client.last_draft_change(number) == DraftChange("convert_to_draft", "alice")
    assert not record.drafted_by_us(REPO, number), "a person's draft was taken for loopgate's"
    client.mark_ready(number)
    assert not fake.pull(REPO, number).draft

    expected = [
        ("convert_to_draft", "loopgate[bot]", True),
        ("ready_for_review", "octocat", False),
        ("convert_to_draft", "alice", False),
        ("ready_for_review", "loopgate[bot]", True),
    ]
    token = fake.installation_token(REPO)
    url: str | None = f"{fake.url}/repos/{REPO}/issues/{number}/events?per_page=3"
    listed: list[dict[str, Any]] = []
    while url:
        response = httpx.get(url, headers={"Authorization": f"token {token}"})
        assert response.status_code == 200, response.text
        listed += response.json()
        url = response.links.get("next", {}).get("url")
    seen = [(e["event"], e["actor"]["login"], e["performed_via_github_app"] is not None) for e in listed]
    assert seen == expected
    assert [e.event for e in fake.issue_events(REPO, number)] == [event for event, _, _ in expected]
    for event in listed:
        assert fake.contract.component_errors("issue-event-for-issue", event) == []
        assert event["url"].endswith(f"/issues/events/{event['id']}")
    assert fake.contract.component_errors("issue-event-for-issue", {**listed[0], "actor": "loopgate"})
    fake.assert_no_violations()
