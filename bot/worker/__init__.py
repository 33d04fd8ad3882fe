"""Workers: claim queued runs, drive the pipeline, publish, and recover after a restart."""

from bot.worker.executor import RunEnvironment, RunExecutor
from bot.worker.mirror import Mirrors
from bot.worker.pool import WorkerPool, recover

__all__ = ["Mirrors", "RunEnvironment", "RunExecutor", "WorkerPool", "recover"]
