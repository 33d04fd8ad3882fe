"""The durable store: webhook deliveries, App installations and the run queue.

`Store.open(url)` connects (SQLite under `LOOPGATE_STATE_DIR` by default, or PostgreSQL by URL),
migrates to head and hands back a thread-safe Store whose methods are each one transaction and return
frozen snapshots. Schema changes are Alembic revisions; `bot.store.migrate` says how to make one.
"""

from bot.store.snapshots import (
    CommentSlot,
    DeliverySnapshot,
    InstallationSnapshot,
    NewReport,
    NewRun,
    NewWarmup,
    ReportSnapshot,
    RunSnapshot,
    RunStatus,
    WarmupSnapshot,
    WarmupStatus,
)
from bot.store.store import ROUTING_KEY, LostClaim, Store, UnknownRun

__all__ = [
    "ROUTING_KEY",
    "CommentSlot",
    "DeliverySnapshot",
    "InstallationSnapshot",
    "LostClaim",
    "NewReport",
    "NewRun",
    "NewWarmup",
    "ReportSnapshot",
    "RunSnapshot",
    "RunStatus",
    "Store",
    "UnknownRun",
    "WarmupSnapshot",
    "WarmupStatus",
]
