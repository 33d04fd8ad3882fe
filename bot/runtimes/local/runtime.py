"""The local runtime: services as processes, one Envoy in front of them, git worktrees as sources.

One baseline per (repository, base commit) is shared by every sandbox; a sandbox adds forks of the
changed services and routes for its routing key, never restarting Envoy or the baseline.
"""

from __future__ import annotations

import subprocess
import threading
import time
from functools import partial
from pathlib import Path

from bot.config import Config, InfrastructureError
from bot.config.schema import Seed
from bot.runtimes.git import Git
from bot.runtimes.local import pause, pristine, seedlog
from bot.runtimes.local.allowlist import child_env, env_var_name
from bot.runtimes.local.collect import Collector
from bot.runtimes.local.envoy import DataPlane, EnvoyError
from bot.runtimes.local.helpers import (
    NOT_STARTED,
    PORT_ATTEMPTS,
    _in_order,
    _run_build,
    _start_on_free_port,
    _wait,
    infrastructure,
)
from bot.runtimes.local.ports import free_ports, ports_from
from bot.runtimes.local.postgres import database_name
from bot.runtimes.local.processes import ProcessRef, cause_line, stop_group, tail
from bot.runtimes.local.registry import EnvRecord, ProcessRecord, env_id_for
from bot.runtimes.local.suites import ACCESS_LOG_SETTLE_S, Suites
from bot.runtimes.protocol import Baseline, BaselineError, ObservedRequest, Source

__all__ = ["ACCESS_LOG_SETTLE_S", "PORT_ATTEMPTS", "LocalRuntime", "infrastructure"]

CLAIM_POLL_S = 0.05
"""How often a run waiting for another's start of the same baseline looks again."""
CLAIM_WAIT_S = 900.0
"""How long it waits at most: past that, a start is taken as stuck and begun again."""


class LocalRuntime(Suites, Collector):
    """Every part of the local runtime, and starting a baseline (its `free_ports` is this module's)."""

    # -- baseline ----------------------------------------------------------------------------------

    @infrastructure
    def up_baseline(self, base: Source, config: Config) -> Baseline:
        return self.start_baseline(self.claim_baseline(base, config))

    @property
    def overlap(self) -> bool:
        return self.settings.overlap == "on"

    @infrastructure
    def claim_baseline(self, base: Source, config: Config) -> Baseline:
        """A healthy running baseline of `base` (reused), else a new one recorded `starting` by this
        process, its listener addresses chosen, for `start_baseline` to start. The env lock is held to
        decide, not for the start: a sandbox can be made on the claimed baseline and build meanwhile, and
        another run of the same base waits for this start instead of stopping it."""
        self.confinement.check()  # before anything starts: no run may go ahead unconfined by accident
        env_id = env_id_for(base.repo, base.sha)
        deadline = time.monotonic() + CLAIM_WAIT_S
        while True:
            with self.registry.lock(env_id):
                record = self.registry.load_env(env_id)
                if record is not None and record.state == "ready" and self._env_healthy(record):
                    if self.persistent and record.owner is not None:
                        record.owner = None
                        self.registry.save_env(record)
                    return self._baseline(record, reused=True)
                if not _starting_elsewhere(record) or time.monotonic() > deadline:
                    # A `starting` env whose starter is gone (or stuck past the wait) is never reused.
                    if record is not None:
                        self._stop_env(record)
                    else:
                        self._purge_env(env_id)  # a corrupt record's leftovers, if any
                    return self._baseline(self._claim_env(env_id, base, config), reused=False)
            time.sleep(CLAIM_POLL_S)

    @infrastructure
    def start_baseline(self, baseline: Baseline) -> Baseline:
        """Start what `claim_baseline` claimed (a reused baseline is returned as it is). On a failure
        the env is stopped with every sandbox made on it meanwhile, their builds too: BaselineError."""
        if baseline.reused:
            return baseline
        record = self.registry.load_env(baseline.env_id)
        if record is None or record.state != "starting" or record.starter != ProcessRef.current():
            raise BaselineError(f"baseline {baseline.env_id} was stopped before it started")
        self._start_env(record, baseline.base, Config.model_validate_json(record.config_json))
        return self._baseline(record, reused=False)

    def _claim_env(self, env_id: str, base: Source, config: Config) -> EnvRecord:
        """Recorded `starting`, this process its starter, with the listener ports Envoy will try first
        (a build on the claimed baseline gets its peers' addresses) and the databases it will make."""
        self.registry.env_dir(env_id).mkdir(parents=True, exist_ok=True)
        record = EnvRecord(
            env_id=env_id,
            repo=str(base.repo.resolve()),
            base_sha=base.sha,
            owner=self._owner(),
            state="starting",
            starter=ProcessRef.current(),
            config_json=config.model_dump_json(),
            listeners=self._listener_ports(sorted(config.services)),
        )
        record.databases = _postgres_names(record.env_id, config)  # recorded before they exist
        record.roles = list(record.databases)  # each database's role has its name
        self.registry.save_env(record)
        return record

    def _listener_ports(self, names: list[str]) -> dict[str, int]:
        if self.settings.envoy_base_port:
            ports = ports_from(self.settings.envoy_base_port, len(names), "Envoy")
        else:
            ports = free_ports(len(names))
        return dict(zip(names, ports, strict=True))

    def _start_env(self, record: EnvRecord, base: Source, config: Config) -> None:
        """Journal each part before it is made, `ready` only once every part is healthy: a kill at any
        moment leaves a record `gc` reads. Outside the env lock (see `claim_baseline`): each write of
        the record takes it."""
        env_id = record.env_id
        env_dir = self.registry.env_dir(env_id)
        journal = self.registry.env_journal(env_id)
        try:
            journal.worktree(base.repo, env_dir / "worktree")
            Git(base.repo).worktree_add(env_dir / "worktree", base.sha)
            self.confinement.give(env_dir / "worktree")
            journal.checkout(env_dir / "pristine")
            pristine.materialise(base.repo, base.sha, env_dir / "pristine")
            names = sorted(config.services)
            chosen = free_ports(len(names), avoid=set(record.listeners.values()))
            ports = dict(zip(names, chosen, strict=True))
            self._start_envoy(record, ports, config)
            pause.point("envoy-started")
            failed = self._start_baseline_services(record, config, ports)
            if failed:
                # The cause first: not a service held back because what it starts `after` failed.
                name, why = min(failed.items(), key=lambda item: (item[1].startswith(NOT_STARTED), item[0]))
                tails = {n: tail(Path(record.services[n].log)) for n in failed if n in record.services}
                raise BaselineError(f"baseline {name} {why}", tails)
            if config.verify.seed is not None:
                self._seed(record, config.verify.seed)
            with self.registry.lock(env_id):
                record.state, record.starter = "ready", None
                self.registry.save_env(record)
                # Sandboxes made while it started read the access log from here on: not the seed's
                # requests, as when they are made on a running baseline.
                offset = _size(DataPlane(env_dir / "envoy").access_log)
                for sandbox in self.registry.sandboxes(env_id):
                    sandbox.log_offset = max(sandbox.log_offset, offset)
                    self.registry.save_sandbox(sandbox)
        except BaseException:
            with self.registry.lock(env_id):
                self._stop_env(record)
            raise

    def _seed(self, record: EnvRecord, seed: Seed) -> None:
        """`verify.seed` once against the new baseline: untagged, through the data plane, confined as a
        suite is (run from the base commit's pristine checkout), so every fork copies the rows it wrote.
        A failure is the baseline's: BaselineError with the seed's log tail."""
        env_dir = self.registry.env_dir(record.env_id)
        cwd, home, log = env_dir / "pristine", env_dir / "home" / "seed", env_dir / "logs" / "seed.log"
        urls = {env_var_name(n): f"http://127.0.0.1:{port}" for n, port in record.listeners.items()}
        env = child_env(home, urls)
        self.confinement.give(home)
        access_log = DataPlane(env_dir / "envoy").access_log
        span = seedlog.begin(access_log)
        process = self._spawn(
            seed.run,
            journal=self.registry.env_journal(record.env_id),
            cwd=cwd,
            env=env,
            log=log,
            writable=[home],
            readonly=[cwd],
        )
        ref = ProcessRef.of(process.pid)
        try:
            finished = _wait(process, seed.timeout, None)
        finally:
            stop_group(ref, grace=3)  # also what the seed left running in its group
            process.wait()
        why = _seed_failure(not finished, process.returncode, seed)
        if why is not None:
            raise BaselineError(why, {"seed": tail(log)})
        record.seed = span.model_copy(update={"finished": seedlog.now()})

    def seed_reads(self, baseline: Baseline) -> list[ObservedRequest]:
        record = self.registry.load_env(baseline.env_id)
        if record is None or record.seed is None:
            return []
        plane = DataPlane(self.registry.env_dir(record.env_id) / "envoy")
        config = Config.model_validate_json(record.config_json)
        return seedlog.seed_reads(plane.access_log, record.seed, config.routing)

    def _start_envoy(self, record: EnvRecord, ports: dict[str, int], config: Config) -> None:
        """Envoy on fresh listener ports, again on others when one was taken meanwhile (unless the
        operator fixed them: `envoy_base_port`)."""
        names = sorted(config.services)
        plane = DataPlane(self.registry.env_dir(record.env_id) / "envoy")
        self.registry.env_journal(record.env_id).process_starting(plane.envoy_log)
        for attempt in range(1, PORT_ATTEMPTS + 1):
            if attempt > 1 or sorted(record.listeners) != names:  # the claimed ports first
                record.listeners = self._listener_ports(names)
            with self.registry.lock(record.env_id):
                self.registry.save_env(record)
            try:
                plane.start(
                    self._spec(record, ports, {}, config), concurrency=self.settings.envoy_concurrency
                )
                return
            except EnvoyError as exc:
                retry = "already in use" in str(exc) and not self.settings.envoy_base_port
                if not retry or attempt == PORT_ATTEMPTS:
                    raise BaselineError(str(exc), {"envoy": tail(plane.envoy_log)}) from None

    def _start_baseline_services(
        self, record: EnvRecord, config: Config, ports: dict[str, int]
    ) -> dict[str, str]:
        """Every baseline service, in parallel but each after those its `after:` names are healthy;
        returns why those that failed did. A service that had to move to another port gets its route
        updated at once, before any service that starts after it calls it through Envoy."""
        names = sorted(config.services)
        after = {name: config.services[name].local_spec.after for name in names}
        start = partial(self._start_baseline_service, record, config, ports, threading.Lock())
        results = _in_order({name: partial(start, name, ports[name]) for name in names}, after)
        with self.registry.lock(record.env_id):
            self.registry.save_env(record)
        return {name: why for name, why in results.items() if why is not None}

    def _start_baseline_service(
        self,
        record: EnvRecord,
        config: Config,
        planned: dict[str, int],
        recording: threading.Lock,
        name: str,
        port: int,
    ) -> str | None:
        """`recording` serialises the starts' writes to the shared `record`, its file and the routes;
        `planned` are the ports Envoy was started with (no sandbox routes on a baseline being made)."""
        spec = config.services[name]
        env_dir = self.registry.env_dir(record.env_id)
        cwd = env_dir / "worktree" / spec.local_spec.cwd
        log = env_dir / "logs" / f"{name}.log"
        state, home = env_dir / "state" / name, env_dir / "home" / name
        extra = self._service_env(record, name, spec, state)
        env = child_env(home, extra, spec.local_spec)
        self.confinement.give(home, state)
        journal = self.registry.env_journal(record.env_id)
        launch = partial(
            self._spawn,
            journal=journal,
            cwd=cwd,
            env=env,
            log=log,
            writable=[env_dir / "worktree", home, state],
        )
        if not cwd.is_dir():
            return f"cannot start: cwd {spec.local_spec.cwd} does not exist at the base commit"
        if spec.state is not None and spec.state.postgres is not None:
            database = database_name(record.env_id, spec.state.postgres.database)
            journal.database(database)
            try:
                with self._postgres() as postgres:
                    env["LOOPGATE_STATE"] = postgres.create(database)  # its own role's URL
            except InfrastructureError as exc:
                return f"cannot start: {exc}"
            pause.point("database-created")
        if spec.local_spec.build:
            why = _run_build(spec, launch)
            if why:
                return f"{why}: {cause_line(log)}"

        def started(process: subprocess.Popen[bytes], at: int) -> None:
            pause.point("service-spawned")
            with recording:
                record.services[name] = ProcessRecord(
                    service=name, port=at, process=ProcessRef.of(process.pid), log=str(log)
                )

        why = _start_on_free_port(spec, launch, log, port, started, env)
        if why:
            return f"{why}: {cause_line(log)}"
        if record.services[name].port != port:  # Envoy still points at the port it could not bind
            with recording:
                self.registry.save_env(record)
                ports = planned | {other: p.port for other, p in record.services.items()}
                try:
                    DataPlane(env_dir / "envoy").apply(self._spec(record, ports, {}, config))
                except EnvoyError as exc:
                    return f"cannot route to its new port {record.services[name].port}: {exc}"
        return None


def _starting_elsewhere(record: EnvRecord | None) -> bool:
    """Whether another run (or thread) is starting the env right now: its claimer is alive."""
    return (
        record is not None
        and record.state == "starting"
        and record.starter is not None
        and record.starter.alive()
    )


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _seed_failure(timed_out: bool, code: int | None, seed: Seed) -> str | None:
    if timed_out:
        return f"the seed (verify.seed) did not finish within {seed.timeout:g} s"
    if code != 0:
        return f"the seed (verify.seed) exited with {code}"
    return None


def _postgres_names(owner: str, config: Config) -> list[str]:
    """The database (and role) of every service with Postgres state, for the baseline `owner`."""
    return [
        database_name(owner, spec.state.postgres.database)
        for _, spec in sorted(config.services.items())
        if spec.state is not None and spec.state.postgres is not None
    ]
