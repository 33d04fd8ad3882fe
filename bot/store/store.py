"""The Store: every read and write of deliveries, installations and runs, one transaction each.

The Store is composed of one part per idea, each in its own module: `deliveries`, `installations`,
`runs` (the queue), `worker` (claims, heartbeats, conclusions), `outbox` (reports for GitHub),
`pulls` (drafted pull requests, sticky comments) and `warmups` (baselines started before a run asks).
`base` holds the engine and transactions they share; `rows` the snapshots and statements several of
them use.
"""

from __future__ import annotations

from pathlib import Path

from bot.config import RuntimeSettings
from bot.store import database, migrate
from bot.store.acks import AckWriter
from bot.store.base import LostClaim, UnknownRun
from bot.store.deliveries import Deliveries, DeliveryOutcome
from bot.store.installations import Installations
from bot.store.outbox import Outbox
from bot.store.pulls import PullRequests
from bot.store.runs import Runs
from bot.store.warmups import Warmups
from bot.store.worker import ROUTING_KEY, WorkerRuns

__all__ = ["ROUTING_KEY", "DeliveryOutcome", "LostClaim", "Store", "UnknownRun"]


class Store(Deliveries, Installations, Runs, WorkerRuns, Outbox, PullRequests, Warmups):
    """The durable state of the App. Thread-safe; open one per process and share it."""

    @classmethod
    def open(cls, url: str | None = None, *, state_dir: Path | None = None) -> Store:
        """Connect and migrate to head. Without a URL: SQLite in `state_dir` (`LOOPGATE_STATE_DIR`)."""
        if url is None:
            url = database.default_url(state_dir or RuntimeSettings().state_dir)
        parsed = database.normalise(url)
        engine = database.create(parsed)
        try:
            with database.translated(parsed, "connecting and migrating"):
                migrate.upgrade(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, parsed)

    def ack_writer(self) -> AckWriter:
        """A writer of webhook acknowledgements on a connection of its own (see `bot.store.acks`),
        queueing on this Store's SQLite writer lock."""
        return AckWriter(self._engine, self._url, self._sqlite_writers)
