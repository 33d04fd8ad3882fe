"""Which PostgreSQL holds services' declared state: the configured server, or loopgate's own cluster.

`LOOPGATE_POSTGRES_MODE`: `server` always uses `LOOPGATE_POSTGRES_URL`; `own` always runs loopgate's
own cluster (pgcluster.py); `auto` (the default) probes the configured server once per process and
runs the own cluster only when that server would let a role log in without its password (a `trust`
rule, common on development machines), because then per-fork roles would keep no fork out of
another's database.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bot.config import RuntimeSettings
from bot.runtimes.local.pgcluster import OwnCluster
from bot.runtimes.local.postgres import Postgres, redact

TRUSTS = "the configured server trusts loopback logins"


class PostgresSite:
    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self.root = settings.postgres_dir or settings.state_dir / "postgres"
        self.cluster = OwnCluster(self.root, state_dir=settings.state_dir)

    @contextmanager
    def admin(self) -> Iterator[Postgres]:
        """An admin handle on the PostgreSQL in use, kept running while the block runs."""
        reason = self.own_reason()
        if reason is None:
            yield Postgres(self.settings.postgres_url, self.root)
            return
        with self.cluster.in_use(reason) as url:
            yield Postgres(url, self.root)

    def own_reason(self) -> str | None:
        """Why loopgate runs its own cluster, or None when the configured server is used."""
        if self.settings.postgres_mode == "server":
            return None
        if self.settings.postgres_mode == "own":
            return "LOOPGATE_POSTGRES_MODE=own"
        running = self.cluster.running()
        if running is not None:
            # It runs only while it holds databases: they must be found where they were made, even
            # if the server has been reconfigured or is down since.
            return running.reason
        return TRUSTS if _bypass(self.settings.postgres_url, self.root) else None

    def release(self) -> bool:
        """Stop the own cluster once it holds no loopgate database; True when it stopped."""
        return self.cluster.stop_if_unused()

    def note(self) -> str:
        """One line for `loopgate env status`; probes nothing."""
        state = self.cluster.running()
        if state is not None:
            return (
                f"service state: loopgate's own PostgreSQL cluster at 127.0.0.1:{state.port} ({state.reason})"
            )
        return f"service state: PostgreSQL at {redact(self.settings.postgres_url)}"


_PROBED: dict[str, str | None] = {}
_PROBE_LOCK = threading.Lock()


def _bypass(url: str, scratch: Path) -> str | None:
    """The server's password bypass, probed once per process (parallel baseline starts share it)."""
    with _PROBE_LOCK:
        if url not in _PROBED:
            _PROBED[url] = Postgres(url, scratch).password_bypass()
        return _PROBED[url]
