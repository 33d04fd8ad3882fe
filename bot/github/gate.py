"""Gating decisions: verdict and PR state in, actions out. Pure, so every rule is a plain test; the
same function serves the App and the Action.

Two rules keep an agent from steering the gate (DESIGN "Base and head", "A verdict gates only its
commit"): the base must be trusted — the default branch or one listed in `agents.bases` of the default
branch's config — and a verdict acts only while its commit is still the branch head and the PR's head.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from bot.config.globs import matches
from bot.config.schema import CONFIG_FILE, DEFAULT_AGENT_BRANCHES, Agents
from bot.evidence import CHECK_CONCLUSIONS, Verdict

CHECK_NAME = "loopgate / sandbox verification"
NOT_GATED = "not an agent branch — not gated"
"""The title of the `neutral` check a branch that is not gated gets, so a required check never blocks
people: App and Action alike."""


class Action(StrEnum):
    OPEN_PR = "open_pr"
    CONVERT_TO_DRAFT = "convert_to_draft"
    MARK_READY = "mark_ready"


@dataclass(frozen=True)
class OpenPull:
    number: int
    node_id: str
    draft: bool
    head_sha: str
    base: str


def is_gated(branch: str | None, agents: Agents | None = None) -> bool:
    """Does loopgate gate pushes to this branch? Before config is read, the defaults decide."""
    if not branch:
        return False
    return bool(matches(branch, agents.branches if agents else DEFAULT_AGENT_BRANCHES))


def conclusion(verdict: Verdict | None) -> str:
    return CHECK_CONCLUSIONS[verdict] if verdict is not None else "failure"


@lru_cache(maxsize=256)
def _branch_glob(pattern: str) -> re.Pattern[str]:
    """A branch glob matched whole: `*` and `?` stay inside one segment, `**` crosses them.

    Not `bot.config.globs`: that is a path dialect where a bare name owns everything below it, so
    listing `release` would trust `release/anything` — a branch an agent can create.
    """
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    wild = {"**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wild.get(part, re.escape(part)) for part in parts))


def is_trusted_base(base: str, default_branch: str, trusted: Agents | None) -> bool:
    """`trusted` is the default branch's `agents` (None when it has no config): never the base's own."""
    if base == default_branch:
        return True
    patterns = trusted.bases if trusted is not None else []
    return any(_branch_glob(pattern).fullmatch(base) for pattern in patterns)


def untrusted_base(base: str, default_branch: str, pull_number: int | None) -> str:
    """The config error for a base the agent may have chosen, naming it and where trust comes from."""
    subject = f"pull request #{pull_number} targets" if pull_number is not None else "agents.pr_base names"
    return (
        f"{subject} `{base}`, which is neither the default branch nor listed in agents.bases"
        f" of {default_branch}'s {CONFIG_FILE}"
    )


def not_gating(head_sha: str, branch_head: str | None, pull: OpenPull | None) -> str | None:
    """Why a verdict on `head_sha` may not open, ready or draft anything now; None when it may."""
    if branch_head is None:
        return "not gating: the branch no longer exists"
    if branch_head != head_sha:
        return f"not gating: the branch head moved to {branch_head[:12]}…"
    if pull is not None and pull.head_sha != head_sha:
        return f"not gating: pull request #{pull.number}'s head is {pull.head_sha[:12]}…"
    return None


def gate_actions(
    verdict: Verdict | None,
    agents: Agents,
    pull: OpenPull | None,
    drafted_by_us: bool,
    *,
    head_sha: str,
    branch_head: str | None,
) -> list[Action]:
    """Only `pass` opens or readies a PR; anything else may turn an open PR into a draft; and
    nothing acts unless the run's commit is still the branch head and the PR's head."""
    if not_gating(head_sha, branch_head, pull) is not None:
        return []
    if verdict is Verdict.PASS:
        if pull is None:
            return [Action.OPEN_PR] if agents.open_pr else []
        return [Action.MARK_READY] if pull.draft and drafted_by_us else []
    if pull is not None and not pull.draft and agents.draft_on_failure:
        return [Action.CONVERT_TO_DRAFT]
    return []
