"""The Store's pull requests: those loopgate drafted, and their sticky comments."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from bot.evidence import utcnow
from bot.store.base import StoreBase
from bot.store.models import PullComment, PullDraft
from bot.store.snapshots import CommentSlot


class PullRequests(StoreBase):
    """Pull requests loopgate made drafts, and each one's sticky comment."""

    # Pull requests loopgate drafted

    def mark_drafted(self, repo: str, number: int, run_id: str | None) -> None:
        """Loopgate made PR #number a draft: a later pass of its branch may mark it ready."""
        values = {"run_id": run_id, "drafted_at": utcnow()}
        stmt = (
            self._insert(PullDraft)
            .values({"repo": repo, "number": number, **values})
            .on_conflict_do_update(index_elements=["repo", "number"], set_=values)
        )
        with self._session("recording a draft", write=True) as session:
            session.execute(stmt)

    def clear_drafted(self, repo: str, number: int) -> bool:
        """The PR is ready (loopgate or its author made it so); False when loopgate had not drafted it."""
        with self._session("clearing a draft", write=True) as session:
            row = session.get(PullDraft, (repo, number))
            if row is None:
                return False
            session.delete(row)
            return True

    def drafted_by_us(self, repo: str, number: int) -> bool:
        with self._session("reading a draft") as session:
            return session.get(PullDraft, (repo, number)) is not None

    # Sticky comments

    @contextmanager
    def comment_lock(self, repo: str, number: int) -> Iterator[CommentSlot]:
        """Hold PR #number's sticky comment across replicas while it is found or created.

        PostgreSQL: a transaction-scoped advisory lock, held until the comment id is stored. SQLite
        serves one machine; the adapter's in-process lock serialises the upsert there, and holding
        a write transaction across a GitHub call would stall every other writer, so none is held."""
        if self.backend != "postgresql":
            slot = CommentSlot(repo, number, self.comment_id(repo, number))
            yield slot
            if slot.comment_id is not None:
                with self._session("storing a comment id", write=True) as session:
                    _store_comment(session, self._insert(PullComment), slot)
            return
        with self._session("locking a sticky comment", write=True) as session:
            key = f"loopgate-comment:{repo}:{number}"
            session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key})
            row = session.get(PullComment, (repo, number))
            slot = CommentSlot(repo, number, row.comment_id if row else None)
            yield slot
            if slot.comment_id is not None:
                _store_comment(session, self._insert(PullComment), slot)

    def comment_id(self, repo: str, number: int) -> int | None:
        with self._session("reading a comment id") as session:
            row = session.get(PullComment, (repo, number))
            return None if row is None else row.comment_id


def _store_comment(session: Session, insert_: postgresql.Insert | sqlite.Insert, slot: CommentSlot) -> None:
    values = {"comment_id": slot.comment_id, "updated_at": utcnow()}
    stmt = insert_.values({"repo": slot.repo, "number": slot.number, **values}).on_conflict_do_update(
        index_elements=["repo", "number"], set_=values
    )
    session.execute(stmt)
