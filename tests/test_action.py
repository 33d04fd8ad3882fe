"""The GitHub Action end to end: `python -m action` in a simulated Actions environment, on a checkout of
the example shop, gating through the GitHub contract fake as a workflow's `GITHUB_TOKEN` would."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.evidence import Evidence
from bot.github.client import RepoClient
from bot.report import COMMENT_MARKER, render_step_summary
from tests.action_harness import REPO, RUN_ID, ActionResult, checkout, push_event, run_action
from tests.conftest import SHOP, make_shop, processes_under
from tests.github_fake import GitHubFake
from tests.gitrepo import GitRepo

CHECK = "loopgate / sandbox verification"
BREAK = SHOP / "changes" / "contract-break.patch"
HOSTILE = "agent/$(touch${IFS}pwned)`touch${IFS}pwned2`;%0A,title=x"
"""A branch name git accepts that a shell, or a workflow-command property, would act on."""


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> GitRepo:
    repo = make_shop(
        tmp_path_factory.mktemp("action") / "shop", ["refactor-orders", "contract-break"], controls=False
    )
    # Docs only as far as the services go, but with modules named as loopgate's own, in the workspace.
    hijack = "import pathlib\npathlib.Path('hijacked').write_text('pwned')\n"
    repo.branch(
        HOSTILE,
        {"README.md": "# shop\n\nDocs only.\n", "action/__main__.py": hijack, "bot/__init__.py": hijack},
    )
    repo.branch("feature/docs", {"README.md": "# shop\n\nA person's branch.\n"})
    return repo


@pytest.fixture(scope="module")
def github(origin: GitRepo) -> Iterator[GitHubFake]:
    """The fake as a workflow's token sees GitHub: its comments are `github-actions[bot]`'s."""
    with GitHubFake.running(repos={REPO: origin.path}, app_slug="github-actions") as fake:
        yield fake


def push(origin: GitRepo, github: GitHubFake, branch: str, tmp: Path, **inputs: str) -> ActionResult:
    workspace = checkout(origin, branch, tmp / "workspace")
    token = github.installation_token(REPO)
    event = push_event(origin, branch, github)
    result = run_action(tmp, workspace, event, {"github-token": token, **inputs}, fake=github)
    assert processes_under(tmp) == [], "the Action left processes behind"
    worktrees = [w for w in workspace.joinpath(".git", "worktrees").glob("*")] if workspace.exists() else []
    assert worktrees == [], f"the Action left worktrees behind: {worktrees}"
    return result


def evidence_of(result: ActionResult) -> Evidence:
    return Evidence.model_validate_json(Path(result.outputs["evidence-path"]).read_text())


def test_good_change_passes_and_opens_the_pr(
    origin: GitRepo, github: GitHubFake, state_dir: Path, tmp_path: Path
) -> None:
    head = origin.git("rev-parse", "agent/refactor-orders")
    result = push(origin, github, "agent/refactor-orders", tmp_path)
    assert result.code == 0, result.stdout[-4000:] + result.stderr[-4000:]

    assert result.outputs["verdict"] == "pass"
    assert re.fullmatch(r"[a-z0-9]{16}", result.outputs["run-id"])
    evidence = evidence_of(result)
    assert evidence.verdict is not None and evidence.verdict.value == "pass"
    assert evidence.run_id == result.outputs["run-id"] and evidence.head.sha == head
    assert evidence.head.ref == "agent/refactor-orders" and evidence.base.ref == "main"
    assert evidence.trigger == "action" and evidence.repo == REPO
    assert evidence.links.html == f"https://github.com/{REPO}/actions/runs/{RUN_ID}"
    assert [s.name for s in evidence.services if s.forked] == ["orders"]
    report = Path(result.outputs["report-path"]).read_text()
    assert report.startswith(COMMENT_MARKER) and "PASS" in report

    # The step summary is the evidence rendered, whole.
    assert result.summary == render_step_summary(evidence)
    assert "PASS" in result.summary and "orders" in result.summary

    (pull,) = [p for p in github.pulls(REPO) if p.head_ref == "agent/refactor-orders"]
    assert result.outputs["pr-number"] == str(pull.number) and pull.base_ref == "main" and not pull.draft
    assert f"opened pull request #{pull.number}" in evidence.notes
    (check,) = [c for c in github.check_runs(REPO, head_sha=head) if c.name == CHECK]
    assert check.status == "completed" and check.conclusion == "success"
    assert check.external_id == evidence.run_id and check.details_url == evidence.links.html
    assert [h["body"].get("status") for h in check.history] == ["queued", "in_progress", "completed"]
    (comment,) = github.comments(REPO, pull.number)
    assert comment.user.login == "github-actions[bot]" and comment.body.startswith(COMMENT_MARKER)
    github.assert_no_violations()

    assert [e for e in result.errors()] == []
    notices = [(props, message) for name, props, message in result.commands() if name == "notice"]
    assert notices and notices[-1][0] == {"title": "loopgate%3A pass"}
    assert "::group::suite e2e, the team's suite (base commit): passed" in result.stdout


def test_contract_break_fails_the_step_with_annotations_and_drafts_the_pr(
    origin: GitRepo, github: GitHubFake, state_dir: Path, tmp_path: Path
) -> None:
    pull = github.open_pull(REPO, "agent/contract-break", "main", title="agent: rename a field")
    head = origin.git("rev-parse", "agent/contract-break")
    result = push(origin, github, "agent/contract-break", tmp_path)
    assert result.code == 1, result.stdout[-4000:] + result.stderr[-4000:]

    assert result.outputs["verdict"] == "fail"
    assert result.outputs["pr-number"] == str(pull.number)
    evidence = evidence_of(result)
    failures = [f for s in evidence.suites for f in s.failures]
    assert failures, evidence.reasons
    errors = result.errors()
    located = [props for props, _ in errors if "file" in props]
    assert {props["file"] for props in located} == {"e2e/test_checkout.py"}
    for props in located:
        assert props["line"].isdigit() and props["title"].startswith("e2e%3A ")
    assert any("upstream_bad_response" in message for _, message in errors)
    # The last error is the verdict, its reasons in one escaped message.
    verdict_props, verdict_message = errors[-1]
    assert verdict_props == {"title": "loopgate%3A fail"} and "suite e2e failed" in verdict_message
    assert len(errors) <= 10

    assert "suite e2e failed" in result.summary and "FAIL" in result.summary
    (check,) = [c for c in github.check_runs(REPO, head_sha=head) if c.name == CHECK]
    assert check.conclusion == "failure"
    assert any(a["path"] == "e2e/test_checkout.py" for a in check.annotations)
    assert github.pull(REPO, pull.number).draft
    assert [p.number for p in github.pulls(REPO) if p.head_ref == "agent/contract-break"] == [pull.number]
    (comment,) = github.comments(REPO, pull.number)
    assert "FAIL" in comment.body and comment.user.login == "github-actions[bot]"
    github.assert_no_violations()

    # The suite's log is folded into a group, with commands stopped around it.
    group = result.stdout.index("::group::suite e2e, the team's suite (base commit): failed")
    assert result.stdout[group:].split("\n", 2)[1].startswith("::stop-commands::")


ORDERS = "services/orders/orders_app.py"


def fix_crash(origin: GitRepo, branch: str) -> str:
    """The agent's next push: orders starts again, a note kept so the branch still differs."""
    origin.git("checkout", "-q", branch)
    origin.git("checkout", "-q", "main", "--", ORDERS)
    origin.write("docs/NOTE.md", "Orders starts again.\n")
    fixed = origin.commit("agent: orders starts again")
    origin.git("checkout", "-q", "main")
    return fixed


def draft_changes(github: GitHubFake, number: int) -> list[tuple[str, str]]:
    return [(e.event, e.actor.login) for e in github.issue_events(REPO, number)]


def test_a_pass_of_the_head_readies_the_draft_the_action_made(
    origin: GitRepo, github: GitHubFake, state_dir: Path, tmp_path: Path
) -> None:
    """No state survives a workflow run: the Action finds its own draft in GitHub's record of who drafted."""
    # Fails in a second (its orders fork exits at start): what is tested is what a pass does after a fail.
    crashing = origin.git("show", f"main:{ORDERS}") + "\nraise SystemExit(3)\n"
    origin.branch("agent/fixed-later", {ORDERS: crashing})
    pull = github.open_pull(REPO, "agent/fixed-later", "main", title="agent: break orders, then not")
    failed = push(origin, github, "agent/fixed-later", tmp_path / "first")
    assert failed.outputs["verdict"] == "fail", failed.stdout[-4000:] + failed.stderr[-4000:]
    assert github.pull(REPO, pull.number).draft

    fix_crash(origin, "agent/fixed-later")
    passed = push(origin, github, "agent/fixed-later", tmp_path / "second")
    assert passed.code == 0, passed.stdout[-4000:] + passed.stderr[-4000:]
    assert passed.outputs["verdict"] == "pass" and passed.outputs["pr-number"] == str(pull.number)
    assert not github.pull(REPO, pull.number).draft, "the Action's own draft stayed a draft after a pass"
    assert f"pull request #{pull.number} marked ready for review" in evidence_of(passed).notes
    assert draft_changes(github, pull.number) == [
        ("convert_to_draft", "github-actions[bot]"),
        ("ready_for_review", "github-actions[bot]"),
    ]
    assert [p.number for p in github.pulls(REPO) if p.head_ref == "agent/fixed-later"] == [pull.number]
    (comment,) = github.comments(REPO, pull.number)
    assert "PASS" in comment.body
    github.assert_no_violations()


def test_a_draft_the_author_made_stays_a_draft_after_a_pass(
    origin: GitRepo, github: GitHubFake, state_dir: Path, tmp_path: Path
) -> None:
    """The workflow's token drafted the PR once, but the author readied it and drafted it again by hand:
    the latest draft is the author's, and a pass leaves it alone."""
    origin.branch("agent/authors-draft", {"docs/NOTE.md": "A note.\n"})
    pull = github.open_pull(REPO, "agent/authors-draft", "main")
    token = github.installation_token(REPO)
    RepoClient.for_token(github.url, token, REPO, "github-actions[bot]").convert_to_draft(pull.number)
    github.set_draft(REPO, pull.number, False)  # the author readies it...
    github.set_draft(REPO, pull.number, True)  # ...and makes it a draft again

    result = push(origin, github, "agent/authors-draft", tmp_path)
    assert result.code == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert result.outputs["verdict"] == "pass" and result.outputs["pr-number"] == str(pull.number)
    assert github.pull(REPO, pull.number).draft, "the author's own draft was marked ready"
    assert not [n for n in evidence_of(result).notes if "marked ready" in n]
    assert draft_changes(github, pull.number)[-1] == ("convert_to_draft", "octocat")
    github.assert_no_violations()


def test_hostile_branch_name_reaches_no_shell_and_no_command(
    origin: GitRepo, github: GitHubFake, state_dir: Path, tmp_path: Path
) -> None:
    result = push(origin, github, HOSTILE, tmp_path, **{"fail-on": "error", "open-pr": "false"})
    assert result.code == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert result.outputs["verdict"] == "pass"  # docs only: no service is affected
    assert not list(tmp_path.rglob("pwned*")) and not list(Path.cwd().glob("pwned*"))
    assert not (tmp_path / "workspace" / "hijacked").exists(), "the workspace's action/ or bot/ ran"
    assert evidence_of(result).head.ref == HOSTILE
    assert not [p for p in github.pulls(REPO) if p.head_ref == HOSTILE]  # open-pr: false
    for name, props, _ in result.commands():
        assert name in ("notice", "group", "endgroup"), name
        assert set(props) <= {"title"}
    github.assert_no_violations()


@pytest.mark.parametrize(
    ("inputs", "event", "expected"),
    [
        ({"fail-on": "sometimes\n::set-output name=verdict::pass"}, "push", "input fail-on: "),
        ({"runtime": "docker"}, "push", "input runtime: "),
        ({"open-pr": "yes"}, "push", "input open-pr: "),
        ({"base": "main..agent/x"}, "push", "input base: "),
        ({"config": "../../etc/passwd"}, "push", "input config: "),
        ({}, None, "does not exist"),
        ({}, "{not json", "is not readable JSON"),
        ({}, '["a list"]', "does not hold a JSON object"),
        ({}, "hostile-ref", "is not a valid branch name"),
    ],
)
def test_bad_input_is_one_escaped_error_and_exit_2(
    inputs: dict[str, str],
    event: str | None,
    expected: str,
    origin: GitRepo,
    github: GitHubFake,
    tmp_path: Path,
) -> None:
    payload: dict | str | None  # type: ignore[type-arg]
    if event == "push":
        payload = push_event(origin, "agent/refactor-orders", github)
    elif event == "hostile-ref":
        payload = push_event(origin, "agent/refactor-orders", github)
        payload["ref"] = "refs/heads/agent/x\n::set-output name=verdict::pass\n::error::pwned"
    else:
        payload = event
    checks = len(github.requests_for("checks/create"))
    result = run_action(tmp_path, origin.path, payload, inputs, fake=github, sha="a" * 40)
    assert result.code == 2, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line]
    assert len(lines) == 1, lines
    ((props, message),) = result.errors()
    assert props == {"title": "loopgate%3A bad input"} and expected in message
    assert "\n" not in message
    assert result.outputs == {} and result.summary == ""
    assert len(github.requests_for("checks/create")) == checks


def test_an_untrusted_base_is_a_config_error(origin: GitRepo, github: GitHubFake, tmp_path: Path) -> None:
    """The workflow may name a base, but only one the default branch's config trusts."""
    origin.git("branch", "-f", "agent-playground", "agent/refactor-orders")
    head = origin.git("rev-parse", "agent/refactor-orders")
    result = push(origin, github, "agent/refactor-orders", tmp_path, base="agent-playground")
    assert result.code == 2
    assert result.outputs["verdict"] == "error"
    reason = json.loads(Path(result.outputs["evidence-path"]).read_text())["reasons"][0]
    assert "`agent-playground` is neither the default branch nor listed in agents.bases" in reason
    runs = [c for c in github.check_runs(REPO, head_sha=head) if c.name == CHECK]
    assert runs[-1].conclusion == "failure"
    github.assert_no_violations()


def test_a_branch_outside_agents_branches_gets_a_neutral_check(
    origin: GitRepo, github: GitHubFake, tmp_path: Path
) -> None:
    head = origin.git("rev-parse", "feature/docs")
    result = push(origin, github, "feature/docs", tmp_path)
    assert result.code == 0, result.stdout + result.stderr
    assert result.outputs == {"verdict": "", "run-id": result.outputs["run-id"]}
    (check,) = [c for c in github.check_runs(REPO, head_sha=head) if c.name == CHECK]
    assert (check.conclusion, check.output["title"]) == ("neutral", "not an agent branch — not gated")
    assert "feature/docs does not match agents.branches" in result.summary
    github.assert_no_violations()


def test_a_superseded_push_is_cancelled_without_running(
    origin: GitRepo, github: GitHubFake, tmp_path: Path
) -> None:
    """The push of an older commit arrives after the branch moved on: only the head is verified."""
    older = origin.git("rev-parse", "agent/refactor-orders~1")
    workspace = checkout(origin, "agent/refactor-orders", tmp_path / "workspace")
    event = push_event(origin, "agent/refactor-orders", github, sha=older)
    token = github.installation_token(REPO)
    result = run_action(tmp_path, workspace, event, {"github-token": token}, fake=github)
    assert result.code == 0, result.stdout + result.stderr
    assert result.outputs["verdict"] == ""
    (check,) = [c for c in github.check_runs(REPO, head_sha=older) if c.name == CHECK]
    assert (check.conclusion, check.output["title"]) == ("cancelled", "superseded")
    assert "superseded: agent/refactor-orders moved to" in check.output["summary"]
    assert "plan" not in result.stdout  # no stage ran
    github.assert_no_violations()


def test_a_config_missing_at_the_base_is_a_config_error(
    origin: GitRepo, github: GitHubFake, tmp_path: Path
) -> None:
    """The config input is a path read at the trusted base; the checkout's copy (the agent's) never counts."""
    workspace = checkout(origin, "agent/refactor-orders", tmp_path / "workspace")
    (workspace / "ci").mkdir()
    (workspace / "ci" / "loopgate.yml").write_text((workspace / ".loopgate.yml").read_text())
    event = push_event(origin, "agent/refactor-orders", github)
    inputs = {"github-token": github.installation_token(REPO), "config": "ci/loopgate.yml"}
    result = run_action(tmp_path, workspace, event, inputs, fake=github)
    assert result.code == 2, result.stdout + result.stderr
    assert result.outputs["verdict"] == "error"
    reason = json.loads(Path(result.outputs["evidence-path"]).read_text())["reasons"][0]
    assert reason.startswith("ci/loopgate.yml not found on main")
    github.assert_no_violations()
