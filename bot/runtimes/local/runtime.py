"""The local runtime: services as processes, one Envoy in front of them, git worktrees as sources.

One baseline per (repository, base commit) is shared by every sandbox; a sandbox adds forks of the
changed services and routes for its routing key, never restarting Envoy or the baseline.
"""

from __future__ import annotations

import contextlib
import functools
import re
import secrets
import shutil
import string
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Literal, ParamSpec, TypeVar

from bot.config import Config, InfrastructureError, LoopgateError, RuntimeSettings, Service
from bot.runtimes.git import Git
from bot.runtimes.local import pause, pristine
from bot.runtimes.local.accesslog import read_access_log
from bot.runtimes.local.allowlist import child_env, env_var_name
from bot.runtimes.local.confine import Confinement
from bot.runtimes.local.envoy import DataPlane, EnvoyError
from bot.runtimes.local.journal import Journal
from bot.runtimes.local.pgsite import PostgresSite
from bot.runtimes.local.ports import free_port, ports_from
from bot.runtimes.local.postgres import Postgres, database_name
from bot.runtimes.local.processes import (
    ProcessRef,
    spawn,
    stop_group,
    stop_groups,
    stop_writers,
    tail,
    wait_healthy,
)
from bot.runtimes.local.registry import EnvRecord, ProcessRecord, Registry, SandboxRecord, env_id_for
from bot.runtimes.local.state import copy_sqlite
from bot.runtimes.local.xds import DataPlaneSpec, Upstream
from bot.runtimes.protocol import (
    Baseline,
    BaselineError,
    BuildOutcome,
    ForkOutcome,
    ObservedRequest,
    Sandbox,
    Source,
    SuiteOutcome,
    SuiteRequest,
)

_KEY_ALPHABET = string.ascii_lowercase + string.digits
PORT_ATTEMPTS = 4
"""A port chosen free can be taken before the process binds it: that many fresh ports are tried."""
_ADDRESS_IN_USE = re.compile(r"address already in use|EADDRINUSE|errno 98\b", re.IGNORECASE)
_P = ParamSpec("_P")
_T = TypeVar("_T")


def infrastructure(method: Callable[_P, _T]) -> Callable[_P, _T]:
    """Whatever goes wrong inside the runtime is an infrastructure error (exit 3), never a traceback
    and never blamed on the change: the change's own faults are outcomes (`ForkOutcome`), not raises."""

    @functools.wraps(method)
    def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(*args, **kwargs)
        except LoopgateError:
            raise
        except Exception as exc:
            raise InfrastructureError(
                f"local runtime: {method.__name__} failed: {type(exc).__name__}: {exc}"
            ) from exc

    return guarded


ACCESS_LOG_SETTLE_S = 0.25
"""Envoy flushes its access log every 100 ms: past two flushes, every answered request is in it."""


def new_routing_key() -> str:
    return "".join(secrets.choice(_KEY_ALPHABET) for _ in range(10))


class LocalRuntime:
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

    # -- baseline ----------------------------------------------------------------------------------

    @infrastructure
    def up_baseline(self, base: Source, config: Config) -> Baseline:
        self.confinement.check()  # before anything starts: no run may go ahead unconfined by accident
        env_id = env_id_for(base.repo, base.sha)
        with self.registry.lock(env_id):
            record = self.registry.load_env(env_id)
            # Under the lock a `starting` env is one whose starter died midway: never reused.
            if record is not None and record.state == "ready" and self._env_healthy(record):
                if self.persistent and record.owner is not None:
                    record.owner = None
                    self.registry.save_env(record)
                return self._baseline(record, reused=True)
            if record is not None:
                self._stop_env(record)
            else:
                self._purge_env(env_id)  # a corrupt record's leftovers, if any
            record = self._start_env(env_id, base, config)
            return self._baseline(record, reused=False)

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
            for sandbox in self.registry.sandboxes(env_id):
                self._teardown_record(record, sandbox)
            self._stop_env(record)

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

    def _start_env(self, env_id: str, base: Source, config: Config) -> EnvRecord:
        """Record first (state `starting`, this process its starter), journal each part before it is
        made, `ready` only once every part is healthy: a kill at any moment leaves a record `gc` reads."""
        names = sorted(config.services)
        env_dir = self.registry.env_dir(env_id)
        env_dir.mkdir(parents=True, exist_ok=True)
        record = EnvRecord(
            env_id=env_id,
            repo=str(base.repo.resolve()),
            base_sha=base.sha,
            owner=self._owner(),
            state="starting",
            starter=ProcessRef.current(),
            config_json=config.model_dump_json(),
            listeners={},
        )
        record.databases = _postgres_names(record.env_id, config)  # recorded before they exist
        record.roles = list(record.databases)  # each database's role has its name
        self.registry.save_env(record)
        journal = self.registry.env_journal(env_id)
        try:
            journal.worktree(base.repo, env_dir / "worktree")
            Git(base.repo).worktree_add(env_dir / "worktree", base.sha)
            self.confinement.give(env_dir / "worktree")
            journal.checkout(env_dir / "pristine")
            pristine.materialise(base.repo, base.sha, env_dir / "pristine")
            ports = {name: free_port() for name in names}
            self._start_envoy(record, ports, config)
            pause.point("envoy-started")
            failed = self._start_baseline_services(record, config, ports)
            if failed:
                name, why = sorted(failed.items())[0]
                tails = {n: tail(Path(record.services[n].log)) for n in failed if n in record.services}
                raise BaselineError(f"baseline {name} {why}", tails)
            record.state, record.starter = "ready", None
            self.registry.save_env(record)
            return record
        except BaseException:
            self._stop_env(record)
            raise

    def _start_envoy(self, record: EnvRecord, ports: dict[str, int], config: Config) -> None:
        """Envoy on fresh listener ports, again on others when one was taken meanwhile (unless the
        operator fixed them: `envoy_base_port`)."""
        names = sorted(config.services)
        plane = DataPlane(self.registry.env_dir(record.env_id) / "envoy")
        self.registry.env_journal(record.env_id).process_starting(plane.envoy_log)
        for attempt in range(1, PORT_ATTEMPTS + 1):
            if self.settings.envoy_base_port:
                listener_ports = ports_from(self.settings.envoy_base_port, len(names), "Envoy")
            else:
                listener_ports = [free_port() for _ in names]
            record.listeners = dict(zip(names, listener_ports, strict=True))
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
        """Every baseline service, in parallel; returns why those that failed did. A service that had
        to move to another port gets its route updated."""
        names = sorted(config.services)
        results = _parallel(
            {name: partial(self._start_baseline_service, record, config, name, ports[name]) for name in names}
        )
        self.registry.save_env(record)
        failed = {name: why for name, why in results.items() if why is not None}
        moved = any(p.port != ports[name] for name, p in record.services.items())
        if moved and not failed:
            self._apply_routes(record.env_id)
        return failed

    def _start_baseline_service(self, record: EnvRecord, config: Config, name: str, port: int) -> str | None:
        spec = config.services[name]
        env_dir = self.registry.env_dir(record.env_id)
        cwd = env_dir / "worktree" / spec.local.cwd
        log = env_dir / "logs" / f"{name}.log"
        state, home = env_dir / "state" / name, env_dir / "home" / name
        extra = self._service_env(record, name, spec, state)
        env = child_env(home, extra)
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
            return f"cannot start: cwd {spec.local.cwd} does not exist at the base commit"
        if spec.state is not None and spec.state.postgres is not None:
            database = database_name(record.env_id, spec.state.postgres.database)
            journal.database(database)
            try:
                with self._postgres() as postgres:
                    env["LOOPGATE_STATE"] = postgres.create(database)  # its own role's URL
            except InfrastructureError as exc:
                return f"cannot start: {exc}"
            pause.point("database-created")
        if spec.local.build:
            why = _run_build(spec, launch)
            if why:
                return f"{why}: {_last_line(log)}"

        def started(process: subprocess.Popen[bytes], at: int) -> None:
            pause.point("service-spawned")
            record.services[name] = ProcessRecord(
                service=name, port=at, process=ProcessRef.of(process.pid), log=str(log)
            )

        why = _start_on_free_port(spec, launch, log, port, started)
        return f"{why}: {_last_line(log)}" if why else None

    def _service_env(self, record: EnvRecord, name: str, spec: Service, state_dir: Path) -> dict[str, str]:
        """Postgres state is not here: its URL carries the password of a role made with its database,
        so it is set where that database is made (`_start_baseline_service`, `fork`)."""
        extra = {env_var_name(peer): f"http://127.0.0.1:{port}" for peer, port in record.listeners.items()}
        extra["LOOPGATE_SERVICE"] = name
        if spec.state is not None and spec.state.sqlite is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
            extra["LOOPGATE_STATE"] = str(state_dir / spec.state.sqlite)
        return extra

    def postgres_site(self) -> PostgresSite:
        """Which PostgreSQL holds services' state: the configured server or loopgate's own cluster."""
        return PostgresSite(self.settings)

    def _postgres(self) -> AbstractContextManager[Postgres]:
        return self.postgres_site().admin()

    def _drop_databases(self, names: list[str], roles: list[str]) -> list[str]:
        """Every database, then every role (a role cannot go while it owns one); errors are returned,
        and one failure does not keep the others."""
        if not names and not roles:
            return []
        errors = []
        try:
            with self._postgres() as postgres:
                for database, role in [(name, None) for name in names] + [(None, role) for role in roles]:
                    try:
                        postgres.drop(database, role)
                    except InfrastructureError as exc:
                        errors.append(str(exc))
        except InfrastructureError as exc:
            errors.append(str(exc))
        return errors

    def _stop_env(self, record: EnvRecord) -> None:
        """Marked `stopping` first, so a kill midway leaves a record `gc` finishes."""
        record.state, record.starter = "stopping", ProcessRef.current()
        self.registry.save_env(record)
        for sandbox in self.registry.sandboxes(record.env_id):
            self._teardown_record(record, sandbox, unroute=False)
        with contextlib.suppress(EnvoyError):  # an unreadable state.json: stop_writers finds Envoy
            DataPlane(self.registry.env_dir(record.env_id) / "envoy").stop()
        stop_groups([service.process for service in record.services.values()])
        env_dir = self.registry.env_dir(record.env_id)
        Git(Path(record.repo)).worktree_remove(env_dir / "worktree")  # a record older than journals
        pristine.remove(env_dir / "pristine")
        self._purge_env(record.env_id, databases=record.databases)

    def _purge_env(self, env_id: str, *, databases: list[str] | None = None) -> list[str]:
        """Remove whatever the journals say was made for the env and its sandboxes, records or not."""
        env_dir = self.registry.env_dir(env_id)
        if not env_dir.exists():
            return []
        dirs = [self.registry.sandbox_dir(env_id, key) for key in self.registry.sandbox_keys(env_id)]
        had_databases = bool(databases) or any(Journal(d).databases() for d in [*dirs, env_dir])
        errors = []
        for sandbox_dir in dirs:
            errors += self._purge_dir(sandbox_dir, [])
        errors += self._purge_dir(env_dir, databases or [])
        if had_databases:
            self.postgres_site().release()  # loopgate's own cluster stops with its last database
        return errors

    def _purge_dir(self, directory: Path, databases: list[str]) -> list[str]:
        """Processes, databases, worktrees and checkouts journalled in `directory`, then the directory."""
        journal = Journal(directory)
        stop_groups([ref for ref in journal.processes() if ref.alive()])
        stop_writers(directory)  # those whose pid never reached the journal
        names = list(dict.fromkeys([*databases, *journal.databases()]))
        errors = self._drop_databases(names, names)  # each database's role has its name
        for repo, worktree in journal.worktrees():
            Git(repo).worktree_remove(worktree)
        for checkout in journal.checkouts():
            pristine.remove(checkout)
        shutil.rmtree(directory, ignore_errors=True)
        return errors

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
        )

    def _apply_routes(self, env_id: str) -> None:
        """Recompute every route of the env from the records on disk; callers hold the env lock."""
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
            DataPlane(self.registry.env_dir(env_id) / "envoy").apply(self._spec(record, ports, forks, config))
        except EnvoyError as exc:
            raise InfrastructureError(str(exc)) from None

    # -- sandboxes ---------------------------------------------------------------------------------

    @infrastructure
    def new_sandbox(self, baseline: Baseline, config: Config, head: Source) -> Sandbox:
        key = new_routing_key()
        plane = DataPlane(self.registry.env_dir(baseline.env_id) / "envoy")
        offset = plane.access_log.stat().st_size if plane.access_log.exists() else 0
        with self.registry.lock(baseline.env_id):
            self.registry.save_sandbox(
                SandboxRecord(
                    routing_key=key,
                    env_id=baseline.env_id,
                    head_sha=head.sha,
                    owner=self._owner(),
                    state="starting",  # `ready` once kept: a kill before then leaves it to gc
                    starter=ProcessRef.current(),
                    log_offset=offset,
                )
            )
        return Sandbox(routing_key=key, baseline=baseline, config=config)

    def load_sandbox(self, key: str) -> Sandbox | None:
        record = self.registry.find_sandbox(key)
        env = self.registry.load_env(record.env_id) if record else None
        if record is None or env is None:
            return None
        config = Config.model_validate_json(env.config_json)
        return Sandbox(routing_key=key, baseline=self._baseline(env, reused=True), config=config)

    def sandboxes(self) -> list[SandboxRecord]:
        return [s for env_id in self.registry.env_ids() for s in self.registry.sandboxes(env_id)]

    def _sandbox_dir(self, sandbox: Sandbox) -> Path:
        return self.registry.sandbox_dir(sandbox.baseline.env_id, sandbox.routing_key)

    def source_dir(self, sandbox: Sandbox) -> Path:
        """The sandbox's checkout of the merge commit, made once, on first use, by whichever of the
        parallel builds gets there first (the env lock serialises them)."""
        worktree = self._sandbox_dir(sandbox) / "worktree"
        # Checked under the lock only: `git worktree add` makes the directory before it has filled
        # it, so a parallel build that saw the directory alone could find its service dir missing.
        with self.registry.lock(sandbox.baseline.env_id):
            if not worktree.is_dir():
                record = self._record(sandbox)
                self._journal(sandbox).worktree(sandbox.baseline.base.repo, worktree)
                Git(sandbox.baseline.base.repo).worktree_add(worktree, record.head_sha)
                self.confinement.give(worktree)
        return worktree

    def _journal(self, sandbox: Sandbox) -> Journal:
        return self.registry.sandbox_journal(sandbox.baseline.env_id, sandbox.routing_key)

    def _record(self, sandbox: Sandbox) -> SandboxRecord:
        record = self.registry.load_sandbox(sandbox.baseline.env_id, sandbox.routing_key)
        if record is None:
            raise InfrastructureError(f"sandbox {sandbox.routing_key} is gone")
        return record

    def _service_context(self, sandbox: Sandbox, service: str, spec: Service) -> tuple[Path, dict[str, str]]:
        sandbox_dir = self._sandbox_dir(sandbox)
        env_record = self.registry.load_env(sandbox.baseline.env_id)
        if env_record is None:
            raise InfrastructureError(f"baseline {sandbox.baseline.env_id} is gone")
        state_dir = sandbox_dir / "state" / service
        extra = self._service_env(env_record, service, spec, state_dir)
        home = sandbox_dir / "home" / service
        env = child_env(home, extra)
        self.confinement.give(home, state_dir)
        return self.source_dir(sandbox) / spec.local.cwd, env

    def _fork_dirs(self, sandbox: Sandbox, service: str) -> list[Path]:
        """All a build or fork may write: the merge worktree, its HOME, its state copy."""
        sandbox_dir = self._sandbox_dir(sandbox)
        return [self.source_dir(sandbox), sandbox_dir / "home" / service, sandbox_dir / "state" / service]

    @infrastructure
    def build(self, sandbox: Sandbox, service: str, spec: Service) -> BuildOutcome:
        record = self._record(sandbox)
        source = f"{record.head_sha[:12]}:{spec.local.cwd}"
        cwd, env = self._service_context(sandbox, service, spec)
        if not cwd.is_dir():
            return BuildOutcome(service, False, source, detail=f"cwd {spec.local.cwd} does not exist")
        if not spec.local.build:
            return BuildOutcome(service, True, source)
        log = self._sandbox_dir(sandbox) / "logs" / f"{service}.build.log"
        launch = self._fork_launcher(sandbox, service, cwd, env, log)
        started = time.monotonic()
        why = _run_build(spec, launch, lambda ref: self._job(sandbox, ref))
        elapsed = int((time.monotonic() - started) * 1000)
        return BuildOutcome(service, why is None, source, duration_ms=elapsed, log_tail=tail(log), detail=why)

    def _fork_launcher(
        self, sandbox: Sandbox, service: str, cwd: Path, env: dict[str, str], log: Path
    ) -> Callable[..., subprocess.Popen[bytes]]:
        """Starts a build or fork command of the sandbox: journaled, confined to its own dirs."""
        return partial(
            self._spawn,
            journal=self._journal(sandbox),
            cwd=cwd,
            env=env,
            log=log,
            writable=self._fork_dirs(sandbox, service),
        )

    @infrastructure
    def fork(self, sandbox: Sandbox, service: str, spec: Service) -> ForkOutcome:
        cwd, env = self._service_context(sandbox, service, spec)
        if spec.state is not None and spec.state.sqlite is not None:
            baseline_state = self.registry.env_dir(sandbox.baseline.env_id) / "state" / service
            copy_sqlite(baseline_state / spec.state.sqlite, Path(env["LOOPGATE_STATE"]))
            self.confinement.give(Path(env["LOOPGATE_STATE"]).parent)
        if spec.state is not None and spec.state.postgres is not None:
            logical = spec.state.postgres.database
            copy = database_name(sandbox.routing_key, logical)
            with self.registry.lock(sandbox.baseline.env_id):
                record = self._record(sandbox)
                record.databases.append(copy)
                record.roles.append(copy)
                self.registry.save_sandbox(record)
                self._journal(sandbox).database(copy)
            with self._postgres() as postgres:
                # The copy's own role: not the baseline's database, nor any other sandbox's.
                env["LOOPGATE_STATE"] = postgres.clone(database_name(sandbox.baseline.env_id, logical), copy)
        log = self._sandbox_dir(sandbox) / "logs" / f"{service}.log"
        launch = self._fork_launcher(sandbox, service, cwd, env, log)
        started = time.monotonic()

        def record_fork(process: subprocess.Popen[bytes], port: int) -> None:
            forked = ProcessRecord(
                service=service, port=port, process=ProcessRef.of(process.pid), log=str(log)
            )
            with self.registry.lock(sandbox.baseline.env_id):
                record = self._record(sandbox)
                record.forks[service] = forked
                self.registry.save_sandbox(record)
            pause.point("fork-spawned")

        why = _start_on_free_port(spec, launch, log, free_port(), record_fork)
        ready_ms = int((time.monotonic() - started) * 1000)
        if why:
            return ForkOutcome(service, "start_failed", ready_ms=ready_ms, log_tail=tail(log), detail=why)
        return ForkOutcome(service, "ready", url=self._record(sandbox).forks[service].url, ready_ms=ready_ms)

    @infrastructure
    def keep(self, sandbox: Sandbox) -> None:
        with self.registry.lock(sandbox.baseline.env_id):
            record = self._record(sandbox)
            record.owner, record.state, record.starter = None, "ready", None
            self.registry.save_sandbox(record)
            env = self.registry.load_env(sandbox.baseline.env_id)
            if env is not None and env.owner is not None:
                env.owner = None
                self.registry.save_env(env)

    @infrastructure
    def route(self, sandbox: Sandbox) -> None:
        self._set_routed(sandbox, True)

    @infrastructure
    def unroute(self, sandbox: Sandbox) -> None:
        self._set_routed(sandbox, False)

    def _set_routed(self, sandbox: Sandbox, routed: bool) -> None:
        with self.registry.lock(sandbox.baseline.env_id):
            record = self._record(sandbox)
            if record.routed == routed:
                return
            record.routed = routed
            self.registry.save_sandbox(record)
            self._apply_routes(sandbox.baseline.env_id)

    def suite_env(
        self, sandbox: Sandbox, target: Literal["sandbox", "baseline"] = "sandbox"
    ) -> dict[str, str]:
        """What a suite (or an agent by hand) needs to address the sandbox; untagged for the baseline,
        so the same entry URLs reach the baseline's services."""
        env = {env_var_name(name): url for name, url in sandbox.baseline.entry_urls.items()}
        if target == "sandbox":
            member = sandbox.config.routing.baggage_member
            env["LOOPGATE_ROUTING_KEY"] = sandbox.routing_key
            env["LOOPGATE_BAGGAGE"] = f"{member}={sandbox.routing_key}"
        return env

    @infrastructure
    def run_suite(self, sandbox: Sandbox, suite: SuiteRequest) -> SuiteOutcome:
        sandbox_dir = self._sandbox_dir(sandbox)
        if suite.source == "base":
            # Never the baseline's worktree: a fork could have rewritten the suite there.
            cwd = self.registry.env_dir(sandbox.baseline.env_id) / "pristine"
        else:
            cwd = self.source_dir(sandbox)
        slug = f"{suite.name}-{suite.source}" + ("-baseline" if suite.target == "baseline" else "")
        junit = sandbox_dir / "junit" / f"{slug}.xml"
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit.unlink(missing_ok=True)
        log = sandbox_dir / "logs" / f"suite-{slug}.log"
        extra = {
            **self.suite_env(sandbox, suite.target),
            "LOOPGATE_JUNIT_XML": str(junit),
            **suite.extra_env,
        }
        home = sandbox_dir / "home" / f"suite-{slug}"
        env = child_env(home, extra)
        self.confinement.give(home, junit.parent)
        started = time.monotonic()
        process = self._spawn(
            suite.command,
            journal=self._journal(sandbox),
            cwd=cwd,
            env=env,
            log=log,
            writable=[home, junit.parent],
            readonly=[cwd],
        )
        ref = ProcessRef.of(process.pid)
        timed_out = False
        with self._job(sandbox, ref):
            try:
                pause.point("suite-running")
                timed_out = not _wait(process, suite.timeout, suite.should_stop)
            finally:
                stop_group(ref, grace=3)  # also ends what the suite left running in its group
                process.wait()
        return SuiteOutcome(
            exit_code=None if timed_out else process.returncode,
            timed_out=timed_out,
            duration_ms=int((time.monotonic() - started) * 1000),
            junit_xml=junit if junit.is_file() else None,
            log_tail=tail(log),
        )

    @contextmanager
    def _job(self, sandbox: Sandbox, ref: ProcessRef) -> Iterator[None]:
        """Record a running build or suite, so teardown and `gc` can stop it if this process dies."""
        with self.registry.lock(sandbox.baseline.env_id):
            record = self._record(sandbox)
            record.jobs.append(ref)
            self.registry.save_sandbox(record)
        try:
            yield
        finally:
            with self.registry.lock(sandbox.baseline.env_id):
                current = self.registry.load_sandbox(sandbox.baseline.env_id, sandbox.routing_key)
                if current is not None:
                    current.jobs = [job for job in current.jobs if job != ref]
                    self.registry.save_sandbox(current)

    @infrastructure
    def observed_requests(self, sandbox: Sandbox) -> list[ObservedRequest]:
        record = self._record(sandbox)
        time.sleep(ACCESS_LOG_SETTLE_S)
        plane = DataPlane(self.registry.env_dir(sandbox.baseline.env_id) / "envoy")
        raw, _ = read_access_log(
            plane.access_log,
            offset=record.log_offset,
            baggage_member=sandbox.config.routing.baggage_member,
            header=sandbox.config.routing.header,
        )
        key = sandbox.routing_key
        # Untagged requests too (never other sandboxes'): in the sandbox's traces they show where the
        # tag was lost.
        return [r for r in raw if r.routing_key in (key, None) or r.target == key]

    @infrastructure
    def teardown(self, sandbox: Sandbox) -> None:
        with self.registry.lock(sandbox.baseline.env_id):
            env = self.registry.load_env(sandbox.baseline.env_id)
            record = self.registry.load_sandbox(sandbox.baseline.env_id, sandbox.routing_key)
            if env is not None and record is not None:
                self._teardown_record(env, record)

    def _teardown_record(self, env: EnvRecord, record: SandboxRecord, *, unroute: bool = True) -> None:
        """Routes first, then processes, then files; each step runs even when an earlier one failed."""
        errors: list[str] = []
        record.state, record.starter = "stopping", ProcessRef.current()
        if record.routed and unroute:
            record.routed = False
            self.registry.save_sandbox(record)
            try:
                self._apply_routes(env.env_id)
            except InfrastructureError as exc:
                errors.append(str(exc))
        else:
            self.registry.save_sandbox(record)
        stop_groups([*record.jobs, *(fork.process for fork in record.forks.values())])
        sandbox_dir = self.registry.sandbox_dir(env.env_id, record.routing_key)
        Git(Path(env.repo)).worktree_remove(sandbox_dir / "worktree")  # a record older than journals
        errors += self._purge_dir(sandbox_dir, record.databases)
        if errors:
            raise InfrastructureError(errors[0])

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


def _wait(process: subprocess.Popen[bytes], timeout: float, should_stop: Callable[[], bool] | None) -> bool:
    """Wait for exit; False when the time ran out or the caller asked to stop."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            process.wait(timeout=min(0.5, max(0.0, deadline - time.monotonic())))
            return True
        except subprocess.TimeoutExpired:
            if should_stop is not None and should_stop():
                return False
    return process.poll() is not None


def _abandoned(state: str, starter: ProcessRef | None) -> str | None:
    """Why a record left `starting` or `stopping` is no one's any more; None while it is someone's."""
    if state == "ready" or (starter is not None and starter.alive()):
        return None
    return f"left {state} by pid {starter.pid if starter else '?'}, which is gone"


def _start_on_free_port(
    spec: Service,
    launch: Callable[[str], subprocess.Popen[bytes]],
    log: Path,
    port: int,
    started: Callable[[subprocess.Popen[bytes], int], None],
) -> str | None:
    """Start the service on `port` and wait until healthy; None when it is, else why not.

    A port chosen free can be bound by someone else before the service binds it: a start that ends
    with "address in use" in its log is retried on a fresh port, and after `PORT_ATTEMPTS` of them it
    is an infrastructure error, never the change's fault. `started` records each process as it runs.
    """
    for _ in range(PORT_ATTEMPTS):
        offset = log.stat().st_size if log.exists() else 0
        process = launch(spec.local.run.replace("{port}", str(port)))
        started(process, port)
        why = wait_healthy(process, f"http://127.0.0.1:{port}{spec.local.health}", spec.local.ready_timeout)
        if why is None or process.poll() is None or not _address_in_use(log, offset):
            return why
        port = free_port()
    raise InfrastructureError(f"{spec.local.run.split()[0]}: every port tried was already in use")


def _address_in_use(log: Path, offset: int) -> bool:
    try:
        with log.open("rb") as handle:
            handle.seek(offset)
            return bool(_ADDRESS_IN_USE.search(handle.read().decode(errors="replace")))
    except FileNotFoundError:
        return False


def _postgres_names(owner: str, config: Config) -> list[str]:
    """The database (and role) of every service with Postgres state, for the baseline `owner`."""
    return [
        database_name(owner, spec.state.postgres.database)
        for _, spec in sorted(config.services.items())
        if spec.state is not None and spec.state.postgres is not None
    ]


def _owner_alive(owner: ProcessRef | None) -> bool:
    return owner is None or owner.alive()


def _run_build(
    spec: Service,
    launch: Callable[[str], subprocess.Popen[bytes]],
    track: Callable[[ProcessRef], AbstractContextManager[None]] = lambda _ref: nullcontext(),
) -> str | None:
    assert spec.local.build is not None
    process = launch(spec.local.build)
    ref = ProcessRef.of(process.pid)
    with track(ref):
        try:
            code = process.wait(timeout=spec.local.build_timeout)
        except subprocess.TimeoutExpired:
            return f"build timed out after {spec.local.build_timeout:g}s"
        finally:
            stop_group(ref, grace=2)
    return f"build exited with code {code}" if code != 0 else None


def _last_line(log: Path) -> str:
    lines = [line for line in tail(log, lines=20).splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else "(no output)"


def _parallel(jobs: dict[str, Callable[[], str | None]]) -> dict[str, str | None]:
    with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}
