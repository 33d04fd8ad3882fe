"""The GitHub App end to end: real server over HTTP, real payloads, the GitHub contract fake, real
pipeline on the example shop."""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import pytest

from tests.app_harness import API_TOKEN, REPO, SECRET, AppServer, app_server, new_delivery
from tests.app_harness import push_payload as shop_push
from tests.conftest import ROOT, SHOP, make_shop, processes_under
from tests.github_fake import GitHubFake, webhooks
from tests.gitrepo import GitRepo
from tests.test_report_html import chromium

CHECK = "loopgate / sandbox verification"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> GitRepo:
    path = tmp_path_factory.mktemp("app") / "shop"
    repo = make_shop(path, ["refactor-orders", "contract-break"], controls=False)
    config = (path / ".loopgate.yml").read_text()
    without_suites = config.split("verify:")[0] + "verify:\n  suites: []\n"
    repo.branch("agent/drop-suite", {".loopgate.yml": without_suites}, start="agent/contract-break")
    return repo


@pytest.fixture(scope="module")
def server(fake: GitHubFake, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """The module's App, beating for its runs every 20 ms: a beat then falls between a run's verdict
    and the end of its teardown (50-150 ms), where a verdict already out must not read as a lost claim."""
    beat = {"LOOPGATE_HEARTBEAT_S": "0.02"}
    with app_server(fake, tmp_path_factory.mktemp("app-state"), extra_env=beat) as running:
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
    # The verdict went out before the sandbox was torn down; the run's Evidence then gains the
    # teardown (the run is already concluded: the worker amends it).
    deadline = time.monotonic() + 30
    while "teardown" not in [s["name"] for s in evidence["stages"]] and time.monotonic() < deadline:
        time.sleep(0.1)
        evidence = server.api(f"/api/runs/{run['id']}").json()
    teardown = next(s for s in evidence["stages"] if s["name"] == "teardown")
    assert teardown["outcome"] == "ok"
    assert evidence["finished_at"] <= teardown["started_at"]
    jsonschema.validate(evidence, schema)
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
    evidence = server.api(f"/api/runs/{run['id']}").json()
    assert run["verdict"] == "fail", (evidence["reasons"], evidence["notes"])
    assert [s["source"] for s in evidence["suites"]] == ["base"]
    assert not [p for p in fake.pulls(REPO) if p.head_ref == "agent/drop-suite"]


def test_malformed_config_fails_the_check_with_file_and_line(tmp_path: Path) -> None:
    config = (
        (SHOP / ".loopgate.yml")
        .read_text()
        .replace('paths: ["services/orders/**"]', "paths: services/orders")
    )
    repo = GitRepo.init(tmp_path / "broken", {".loopgate.yml": config, "README.md": "x\n"})
    head = repo.branch("agent/anything", {"README.md": "y\n"})
    with GitHubFake.running(repos={REPO: repo.path}) as fake, app_server(fake, tmp_path / "state") as server:
        assert server.deliver("push", push_payload(fake, repo, "agent/anything", head)).status_code == 202
        run = server.wait_for_run(head)
        assert run["verdict"] == "error" and run["conclusion"] == "failure"
        (check,) = check_for(fake, head)
        line = next(i for i, text in enumerate(config.splitlines(), 1) if "paths: services/orders" in text)
        assert f".loopgate.yml:{line} services.orders.paths: expected a list" in check.output["summary"]
        fake.assert_no_violations()


def test_no_config_is_a_neutral_check_explaining_setup(tmp_path: Path) -> None:
    repo = GitRepo.init(tmp_path / "plain", {"README.md": "x\n"})
    head = repo.branch("agent/anything", {"README.md": "y\n"})
    with GitHubFake.running(repos={REPO: repo.path}) as fake, app_server(fake, tmp_path / "state") as server:
        server.deliver("push", push_payload(fake, repo, "agent/anything", head))
        assert server.wait_for_run(head)["conclusion"] == "neutral"
        (check,) = check_for(fake, head)
        assert check.conclusion == "neutral" and "no .loopgate.yml" in check.output["summary"]
        assert not fake.pulls(REPO)


def test_evidence_page_renders_in_chromium_without_console_errors(
    shop: GitRepo, fake: GitHubFake, server: AppServer, tmp_path: Path
) -> None:
    head = sha(shop, "agent/contract-break")
    if not server.runs(sha=head):  # on its own, this test makes the run the others share
        server.deliver("push", push_payload(fake, shop, "agent/contract-break", head))
    run = server.wait_for_run(head)
    (check,) = check_for(fake, head)
    done = chromium(
        "--dump-dom", "--enable-logging=stderr", "--v=0", check.details_url, profile=tmp_path / "profile"
    )
    dom = done.stdout
    assert "FAIL" in dom and "e2e" in dom and "test_checkout_in_stock_then_read_order" in dom
    assert "/available" in dom  # the diff table
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Refused to" in line]
    assert console == [], console
    assert run["id"] in dom or "loopgate" in dom


def slow_branch(repo: GitRepo, name: str) -> str:
    """A change whose suite takes long enough to be interrupted: inventory answers slowly."""
    return repo.branch(name, patch=SHOP / "changes" / "timeout-retry.patch")


def test_newer_push_supersedes_the_running_one(shop: GitRepo, fake: GitHubFake, server: AppServer) -> None:
    first = slow_branch(shop, "agent/superseded")
    server.deliver("push", push_payload(fake, shop, "agent/superseded", first))
    server.wait_for_run(first, status=("running",))
    shop.git("checkout", "-q", "agent/superseded")
    second = shop.commit("agent: try again")
    shop.write("NOTES.md", "second attempt\n")
    shop.git("checkout", "main", "--", "services")  # the slow change undone: the newer run is quick
    second = shop.commit("agent: second attempt")
    shop.git("checkout", "-q", "main")
    server.deliver("push", push_payload(fake, shop, "agent/superseded", second, before=first))
    old = server.wait_for_run(first, status=("cancelled",), timeout=60)
    assert old["conclusion"] == "cancelled"
    (check,) = check_for(fake, first)
    assert check.conclusion == "cancelled"
    shown = (check.output["summary"] + (check.output.get("text") or "")).replace("\u200b", "")  # unlinked SHA
    assert f"superseded by {second[:12]}" in shown
    assert server.wait_for_run(second, timeout=180)["status"] == "completed"
    fake.assert_no_violations()


def test_two_workers_on_postgres_claim_each_run_once(
    shop: GitRepo, tmp_path: Path, postgres_database: str
) -> None:
    heads = {b: sha(shop, b) for b in ("agent/refactor-orders", "agent/contract-break")}
    with (
        GitHubFake.running(repos={REPO: shop.path}) as fake,
        app_server(fake, tmp_path / "state", workers=2, database_url=postgres_database) as server,
    ):
        for branch, head in heads.items():
            assert server.deliver("push", push_payload(fake, shop, branch, head)).status_code == 202
        finished = {branch: server.wait_for_run(head, timeout=180) for branch, head in heads.items()}
        assert {b: r["verdict"] for b, r in finished.items()} == {
            "agent/refactor-orders": "pass",
            "agent/contract-break": "fail",
        }
        for head in heads.values():
            assert len(server.runs(sha=head)) == 1
            assert len(check_for(fake, head)) == 1
        fake.assert_no_violations()


def test_killed_server_leaves_no_run_pending_and_no_sandbox(shop: GitRepo, tmp_path: Path) -> None:
    head = slow_branch(shop, "agent/interrupted")
    state = tmp_path / "state"
    with GitHubFake.running(repos={REPO: shop.path}) as fake:
        with app_server(fake, state) as first:
            first.deliver("push", push_payload(fake, shop, "agent/interrupted", head))
            first.wait_for_run(head, status=("running",))
            # The sandbox is recorded on a claimed baseline before the baseline has started anything:
            # wait for its Envoy too (it outlives its starter, as it would after a crash mid-run).
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (
                list(state.glob("envs/*/sandboxes/*/sandbox.json"))
                and any("envoy" in p for p in processes_under(state))
            ):
                time.sleep(0.2)
            assert list(state.glob("envs/*/sandboxes/*/sandbox.json")), "the run never made its sandbox"
            first.stop(signal.SIGKILL)
            assert processes_under(state) != []  # the sandbox outlived its owner, as after a crash
            with app_server(fake, state) as second:
                run = second.wait_for_run(head, status=("completed",), timeout=60)
                assert run["verdict"] == "error"
                (check,) = check_for(fake, head)
                assert check.status == "completed" and check.conclusion == "failure"
                assert "restarted" in check.output["summary"]
                assert list(state.glob("envs/*/sandboxes/*")) == []
        fake.assert_no_violations()


SNOOP = r"""
import os, pathlib, subprocess, sys
secrets = [s for s in pathlib.Path(sys.argv[1]).read_text().splitlines() if s]
report = []
for name, value in os.environ.items():
    if name.startswith(("LOOPGATE_GITHUB", "LOOPGATE_WEBHOOK", "LOOPGATE_DATABASE", "LOOPGATE_API")):
        report.append(f"env {name}")
    if any(s in value for s in secrets):
        report.append(f"env value of {name}")
environs = 0
for entry in os.listdir("/proc"):
    try:
        data = pathlib.Path(f"/proc/{entry}/environ").read_bytes() if entry.isdigit() else None
    except OSError:
        continue
    if data is not None:
        environs += 1
        report += [f"/proc/{entry}/environ" for s in secrets if s.encode() in data]
root = pathlib.Path(sys.argv[2])
for path in root.rglob("*"):
    try:
        if path.is_file() and path.stat().st_size < 50_000_000:
            data = path.read_bytes()
            report += [f"file {path}" for s in secrets if s.encode() in data]
    except OSError:
        pass
for mirror in root.glob("mirrors/*.git"):
    config = subprocess.run(["git", "config", "--list"], cwd=mirror, capture_output=True, text=True).stdout
    report += [f"git config of {mirror.name}" for s in secrets if s in config]
    urls = [line for line in config.splitlines() if "url=" in line]
    report += [f"credential in a remote URL of {mirror.name}" for line in urls if "@" in line]
print(f"SNOOP read {environs} environments: " + ("; ".join(report) or "clean"))
"""


def test_agent_code_finds_no_secret_of_the_app(tmp_path: Path) -> None:
    """A suite from the agent's repository hunts for the App's secrets: its env, every other process's
    env in /proc, the state dir's files, git config; it says what it found on its output."""
    # Confined code has a /tmp of its own: what it is told to look for lies elsewhere on the host.
    shared = Path(tempfile.mkdtemp(prefix="loopgate-snoop-", dir="/var/tmp"))
    shared.chmod(0o755)
    wanted, state = shared / "wanted.txt", tmp_path / "state"
    config = f"""\
version: 1
services:
  web:
    paths: ["web/**"]
    local: {{run: "python -m http.server {{port}} --bind 127.0.0.1", cwd: web, health: /}}
verify:
  suites:
    - name: snoop
      run: python snoop.py {wanted} {state}
"""
    repo = GitRepo.init(
        tmp_path / "snoop", {".loopgate.yml": config, "snoop.py": SNOOP, "web/index.html": "v1\n"}
    )
    head = repo.branch("agent/snoop", {"web/index.html": "v2\n"})
    with (
        GitHubFake.running(repos={REPO: repo.path}) as fake,
        app_server(fake, tmp_path / "state") as server,
    ):
        try:
            # The suite is told what to look for through a file outside everything loopgate owns; the
            # installation token is minted before the run, so it can be looked for too.
            token = fake.installation_token(REPO)
            key_line = fake.private_key_pem.strip().splitlines()[1]
            wanted.write_text("\n".join([SECRET, API_TOKEN, key_line, token]))
            wanted.chmod(0o644)
            assert server.deliver("push", push_payload(fake, repo, "agent/snoop", head)).status_code == 202
            run = server.wait_for_run(head)
            evidence = server.api(run["evidence"]).json()
        finally:
            shutil.rmtree(shared, ignore_errors=True)
        tokens = [t for t in fake.state.tokens if t != token]
        assert tokens, "the App used an installation token of its own"
    # Nothing the suite could read held the webhook secret, API token, private key or a token.
    found = [line for line in evidence["suites"][0]["log_tail"].splitlines() if line.startswith("SNOOP")]
    assert len(found) == 1 and found[0].endswith(": clean"), evidence["suites"][0]["log_tail"]
    state_files = b"".join(p.read_bytes() for p in (tmp_path / "state").rglob("*") if p.is_file())
    for secret in (SECRET, API_TOKEN, key_line, *tokens):
        assert secret.encode() not in state_files
