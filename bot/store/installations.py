"""The Store's App installations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.evidence import utcnow
from bot.store.base import StoreBase
from bot.store.models import Installation
from bot.store.snapshots import InstallationSnapshot


class Installations(StoreBase):
    """The App's installations and the repositories each covers."""

    # Installations

    def upsert_installation(
        self, installation_id: int, account: str, repositories: Sequence[str], suspended: bool = False
    ) -> InstallationSnapshot:
        values: dict[str, Any] = {
            "account": account,
            "repositories": list(repositories),
            "suspended": suspended,
            "updated_at": utcnow(),
        }
        stmt = (
            self._insert(Installation)
            .values({"id": installation_id, **values})
            .on_conflict_do_update(index_elements=["id"], set_=values)
        )
        with self._session("recording an installation", write=True) as session:
            session.execute(stmt)
            row = session.get_one(Installation, installation_id, populate_existing=True)
            return _installation(row)

    def remove_installation(self, installation_id: int) -> bool:
        """Forget an uninstalled App installation; False when it was not known."""
        with self._session("removing an installation", write=True) as session:
            row = session.get(Installation, installation_id)
            if row is None:
                return False
            session.delete(row)
            return True

    def installation(self, installation_id: int) -> InstallationSnapshot | None:
        with self._session("reading an installation") as session:
            row = session.get(Installation, installation_id)
            return None if row is None else _installation(row)


def _installation(row: Installation) -> InstallationSnapshot:
    return InstallationSnapshot(
        id=row.id,
        account=row.account,
        repositories=tuple(row.repositories),
        suspended=row.suspended,
        updated_at=row.updated_at,
    )
