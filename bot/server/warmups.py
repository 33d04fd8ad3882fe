"""Which pushes warm a baseline: a push of the repository's default branch, from an installation.

Agent branches are verified against the default branch's head (or a base its config lists), so
when that head moves, the next run's baseline is known before the run arrives. Starting it then
takes the baseline's cold start (seconds) out of the first run's time to verdict. The default branch
comes from the payload (`repository.default_branch`), which GitHub signs with the rest.
"""

from __future__ import annotations

from typing import Any

from bot.github.events import Push
from bot.store.snapshots import NewWarmup

WARMING = "; baseline warm-up queued"
"""Appended to the webhook's answer for a push that queued (or updated) a warm-up."""


def default_branch(payload: dict[str, Any]) -> str | None:
    repository = payload.get("repository")
    value = repository.get("default_branch") if isinstance(repository, dict) else None
    return value if isinstance(value, str) and value else None


def warmup_for(push: Push, payload: dict[str, Any], delivery_id: str) -> NewWarmup | None:
    """The warm-up a push asks for, None unless it moved the default branch of an installed
    repository (a branch push, not a deletion: `ignored_push` filtered those)."""
    if push.branch is None or push.installation_id is None or push.branch != default_branch(payload):
        return None
    return NewWarmup(
        repo=push.repository.full_name,
        branch=push.branch,
        head_sha=push.after,
        clone_url=push.repository.clone_url,
        installation_id=push.installation_id,
        delivery_id=delivery_id,
    )
