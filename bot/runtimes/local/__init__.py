"""The embedded default runtime: processes, git worktrees and one Envoy on this machine."""

from bot.runtimes.local.runtime import LocalRuntime

__all__ = ["LocalRuntime"]
