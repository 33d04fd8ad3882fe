"""The local runtime: services as processes, one Envoy in front of them, git worktrees as sources.

One baseline per (repository, base commit) is shared by every sandbox; a sandbox adds forks of the
changed services and routes for its routing key, never restarting Envoy or the baseline.
"""

from __future__ import annotations

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

from bot.config import Config, InfrastructureError, RuntimeSettings, Service
from bot.runtimes.git import Git
from bot.runtimes.local import pristine
from bot.runtimes.local.accesslog import read_access_log
from bot.runtimes.local.allowlist import child_env, env_var_name
from bot.runtimes.local.confine import Confinement
from bot.runtimes.local.envoy import DataPlane, EnvoyError
from bot.runtimes.local.pgsite import PostgresSite
from bot.runtimes.local.ports import free_port, ports_from
from bot.runtimes.local.postgres import Postgres, database_name
from bot.runtimes.local.processes import ProcessRef, spawn, stop_group, stop_groups, tail, wait_healthy
from bot.runtimes.local.registry import EnvRecord, ProcessRecord, Registry, SandboxRecord, env_id_for
from bot.runtimes.local.state import copy_sqlite
from bot.runtimes.local.xds import DataPlaneSpec, Upstream
from bot.runtimes.protocol import (
    Baseline,
    BuildOutcome,
    ForkOutcome,
    ObservedRequest,
    Sandbox,
    Source,
    SuiteOutcome,
    SuiteRequest,
)

_KEY_ALPHABET = string.ascii_lowercase + string.digits
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
        cwd: Path,
        env: dict[str, str],
        log: Path,
        writable: list[Path],
        readonly: list[Path] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Agent or team code, confined: it writes only `writable` and dies with a non-persistent owner."""
        return spawn(
            command,
            cwd=cwd,
            env=env,
            log=log,
            confinement=self.confinement,
            writable=writable,
            readonly=readonly or [],
            die_with_parent=not self.persistent,
        )

    # -- ownership ---------------------------------------------------------------------------------

    def _owner(self) -> ProcessRef | None:
        return None if self.persistent else ProcessRef.current()

    # -- baseline ----------------------------------------------------------------------------------

    def up_baseline(self, base: Source, config: Config) -> Baseline:
        self.confinement.check()  # before anything starts: no run may go ahead unconfined by accident
        env_id = env_id_for(base.repo, base.sha)
        with self.registry.lock(env_id):
            record = self.registry.load_env(env_id)
            if record is not None and self._env_healthy(record):
                if self.persistent and record.owner is not None:
                    record.owner = None
                    self.registry.save_env(record)
                return self._baseline(record, reused=True)
            if record is not None:
                self._stop_env(record)
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

    def down(self, env_id: str) -> None:
        with self.registry.lock(env_id):
            record = self.registry.load_env(env_id)
            if record is None:
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
        if not DataPlane(self.registry.env_dir(record.env_id) / "envoy").is_running():
            return "Envoy is not running"
        dead = sorted(name for name, p in record.services.items() if not p.process.alive())
        if dead:
            return f"baseline {', '.join(dead)} exited (log: {record.services[dead[0]].log})"
        return None

    def baseline_health(self, baseline: Baseline) -> str | None:
        record = self.registry.load_env(baseline.env_id)
        return "the baseline's record is gone" if record is None else self._env_problem(record)

    def _start_env(self, env_id: str, base: Source, config: Config) -> EnvRecord:
        names = sorted(config.services)
        if self.settings.envoy_base_port:
            listener_ports = ports_from(self.settings.envoy_base_port, len(names), "Envoy")
        else:
            listener_ports = [free_port() for _ in names]
        env_dir = self.registry.env_dir(env_id)
        if env_dir.exists():
            shutil.rmtree(env_dir, ignore_errors=True)
        env_dir.mkdir(parents=True)
        record = EnvRecord(
            env_id=env_id,
            repo=str(base.repo.resolve()),
            base_sha=base.sha,
            owner=self._owner(),
            config_json=config.model_dump_json(),
            listeners=dict(zip(names, listener_ports, strict=True)),
        )
        record.databases = _postgres_names(record.env_id, config)  # recorded before they exist
        record.roles = list(record.databases)  # each database's role has its name
        self.registry.save_env(record)
        try:
            Git(base.repo).worktree_add(env_dir / "worktree", base.sha)
            self.confinement.give(env_dir / "worktree")
            pristine.materialise(base.repo, base.sha, env_dir / "pristine")
            ports = {name: free_port() for name in names}
            plane = DataPlane(env_dir / "envoy")
            plane.start(self._spec(record, ports, {}, config), concurrency=self.settings.envoy_concurrency)
            results = _parallel(
                {
                    name: partial(self._start_baseline_service, record, config, name, ports[name])
                    for name in names
                }
            )
            self.registry.save_env(record)
            failed = {name: why for name, why in results.items() if why is not None}
            if failed:
                name, why = sorted(failed.items())[0]
                raise InfrastructureError(f"baseline {name} {why}")
            return record
        except EnvoyError as exc:
            self._stop_env(record)
            raise InfrastructureError(str(exc)) from None
        except BaseException:
            self._stop_env(record)
            raise

    def _start_baseline_service(self, record: EnvRecord, config: Config, name: str, port: int) -> str | None:
        spec = config.services[name]
        env_dir = self.registry.env_dir(record.env_id)
        cwd = env_dir / "worktree" / spec.local.cwd
        log = env_dir / "logs" / f"{name}.log"
        state, home = env_dir / "state" / name, env_dir / "home" / name
        extra = self._service_env(record, name, spec, state)
        env = child_env(home, extra)
        self.confinement.give(home, state)
        launch = partial(self._spawn, cwd=cwd, env=env, log=log, writable=[env_dir / "worktree", home, state])
        if not cwd.is_dir():
            return f"cannot start: cwd {spec.local.cwd} does not exist at the base commit"
        if spec.state is not None and spec.state.postgres is not None:
            database = database_name(record.env_id, spec.state.postgres.database)
            try:
                with self._postgres() as postgres:
                    env["LOOPGATE_STATE"] = postgres.create(database)  # its own role's URL
            except InfrastructureError as exc:
                return f"cannot start: {exc}"
        if spec.local.build:
            why = _run_build(spec, launch)
            if why:
                return f"{why}: {_last_line(log)}"
        process = launch(spec.local.run.replace("{port}", str(port)))
        record.services[name] = ProcessRecord(
            service=name, port=port, process=ProcessRef.of(process.pid), log=str(log)
        )
        why = wait_healthy(process, f"http://127.0.0.1:{port}{spec.local.health}", spec.local.ready_timeout)
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
        env_dir = self.registry.env_dir(record.env_id)
        for sandbox in self.registry.sandboxes(record.env_id):
            self._teardown_record(record, sandbox, unroute=False)
        DataPlane(env_dir / "envoy").stop()
        stop_groups([service.process for service in record.services.values()])
        self._drop_databases(record.databases, record.roles)
        Git(Path(record.repo)).worktree_remove(env_dir / "worktree")
        pristine.remove(env_dir / "pristine")
        shutil.rmtree(env_dir, ignore_errors=True)
        if record.databases:
            self.postgres_site().release()  # loopgate's own cluster stops with its last database

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
                Git(sandbox.baseline.base.repo).worktree_add(worktree, record.head_sha)
                self.confinement.give(worktree)
        return worktree

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

    def build(self, sandbox: Sandbox, service: str, spec: Service) -> BuildOutcome:
        record = self._record(sandbox)
        source = f"{record.head_sha[:12]}:{spec.local.cwd}"
        cwd, env = self._service_context(sandbox, service, spec)
        if not cwd.is_dir():
            return BuildOutcome(service, False, source, detail=f"cwd {spec.local.cwd} does not exist")
        if not spec.local.build:
            return BuildOutcome(service, True, source)
        log = self._sandbox_dir(sandbox) / "logs" / f"{service}.build.log"
        launch = partial(self._spawn, cwd=cwd, env=env, log=log, writable=self._fork_dirs(sandbox, service))
        started = time.monotonic()
        why = _run_build(spec, launch, lambda ref: self._job(sandbox, ref))
        elapsed = int((time.monotonic() - started) * 1000)
        return BuildOutcome(service, why is None, source, duration_ms=elapsed, log_tail=tail(log), detail=why)

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
            with self._postgres() as postgres:
                # The copy's own role: not the baseline's database, nor any other sandbox's.
                env["LOOPGATE_STATE"] = postgres.clone(database_name(sandbox.baseline.env_id, logical), copy)
        log = self._sandbox_dir(sandbox) / "logs" / f"{service}.log"
        port = free_port()
        started = time.monotonic()
        run = spec.local.run.replace("{port}", str(port))
        process = self._spawn(run, cwd=cwd, env=env, log=log, writable=self._fork_dirs(sandbox, service))
        forked = ProcessRecord(service=service, port=port, process=ProcessRef.of(process.pid), log=str(log))
        with self.registry.lock(sandbox.baseline.env_id):
            record = self._record(sandbox)
            record.forks[service] = forked
            self.registry.save_sandbox(record)
        why = wait_healthy(process, f"{forked.url}{spec.local.health}", spec.local.ready_timeout)
        ready_ms = int((time.monotonic() - started) * 1000)
        if why:
            return ForkOutcome(service, "start_failed", ready_ms=ready_ms, log_tail=tail(log), detail=why)
        return ForkOutcome(service, "ready", url=forked.url, ready_ms=ready_ms)

    def keep(self, sandbox: Sandbox) -> None:
        with self.registry.lock(sandbox.baseline.env_id):
            record = self._record(sandbox)
            record.owner = None
            self.registry.save_sandbox(record)
            env = self.registry.load_env(sandbox.baseline.env_id)
            if env is not None and env.owner is not None:
                env.owner = None
                self.registry.save_env(env)

    def route(self, sandbox: Sandbox) -> None:
        self._set_routed(sandbox, True)

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

    def suite_env(self, sandbox: Sandbox) -> dict[str, str]:
        """What a suite (or an agent by hand) needs to address the sandbox."""
        member = sandbox.config.routing.baggage_member
        env = {env_var_name(name): url for name, url in sandbox.baseline.entry_urls.items()}
        env["LOOPGATE_ROUTING_KEY"] = sandbox.routing_key
        env["LOOPGATE_BAGGAGE"] = f"{member}={sandbox.routing_key}"
        return env

    def run_suite(self, sandbox: Sandbox, suite: SuiteRequest) -> SuiteOutcome:
        sandbox_dir = self._sandbox_dir(sandbox)
        if suite.source == "base":
            # Never the baseline's worktree: a fork could have rewritten the suite there.
            cwd = self.registry.env_dir(sandbox.baseline.env_id) / "pristine"
        else:
            cwd = self.source_dir(sandbox)
        junit = sandbox_dir / "junit" / f"{suite.name}-{suite.source}.xml"
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit.unlink(missing_ok=True)
        log = sandbox_dir / "logs" / f"suite-{suite.name}-{suite.source}.log"
        extra = {**self.suite_env(sandbox), "LOOPGATE_JUNIT_XML": str(junit), **suite.extra_env}
        home = sandbox_dir / "home" / f"suite-{suite.name}-{suite.source}"
        env = child_env(home, extra)
        self.confinement.give(home, junit.parent)
        started = time.monotonic()
        process = self._spawn(
            suite.command, cwd=cwd, env=env, log=log, writable=[home, junit.parent], readonly=[cwd]
        )
        ref = ProcessRef.of(process.pid)
        timed_out = False
        with self._job(sandbox, ref):
            try:
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

    def teardown(self, sandbox: Sandbox) -> None:
        with self.registry.lock(sandbox.baseline.env_id):
            env = self.registry.load_env(sandbox.baseline.env_id)
            record = self.registry.load_sandbox(sandbox.baseline.env_id, sandbox.routing_key)
            if env is not None and record is not None:
                self._teardown_record(env, record)

    def _teardown_record(self, env: EnvRecord, record: SandboxRecord, *, unroute: bool = True) -> None:
        """Routes first, then processes, then files; each step runs even when an earlier one failed."""
        errors: list[str] = []
        if record.routed and unroute:
            record.routed = False
            self.registry.save_sandbox(record)
            try:
                self._apply_routes(env.env_id)
            except InfrastructureError as exc:
                errors.append(str(exc))
        stop_groups([*record.jobs, *(fork.process for fork in record.forks.values())])
        errors += self._drop_databases(record.databases, record.roles)
        sandbox_dir = self.registry.sandbox_dir(env.env_id, record.routing_key)
        Git(Path(env.repo)).worktree_remove(sandbox_dir / "worktree")
        shutil.rmtree(sandbox_dir, ignore_errors=True)
        if errors:
            raise InfrastructureError(errors[0])

    # -- garbage collection ------------------------------------------------------------------------

    def gc(self) -> list[str]:
        """Remove what belongs to owners that are no longer alive; nothing else."""
        removed: list[str] = []
        for env_id in self.registry.env_ids():
            with self.registry.lock(env_id):
                env = self.registry.load_env(env_id)
                if env is None:
                    shutil.rmtree(self.registry.env_dir(env_id), ignore_errors=True)
                    removed.append(f"env {env_id} (incomplete)")
                    continue
                for sandbox in self.registry.sandboxes(env_id):
                    if sandbox.owner is not None and not sandbox.owner.alive():
                        self._teardown_record(env, sandbox)
                        removed.append(
                            f"sandbox {sandbox.routing_key} (owner pid {sandbox.owner.pid} is gone)"
                        )
                live = self.registry.sandboxes(env_id)
                if env.owner is not None and not env.owner.alive() and not live:
                    self._stop_env(env)
                    removed.append(f"baseline {env_id} (owner pid {env.owner.pid} is gone)")
        if self.postgres_site().release():
            removed.append("loopgate's own PostgreSQL cluster (it held no database any more)")
        return removed


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
