"""Per-fork copies of a service's declared state (DESIGN "Data")."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bot.config import InfrastructureError


def copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy through SQLite's backup API, safe while the baseline keeps writing."""
    if not source.is_file():
        raise InfrastructureError(f"state database {source} is missing in the baseline")
    target.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=10)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise InfrastructureError(f"could not copy state {source}: {exc}") from None
    finally:
        src.close()
