"""Which PRs loopgate made drafts, read from GitHub's own record of who drafted them.

GitHub records every `convert_to_draft` and `ready_for_review` of a PR as an issue event with its actor.
Loopgate drafted a PR iff the latest of those is a `convert_to_draft` by loopgate's own login: an author
who drafts (or readies and drafts again) by hand is the latest actor, and an agent pushing commits cannot
write events under loopgate's login. This needs no state, so the Action (which keeps none between
workflow runs) reads it; the App keeps its own record and reads GitHub's only when it has none.
"""

from __future__ import annotations

from bot.github.client import DraftChange, RepoClient
from bot.github.publish import Drafts


class GitHubRecord:
    """`Drafts` from the PR's issue events. GitHub writes them itself, so marking and clearing are no-ops."""

    def __init__(self, client: RepoClient) -> None:
        self._client = client

    def drafted_by_us(self, repo: str, number: int) -> bool:
        if repo != self._client.full_name:
            raise ValueError(f"a client of {self._client.full_name} cannot read drafts of {repo}")
        change = self._client.last_draft_change(number)
        return change == DraftChange("convert_to_draft", self._client.app.bot_login())

    def mark_drafted(self, repo: str, number: int, run_id: str | None) -> None:
        return None

    def clear_drafted(self, repo: str, number: int) -> bool:
        return False


class KeptOrRecorded:
    """`Drafts` kept by the caller (the App's store), falling back to GitHub's record for a PR the kept
    one does not know (a fresh database): either says loopgate drafted it."""

    def __init__(self, kept: Drafts, recorded: Drafts) -> None:
        self._kept = kept
        self._recorded = recorded

    def drafted_by_us(self, repo: str, number: int) -> bool:
        return self._kept.drafted_by_us(repo, number) or self._recorded.drafted_by_us(repo, number)

    def mark_drafted(self, repo: str, number: int, run_id: str | None) -> None:
        self._kept.mark_drafted(repo, number, run_id)

    def clear_drafted(self, repo: str, number: int) -> bool:
        return self._kept.clear_drafted(repo, number)
