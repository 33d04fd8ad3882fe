"""Gating decisions: verdict and PR state in, actions out. Pure, so every rule is a plain test; the
same function serves the App and the Action."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bot.config.globs import matches
from bot.config.schema import DEFAULT_AGENT_BRANCHES, Agents
from bot.evidence import CHECK_CONCLUSIONS, Verdict

CHECK_NAME = "loopgate / sandbox verification"


class Action(StrEnum):
    OPEN_PR = "open_pr"
    CONVERT_TO_DRAFT = "convert_to_draft"
    MARK_READY = "mark_ready"


@dataclass(frozen=True)
class OpenPull:
    number: int
    node_id: str
    draft: bool


def is_gated(branch: str | None, agents: Agents | None = None) -> bool:
    """Does loopgate gate pushes to this branch? Before config is read, the defaults decide."""
    if not branch:
        return False
    return bool(matches(branch, agents.branches if agents else DEFAULT_AGENT_BRANCHES))


def conclusion(verdict: Verdict | None) -> str:
    return CHECK_CONCLUSIONS[verdict] if verdict is not None else "failure"


def gate_actions(
    verdict: Verdict | None, agents: Agents, pull: OpenPull | None, drafted_by_us: bool
) -> list[Action]:
    """Only `pass` opens or readies a PR; anything else may turn an open PR into a draft."""
    if verdict is Verdict.PASS:
        if pull is None:
            return [Action.OPEN_PR] if agents.open_pr else []
        return [Action.MARK_READY] if pull.draft and drafted_by_us else []
    if pull is not None and not pull.draft and agents.draft_on_failure:
        return [Action.CONVERT_TO_DRAFT]
    return []
