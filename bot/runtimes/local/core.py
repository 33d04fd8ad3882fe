"""What every part of the local runtime stands on: settings, registry, confinement, spawning,
PostgreSQL access and the data plane's routes."""

from __future__ import annotations

import subprocess
from contextlib import AbstractContextManager
from pathlib import Path

from bot.config import Config, InfrastructureError, RuntimeSettings
from bot.runtimes.local.confine import Confinement
from bot.runtimes.local.envoy import DRAIN_LIMIT_S, DataPlane, EnvoyError
from bot.runtimes.local.journal import Journal
from bot.runtimes.local.pgsite import PostgresSite
from bot.runtimes.local.postgres import Postgres
from bot.runtimes.local.processes import ProcessRef, spawn
from bot.runtimes.local.registry import EnvRecord, Registry
from bot.runtimes.local.xds import DataPlaneSpec, Upstream


class RuntimeCore:
    """Settings, records, confinement; spawning confined processes; PostgreSQL; Envoy routes."""

    def __init__(self, settings: RuntimeSettings, *, persistent: bool = False) -> None:
        """`persistent`: what this process starts outlives it (`env up`, `sandbox create`)."""
        self.settings = settings
        self.registry = Registry(settings.state_dir)
        self.persistent = persistent
        self.confinement = Confinement.create(
            enabled=settings.confine == "on",
            state_dir=settings.state_dir,
            hide=settings.secret_paths(),
            expose=settings.confine_expose,
            uid=settings.confine_uid,
            gid=settings.confine_gid,
        )

    kind = "local"

    @property
    def confined(self) -> bool:
        return self.confinement.enabled

    def _spawn(
        self,
        command: str,
        *,
        journal: Journal,
        cwd: Path,
        env: dict[str, str],
        log: Path,
        writable: list[Path],
        readonly: list[Path] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Agent or team code, confined: it writes only `writable` and dies with a non-persistent owner.
        Journalled before it starts (its log, which is its stdout) and once it runs (its pid)."""
        journal.process_starting(log)
        process = spawn(
            command,
            cwd=cwd,
            env=env,
            log=log,
            confinement=self.confinement,
            writable=writable,
            readonly=readonly or [],
            die_with_parent=not self.persistent,
        )
        journal.process_started(log, ProcessRef.of(process.pid))
        return process

    # -- ownership ---------------------------------------------------------------------------------

    def _owner(self) -> ProcessRef | None:
        return None if self.persistent else ProcessRef.current()

    def postgres_site(self) -> PostgresSite:
        """Which PostgreSQL holds services' state: the configured server or loopgate's own cluster."""
        return PostgresSite(self.settings)

    def _postgres(self) -> AbstractContextManager[Postgres]:
        return self.postgres_site().admin()

    # -- data plane --------------------------------------------------------------------------------

    def _spec(
        self,
        record: EnvRecord,
        baseline_ports: dict[str, int],
        forks: dict[str, dict[str, Upstream]],
        config: Config,
    ) -> DataPlaneSpec:
        return DataPlaneSpec(
            listeners=record.listeners,
            baseline={name: Upstream("127.0.0.1", port) for name, port in baseline_ports.items()},
            forks=forks,
            baggage_member=config.routing.baggage_member,
            header=config.routing.header,
            http2=frozenset(name for name, s in config.services.items() if s.protocol != "http"),
        )

    def _apply_routes(self, env_id: str, *, drain_limit: float = DRAIN_LIMIT_S) -> None:
        """Recompute every route of the env from the records on disk; callers hold the env lock.
        Requests in flight to a fork whose routes go are given `drain_limit` seconds to finish."""
        record = self.registry.load_env(env_id)
        if record is None:
            raise InfrastructureError(f"baseline {env_id} is gone")
        config = Config.model_validate_json(record.config_json)
        forks = {
            s.routing_key: {name: Upstream("127.0.0.1", p.port) for name, p in s.forks.items()}
            for s in self.registry.sandboxes(env_id)
            if s.routed and s.forks
        }
        ports = {name: p.port for name, p in record.services.items()}
        try:
            DataPlane(self.registry.env_dir(env_id) / "envoy").apply(
                self._spec(record, ports, forks, config), drain_limit=drain_limit
            )
        except EnvoyError as exc:
            raise InfrastructureError(str(exc)) from None
