"""Baselines once started: finding them, their health, releasing, retiring and stopping them."""

from __future__ import annotations

import contextlib
from functools import partial
from pathlib import Path

from bot.config import Service
from bot.runtimes.local.allowlist import env_var_name
from bot.runtimes.local.cleanup import Cleanup, Leftovers, sandbox_processes
from bot.runtimes.local.envoy import DataPlane, EnvoyError
from bot.runtimes.local.helpers import infrastructure
from bot.runtimes.local.processes import ProcessRef, tail
from bot.runtimes.local.registry import EnvRecord, env_id_for
from bot.runtimes.protocol import Baseline, Source


class Baselines(Cleanup):
    """The shared baseline of each (repository, base commit), after `up_baseline` started it."""

    def find_baseline(self, repo: Path, base_sha: str) -> Baseline | None:
        record = self.registry.load_env(env_id_for(repo, base_sha))
        if record is None or not self._env_healthy(record):
            return None
        return self._baseline(record, reused=True)

    def baselines(self) -> list[tuple[EnvRecord, bool]]:
        records = (self.registry.load_env(env_id) for env_id in self.registry.env_ids())
        return [(r, self._env_healthy(r)) for r in records if r is not None]

    def env_problems(self) -> dict[str, str]:
        """Env directories whose record cannot be read, and why (`gc` still stops what they ran)."""
        problems = {env_id: self.registry.env_problem(env_id) for env_id in self.registry.env_ids()}
        return {env_id: why for env_id, why in problems.items() if why is not None}

    def env_health(self, record: EnvRecord) -> str:
        """One word or phrase for `loopgate env status`."""
        if record.state != "ready":
            return self._env_problem(record) or record.state
        return "healthy" if self._env_healthy(record) else f"unhealthy: {self._env_problem(record)}"

    @infrastructure
    def release_baseline(self, baseline: Baseline) -> None:
        with self.registry.lock(baseline.env_id):
            record = self.registry.load_env(baseline.env_id)
            if record is None or record.owner is None or record.owner != ProcessRef.current():
                return
            others = [s for s in self.registry.sandboxes(record.env_id) if _owner_alive(s.owner)]
            if others:
                # Still in use: hand it to a sandbox owner, so `gc` reclaims it once they are gone.
                record.owner = others[0].owner
                self.registry.save_env(record)
                return
            self._stop_env(record)

    @infrastructure
    def retire_stale_baselines(self, current: Source) -> list[str]:
        repo, me, retired = str(current.repo.resolve()), ProcessRef.current(), []
        for env_id in self.registry.env_ids():
            with self.registry.lock(env_id):
                record = self.registry.load_env(env_id)
                if (
                    record is None
                    or record.state != "ready"  # one being started (a run's claim) or stopped
                    or record.repo != repo
                    or record.base_sha == current.sha
                    or record.owner != me
                ):
                    continue
                if any(_owner_alive(s.owner) for s in self.registry.sandboxes(env_id)):
                    continue
                self._stop_env(record)
                retired.append(env_id)
        return retired

    @infrastructure
    def down(self, env_id: str) -> None:
        with self.registry.lock(env_id):
            record = self.registry.load_env(env_id)
            if record is None:
                self._purge_env(env_id)
                return
            self._stop_env(record)  # its sandboxes with it: no route update for a data plane that stops

    def _baseline(self, record: EnvRecord, *, reused: bool) -> Baseline:
        urls = {name: f"http://127.0.0.1:{port}" for name, port in record.listeners.items()}
        return Baseline(
            env_id=record.env_id,
            base=Source(repo=Path(record.repo), sha=record.base_sha),
            entry_urls=urls,
            reused=reused,
        )

    def _env_healthy(self, record: EnvRecord) -> bool:
        return self._env_problem(record) is None

    def _env_problem(self, record: EnvRecord) -> str | None:
        if record.state != "ready":
            if record.starter is not None and record.starter.alive():
                return f"{record.state} (pid {record.starter.pid})"
            pid = record.starter.pid if record.starter else "?"
            return f"broken: left {record.state} by pid {pid}, which is gone (`loopgate gc` removes it)"
        if not DataPlane(self.registry.env_dir(record.env_id) / "envoy").is_running():
            return "Envoy is not running"
        dead = self._dead_services(record)
        if dead:
            return f"baseline {', '.join(dead)} exited (log: {record.services[dead[0]].log})"
        return None

    def _dead_services(self, record: EnvRecord) -> list[str]:
        return sorted(name for name, p in record.services.items() if not p.process.alive())

    @infrastructure
    def baseline_health(self, baseline: Baseline) -> str | None:
        record = self.registry.load_env(baseline.env_id)
        return "the baseline's record is gone" if record is None else self._env_problem(record)

    @infrastructure
    def baseline_logs(self, baseline: Baseline) -> dict[str, str]:
        record = self.registry.load_env(baseline.env_id)
        if record is None:
            return {}
        return {name: tail(Path(record.services[name].log)) for name in self._dead_services(record)}

    def _service_env(self, record: EnvRecord, name: str, spec: Service, state_dir: Path) -> dict[str, str]:
        """Postgres state is not here: its URL carries the password of a role made with its database,
        so it is set where that database is made (`_start_baseline_service`, `fork`)."""
        extra = {env_var_name(peer): f"http://127.0.0.1:{port}" for peer, port in record.listeners.items()}
        extra["LOOPGATE_SERVICE"] = name
        if spec.state is not None and spec.state.sqlite is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
            extra["LOOPGATE_STATE"] = str(state_dir / spec.state.sqlite)
        return extra

    def _stop_env(self, record: EnvRecord) -> None:
        """Marked `stopping` first, so a kill midway leaves a record `gc` finishes. Then everything at
        once: Envoy, the services and every sandbox's forks and jobs stop together (Envoy's connections
        to them close as it exits, and what ignores SIGTERM gets SIGKILL after a short grace), the
        databases are dropped meanwhile; worktrees and checkouts go next, the directories last."""
        record.state, record.starter = "stopping", ProcessRef.current()
        self.registry.save_env(record)
        env_dir = self.registry.env_dir(record.env_id)
        leftovers = Leftovers(processes=[service.process for service in record.services.values()])
        for sandbox in self.registry.sandboxes(record.env_id):
            sandbox.state, sandbox.starter = "stopping", ProcessRef.current()
            self.registry.save_sandbox(sandbox)
            leftovers.processes += sandbox_processes(sandbox)
            leftovers.databases += sandbox.databases
            sandbox_dir = self.registry.sandbox_dir(record.env_id, sandbox.routing_key)
            leftovers.worktrees.append((Path(record.repo), sandbox_dir / "worktree"))  # older records
        # Records older than journals: the env's own worktree and checkout.
        leftovers.worktrees.append((Path(record.repo), env_dir / "worktree"))
        leftovers.checkouts.append(env_dir / "pristine")
        self._purge_env(
            record.env_id,
            databases=record.databases,
            also=leftovers,
            alongside=[partial(_stop_envoy, DataPlane(env_dir / "envoy"))],
        )


def _stop_envoy(plane: DataPlane) -> None:
    with contextlib.suppress(EnvoyError):  # an unreadable state.json: stop_writers finds Envoy
        plane.stop()


def _owner_alive(owner: ProcessRef | None) -> bool:
    return owner is None or owner.alive()
