"""Garbage collection: what belongs to owners gone, or was left half started or half stopped."""

from __future__ import annotations

import contextlib

from bot.config import InfrastructureError
from bot.runtimes.local.baselines import Baselines
from bot.runtimes.local.helpers import infrastructure
from bot.runtimes.local.processes import ProcessRef
from bot.runtimes.local.registry import EnvRecord


class Collector(Baselines):
    """`loopgate gc`: reclaiming what no live owner holds any more."""

    # -- garbage collection ------------------------------------------------------------------------

    @infrastructure
    def gc(self) -> list[str]:
        """Remove what belongs to owners that are no longer alive, what was left half started or half
        stopped, and what an unreadable record ran (found through its journal); nothing else."""
        removed: list[str] = []
        for env_id in self.registry.env_ids():
            with self.registry.lock(env_id):
                removed += self._gc_env(env_id)
        if self.postgres_site().release():
            removed.append("loopgate's own PostgreSQL cluster (it held no database any more)")
        return removed

    def _gc_env(self, env_id: str) -> list[str]:
        """One env, under its lock."""
        env = self.registry.load_env(env_id)
        if env is None:
            why = self.registry.env_problem(env_id)
            self._purge_env(env_id)
            return [f"env {env_id} ({'incomplete' if why == 'missing' else f'record {why}'})"]
        removed = [self._gc_sandbox(env, key) for key in self.registry.sandbox_keys(env_id)]
        gone = [line for line in removed if line]
        abandoned = _abandoned(env.state, env.starter)
        owner_gone = env.owner is not None and not env.owner.alive()
        if abandoned is None and owner_gone and not self.registry.sandboxes(env_id):
            abandoned = f"owner pid {env.owner.pid if env.owner else '?'} is gone"
        if abandoned is not None:
            self._stop_env(env)
            gone.append(f"baseline {env_id} ({abandoned})")
        return gone

    def _gc_sandbox(self, env: EnvRecord, key: str) -> str | None:
        if not self.registry.sandbox_dir(env.env_id, key).is_dir():
            return None  # a control, gone with its sandbox
        sandbox = self.registry.load_sandbox(env.env_id, key)
        if sandbox is None:
            why = self.registry.sandbox_problem(env.env_id, key)
            self._purge_dir(self.registry.sandbox_dir(env.env_id, key), [])
            return f"sandbox {key} (record {why})"
        abandoned = _abandoned(sandbox.state, sandbox.starter)
        if sandbox.owner is not None and not sandbox.owner.alive():
            abandoned = f"owner pid {sandbox.owner.pid} is gone"
        if abandoned is None:
            return None
        if sandbox.routed:
            # Unrouted first; a data plane that is gone too does not keep the rest from going.
            sandbox.routed = False
            self.registry.save_sandbox(sandbox)
            with contextlib.suppress(InfrastructureError):
                self._apply_routes(env.env_id)
        self._teardown_record(env, sandbox, unroute=False)
        return f"sandbox {key} ({abandoned})"


def _abandoned(state: str, starter: ProcessRef | None) -> str | None:
    """Why a record left `starting` or `stopping` is no one's any more; None while it is someone's."""
    if state == "ready" or (starter is not None and starter.alive()):
        return None
    return f"left {state} by pid {starter.pid if starter else '?'}, which is gone"
