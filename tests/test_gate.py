"""Gating decisions, as a pure function: only `pass` opens or readies a PR."""

from __future__ import annotations

import pytest

from bot.config.schema import Agents
from bot.evidence import Verdict
from bot.github.gate import Action, OpenPull, gate_actions, is_gated

OPEN = OpenPull(number=7, node_id="PR_7", draft=False)
DRAFT = OpenPull(number=7, node_id="PR_7", draft=True)


def test_pass_without_a_pr_opens_one_unless_disabled() -> None:
    assert gate_actions(Verdict.PASS, Agents(), None, drafted_by_us=False) == [Action.OPEN_PR]
    assert gate_actions(Verdict.PASS, Agents(open_pr=False), None, drafted_by_us=False) == []


def test_pass_readies_only_a_draft_loopgate_made() -> None:
    assert gate_actions(Verdict.PASS, Agents(), DRAFT, drafted_by_us=True) == [Action.MARK_READY]
    assert gate_actions(Verdict.PASS, Agents(), DRAFT, drafted_by_us=False) == []  # the author's draft
    assert gate_actions(Verdict.PASS, Agents(), OPEN, drafted_by_us=False) == []


@pytest.mark.parametrize("verdict", [Verdict.FAIL, Verdict.ERROR, Verdict.INCONCLUSIVE, None])
def test_anything_but_pass_never_opens_and_drafts_an_open_pr(verdict: Verdict | None) -> None:
    assert gate_actions(verdict, Agents(), None, drafted_by_us=False) == []
    assert gate_actions(verdict, Agents(), OPEN, drafted_by_us=False) == [Action.CONVERT_TO_DRAFT]
    assert gate_actions(verdict, Agents(draft_on_failure=False), OPEN, drafted_by_us=False) == []
    assert gate_actions(verdict, Agents(), DRAFT, drafted_by_us=True) == []


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
