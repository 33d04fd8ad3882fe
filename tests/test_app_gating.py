"""What a hostile agent tried in issue #7, as a user sees it on GitHub: a trusted base only, a verdict
gates only its own commit, superseding follows the branch head, and loopgate's drafts are data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from bot.github.client import RepoClient
from tests.app_harness import REPO, AppServer, adapted, app_server
from tests.app_harness import push_payload as shop_push
from tests.conftest import SHOP, make_shop
from tests.github_fake import GitHubFake
from tests.gitrepo import GitRepo

CHECK = "loopgate / sandbox verification"
BREAK = SHOP / "changes" / "contract-break.patch"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> GitRepo:
    repo = make_shop(tmp_path_factory.mktemp("gating") / "shop", [], controls=False)
    config = (repo.path / ".loopgate.yml").read_text()
    repo.write(".loopgate.yml", config + 'agents:\n  bases: ["release/*"]\n')
    repo.commit("team: release branches are trusted bases")
    weakened = config.split("verify:")[0] + "verify:\n  suites: []\n"
    repo.branch("evil", {".loopgate.yml": weakened})  # a base of the agent's own making...
    repo.branch("release/1", {".loopgate.yml": weakened + 'agents:\n  bases: ["**"]\n'})
    repo.branch("release/x/evil", {".loopgate.yml": weakened + 'agents:\n  bases: ["**"]\n'})
    return repo


def push(fake: GitHubFake, server: AppServer, shop: GitRepo, branch: str, sha: str, before: str) -> None:
    payload = shop_push(shop, branch, sha, before, installation_id=fake.installation_id(REPO))
    assert server.deliver("push", payload).status_code == 202


ORDERS = "services/orders/orders_app.py"


def crash(shop: GitRepo) -> dict[str, str]:
    """A change that fails in a second (its orders fork exits at start): for tests of what is done
    with a failing verdict, not of why it fails."""
    return {ORDERS: shop.git("show", f"main:{ORDERS}") + "\nraise SystemExit(3)\n"}


def commits(shop: GitRepo, branch: str, *steps: dict[str, str] | Path) -> list[str]:
    """Commits on a new branch off main, one per step (files to write, or a patch to apply)."""
    shop.git("checkout", "-q", "-b", branch, "main")
    made = []
    for step in steps:
        if isinstance(step, Path):
            shop.git("apply", "--index", str(step))
        else:
            for name, text in step.items():
                shop.write(name, text)
        made.append(shop.commit(f"agent: step {len(made) + 1}"))
    shop.git("checkout", "-q", "main")
    return made


def checks(fake: GitHubFake, head: str) -> list[Any]:
    return [c for c in fake.check_runs(REPO, head_sha=head) if c.name == CHECK]


def evidence(server: AppServer, run: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = server.api(f"/api/runs/{run['id']}").json()
    return found


def wait_for_attempt(server: AppServer, sha: str, attempt: int, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [r for r in server.runs(sha=sha) if r["attempt"] == attempt and r["status"] == "completed"]
        if done:
            return done[0]
        time.sleep(0.3)
    raise AssertionError(f"attempt {attempt} of {sha[:12]} never completed: {server.runs(sha=sha)}")


def test_a_pr_retargeted_to_an_untrusted_base_fails_naming_it(
    shop: GitRepo, fake: GitHubFake, server: AppServer
) -> None:
    main = shop.git("rev-parse", "main")
    (head,) = commits(shop, "agent/retarget", {"docs/GUIDE.md": "how to\n"})
    pull = fake.open_pull(REPO, "agent/retarget", "main", title="agent change")
    push(fake, server, shop, "agent/retarget", head, main)
    assert server.wait_for_run(head)["verdict"] == "pass"
    assert not fake.pull(REPO, pull.number).draft

    previous = fake.retarget(REPO, pull.number, "evil")
    opened = adapted(
        fake, "pull_request", "opened", number=pull.number, head_ref="agent/retarget", head_sha=head,
        base_ref="evil", base_sha=shop.git("rev-parse", "evil"),
    )  # fmt: skip
    # The published examples hold no `edited` payload: it is the PR object GitHub sends on `opened`, with
    # the action and the `changes.base` a retarget adds; `deliver` validates it against `edited`'s schema.
    changes = {"base": {"ref": {"from": previous}, "sha": {"from": main}}}
    answer = server.deliver("pull_request", {**opened, "action": "edited", "changes": changes})
    assert answer.status_code == 202 and "queued run" in answer.json()["status"]

    run = wait_for_attempt(server, head, 2)
    assert (run["verdict"], run["conclusion"]) == ("error", "failure")
    newest = max(checks(fake, head), key=lambda c: c.id)
    assert newest.conclusion == "failure"
    reason = (
        f"pull request #{pull.number} targets `evil`, which is neither the default branch nor listed in"
        " agents.bases of main's .loopgate.yml"
    )
    # As GitHub shows the Markdown: escapes gone; zero-width spaces (which keep `#1` unlinked) unseen.
    assert reason in newest.output["summary"].replace("\\", "").replace("\u200b", "")
    found = evidence(server, run)
    assert (found["reasons"], found["trigger"], found["base"]["ref"]) == ([reason], "base_changed", "evil")
    assert fake.pull(REPO, pull.number).draft, "a PR on an untrusted base is held back, never readied"
    assert [p.number for p in fake.pulls(REPO) if p.head_ref == "agent/retarget"] == [pull.number]
    fake.assert_no_violations()


def test_only_the_default_branch_config_lists_trusted_bases(
    shop: GitRepo, fake: GitHubFake, server: AppServer
) -> None:
    """`release/*` in main's config trusts `release/1` (one segment, so not `release/x/evil`); the
    `**` that `release/x/evil` lists in its own config trusts nothing."""
    main = shop.git("rev-parse", "main")
    trusted, untrusted = (
        commits(shop, branch, {"docs/BASE.md": branch})[0]
        for branch in ("agent/to-release", "agent/to-nested")
    )
    fake.open_pull(REPO, "agent/to-release", "release/1")
    nested = fake.open_pull(REPO, "agent/to-nested", "release/x/evil")
    push(fake, server, shop, "agent/to-release", trusted, main)
    push(fake, server, shop, "agent/to-nested", untrusted, main)

    run = server.wait_for_run(trusted)
    assert (run["verdict"], evidence(server, run)["base"]["ref"]) == ("pass", "release/1")
    refused = evidence(server, server.wait_for_run(untrusted))
    assert (refused["verdict"], refused["error_kind"]) == ("error", "config")
    assert refused["reasons"] == [
        f"pull request #{nested.number} targets `release/x/evil`, which is neither the default branch nor"
        " listed in agents.bases of main's .loopgate.yml"
    ]
    fake.assert_no_violations()


def test_a_late_older_push_never_cancels_the_newer_run_nor_opens_a_pr(
    shop: GitRepo, fake: GitHubFake, server: AppServer
) -> None:
    main = shop.git("rev-parse", "main")
    older, newer = commits(shop, "agent/late", {"docs/LATE.md": "passes\n"}, BREAK)
    push(fake, server, shop, "agent/late", newer, older)
    server.wait_for_run(newer, status=("running", "completed"))
    push(fake, server, shop, "agent/late", older, main)  # GitHub delivered the first push last

    settled = server.wait_for_run(newer, timeout=240)
    assert (settled["status"], settled["verdict"]) == ("completed", "fail"), (
        "the newer run was never cancelled"
    )
    late = server.wait_for_run(older, status=("cancelled",), timeout=60)
    assert late["conclusion"] == "cancelled" and late["verdict"] is None
    # Cancelled when it started (not the head), or while still queued by the newer run's worker, which
    # found it waiting: either way no verdict, and any check on it says what superseded it.
    summaries = [(c.conclusion, c.output["summary"].replace("\u200b", "")) for c in checks(fake, older)]
    assert all(conclusion == "cancelled" and newer[:12] in summary for conclusion, summary in summaries)
    assert not [p for p in fake.pulls(REPO) if p.head_ref == "agent/late"], "the older pass opened no PR"
    fake.assert_no_violations()


def test_a_rerun_of_an_old_passing_commit_never_readies_the_pr(
    shop: GitRepo, fake: GitHubFake, server: AppServer
) -> None:
    main = shop.git("rev-parse", "main")
    good, bad = commits(shop, "agent/rerun-old", {"docs/RERUN.md": "passes\n"}, crash(shop))
    shop.git("branch", "-f", "agent/rerun-old", good)  # the branch is at `good` while it is verified
    pull = fake.open_pull(REPO, "agent/rerun-old", "main", title="agent change")
    push(fake, server, shop, "agent/rerun-old", good, main)
    assert server.wait_for_run(good)["verdict"] == "pass"
    shop.git("branch", "-f", "agent/rerun-old", bad)
    push(fake, server, shop, "agent/rerun-old", bad, good)
    assert server.wait_for_run(bad, timeout=240)["verdict"] == "fail"
    assert fake.pull(REPO, pull.number).draft  # loopgate drafted it

    (old_check,) = checks(fake, good)
    rerun = adapted(
        fake, "check_run", "rerequested", head_sha=good, head_ref="agent/rerun-old",
        check_run_id=old_check.id, check_name=CHECK, app_id=fake.app_id,
    )  # fmt: skip
    assert server.deliver("check_run", rerun).status_code == 202

    again = wait_for_attempt(server, good, 2)
    assert (again["verdict"], again["conclusion"]) == ("pass", "success")  # its own check records it
    assert f"not gating: the branch head moved to {bad[:12]}…" in evidence(server, again)["notes"]
    assert fake.pull(REPO, pull.number).draft, "a pass of an old commit readied the failing PR"
    (comment,) = fake.comments(REPO, pull.number)
    assert "FAIL" in comment.body, "the PR's comment still speaks for its head"
    assert [p.number for p in fake.pulls(REPO) if p.head_ref == "agent/rerun-old"] == [pull.number]
    fake.assert_no_violations()


def test_drafts_are_data_the_authors_draft_stays_and_loopgates_survives_a_restart(
    shop: GitRepo, fake: GitHubFake, tmp_path: Path
) -> None:
    """Loopgate drafts two PRs; the author readies one and drafts it again by hand; after a restart,
    fixes pass on both: only loopgate's own draft is marked ready."""
    main = shop.git("rev-parse", "main")
    broken = crash(shop)
    heads = {b: commits(shop, b, broken, {"docs/WHOSE.md": b})[-1] for b in ("agent/ours", "agent/authors")}
    pulls = {branch: fake.open_pull(REPO, branch, "main", title=branch).number for branch in heads}
    state = tmp_path / "state"
    with app_server(fake, state) as first:
        for branch, head in heads.items():
            push(fake, first, shop, branch, head, main)
            assert first.wait_for_run(head, timeout=240)["verdict"] == "fail"
            assert fake.pull(REPO, pulls[branch]).draft
        fake.set_draft(REPO, pulls["agent/authors"], False)  # the author readies it...
        readied = adapted(
            fake, "pull_request", "ready_for_review.with-installation", number=pulls["agent/authors"],
            head_ref="agent/authors", head_sha=heads["agent/authors"], base_ref="main", draft=False,
        )  # fmt: skip
        assert first.deliver("pull_request", readied).status_code == 202
        assert not first.store.drafted_by_us(REPO, pulls["agent/authors"])  # answered after recording
        fake.set_draft(REPO, pulls["agent/authors"], True)  # ...and makes it a draft again by hand
    with app_server(fake, state) as second:
        for branch, head in heads.items():
            shop.git("checkout", "-q", branch)
            shop.git("checkout", "-q", "main", "--", ORDERS)
            fixed = shop.commit("agent: orders starts again")
            shop.git("checkout", "-q", "main")
            push(fake, second, shop, branch, fixed, head)
            assert second.wait_for_run(fixed, timeout=240)["verdict"] == "pass"
    assert not fake.pull(REPO, pulls["agent/ours"]).draft, "loopgate's draft was forgotten across the restart"
    assert fake.pull(REPO, pulls["agent/authors"]).draft, "the author's own draft was marked ready"
    fake.assert_no_violations()


def test_a_draft_loopgate_made_before_its_database_was_lost_is_readied_from_githubs_record(
    shop: GitRepo, fake: GitHubFake, server: AppServer
) -> None:
    """The store has no record of either draft (a fresh database): GitHub's record says loopgate drafted
    one, its author the other; a pass readies only loopgate's."""
    main = shop.git("rev-parse", "main")
    heads = {b: commits(shop, b, {"docs/WHOSE.md": b})[-1] for b in ("agent/lost-ours", "agent/lost-authors")}
    pulls = {branch: fake.open_pull(REPO, branch, "main", title=branch).number for branch in heads}
    as_loopgate = RepoClient.for_token(fake.url, fake.installation_token(REPO), REPO, fake.bot_login)
    as_loopgate.convert_to_draft(pulls["agent/lost-ours"])  # by the App's token, as a worker did
    fake.set_draft(REPO, pulls["agent/lost-authors"], True)  # by its author
    for branch, head in heads.items():
        push(fake, server, shop, branch, head, main)
        assert server.wait_for_run(head, timeout=240)["verdict"] == "pass"
    assert not fake.pull(REPO, pulls["agent/lost-ours"]).draft, "loopgate's draft was not found on GitHub"
    assert fake.pull(REPO, pulls["agent/lost-authors"]).draft, "the author's own draft was marked ready"
    assert [e.actor.login for e in fake.issue_events(REPO, pulls["agent/lost-ours"])] == [fake.bot_login] * 2
    fake.assert_no_violations()
