"""Gating decisions, as pure functions: only `pass` opens or readies a PR, only on a trusted base, and
only while the verified commit is still the branch head and the PR's head."""

from __future__ import annotations

from functools import partial

import pytest

from bot.config.schema import Agents
from bot.evidence import Verdict
from bot.github.gate import (
    Action,
    OpenPull,
    gate_actions,
    is_gated,
    is_trusted_base,
    not_gating,
    untrusted_base,
)

HEAD, NEWER = "a" * 40, "b" * 40
OPEN = OpenPull(number=7, node_id="PR_7", draft=False, head_sha=HEAD, base="main")
DRAFT = OpenPull(number=7, node_id="PR_7", draft=True, head_sha=HEAD, base="main")
# The run verified HEAD and HEAD is still the branch head: the verdict may gate.
at_head = partial(gate_actions, head_sha=HEAD, branch_head=HEAD)


def test_pass_without_a_pr_opens_one_unless_disabled() -> None:
    assert at_head(Verdict.PASS, Agents(), None, drafted_by_us=False) == [Action.OPEN_PR]
    assert at_head(Verdict.PASS, Agents(open_pr=False), None, drafted_by_us=False) == []


def test_pass_readies_only_a_draft_loopgate_made() -> None:
    assert at_head(Verdict.PASS, Agents(), DRAFT, drafted_by_us=True) == [Action.MARK_READY]
    assert at_head(Verdict.PASS, Agents(), DRAFT, drafted_by_us=False) == []  # the author's draft
    assert at_head(Verdict.PASS, Agents(), OPEN, drafted_by_us=False) == []


@pytest.mark.parametrize("verdict", [Verdict.FAIL, Verdict.ERROR, Verdict.INCONCLUSIVE, None])
def test_anything_but_pass_never_opens_and_drafts_an_open_pr(verdict: Verdict | None) -> None:
    assert at_head(verdict, Agents(), None, drafted_by_us=False) == []
    assert at_head(verdict, Agents(), OPEN, drafted_by_us=False) == [Action.CONVERT_TO_DRAFT]
    assert at_head(verdict, Agents(draft_on_failure=False), OPEN, drafted_by_us=False) == []
    assert at_head(verdict, Agents(), DRAFT, drafted_by_us=True) == []


@pytest.mark.parametrize("verdict", [Verdict.PASS, Verdict.FAIL])
@pytest.mark.parametrize("pull", [None, OPEN, DRAFT])
def test_a_verdict_on_a_commit_the_branch_moved_past_does_nothing(
    verdict: Verdict, pull: OpenPull | None
) -> None:
    moved = gate_actions(verdict, Agents(), pull, drafted_by_us=True, head_sha=HEAD, branch_head=NEWER)
    gone = gate_actions(verdict, Agents(), pull, drafted_by_us=True, head_sha=HEAD, branch_head=None)
    assert moved == [] and gone == []


def test_a_pr_whose_head_differs_from_the_verified_commit_is_left_alone() -> None:
    lagging = OpenPull(number=7, node_id="PR_7", draft=True, head_sha=NEWER, base="main")
    assert at_head(Verdict.PASS, Agents(), lagging, drafted_by_us=True) == []
    assert at_head(Verdict.FAIL, Agents(), OpenPull(7, "PR_7", False, NEWER, "main"), False) == []


def test_not_gating_says_which_head_moved() -> None:
    assert not_gating(HEAD, HEAD, OPEN) is None
    assert not_gating(HEAD, NEWER, OPEN) == f"not gating: the branch head moved to {NEWER[:12]}…"
    assert not_gating(HEAD, None, None) == "not gating: the branch no longer exists"
    lagging = OpenPull(number=9, node_id="PR_9", draft=False, head_sha=NEWER, base="main")
    assert not_gating(HEAD, HEAD, lagging) == f"not gating: pull request #9's head is {NEWER[:12]}…"


@pytest.mark.parametrize(
    ("base", "bases", "trusted"),
    [
        ("main", [], True),
        ("evil", [], False),
        ("release", ["release"], True),
        ("release/evil", ["release"], False),  # a name is exact, not a directory
        ("release/1.2", ["release/*"], True),
        ("release/1.2/evil", ["release/*"], False),  # `*` stays in one segment
        ("release/1.2/hotfix", ["release/**"], True),
        ("releases", ["release?"], True),
        ("xrelease", ["release"], False),
    ],
)
def test_trusted_bases_are_the_default_branch_and_agents_bases(
    base: str, bases: list[str], trusted: bool
) -> None:
    assert is_trusted_base(base, "main", Agents(bases=bases)) is trusted


def test_without_a_default_config_only_the_default_branch_is_trusted() -> None:
    assert is_trusted_base("main", "main", None) and not is_trusted_base("develop", "main", None)


def test_the_untrusted_base_error_names_the_pr_the_base_and_where_trust_comes_from() -> None:
    assert untrusted_base("evil", "main", 12) == (
        "pull request #12 targets `evil`, which is neither the default branch nor listed in"
        " agents.bases of main's .loopgate.yml"
    )
    assert untrusted_base("evil", "trunk", None).startswith("agents.pr_base names `evil`")


@pytest.mark.parametrize(
    ("branch", "gated"),
    [
        ("agent/x", True),
        ("devin/fix/deep", True),
        ("codex/a", True),
        ("main", False),
        ("feature/agent", False),
        (None, False),
    ],
)
def test_default_agent_branches(branch: str | None, gated: bool) -> None:
    assert is_gated(branch) is gated


def test_configured_branches_replace_the_defaults() -> None:
    agents = Agents(branches=["bots/**"])
    assert is_gated("bots/renovate/x", agents) and not is_gated("agent/x", agents)
