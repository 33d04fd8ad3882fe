"""Which PRs the Action made drafts: it cannot know. A workflow run keeps no state for the next one, so
the Action never claims a draft as its own: a failing verdict still turns an open PR into a draft, and a
later pass leaves that draft for a person to mark ready (the App, which remembers, marks it ready)."""

from __future__ import annotations


class NoMemory:
    """`bot.github.publish.Drafts` without a store."""

    def drafted_by_us(self, repo: str, number: int) -> bool:
        return False

    def mark_drafted(self, repo: str, number: int, run_id: str | None) -> None:
        return None

    def clear_drafted(self, repo: str, number: int) -> bool:
        return False
