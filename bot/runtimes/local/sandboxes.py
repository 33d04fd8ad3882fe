"""Sandboxes: their records, merge worktree, builds, forks, routing and teardown."""

from __future__ import annotations

import secrets
import string
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import psutil

from bot.config import Config, InfrastructureError, Service
from bot.runtimes.git import Git
from bot.runtimes.local import pause
from bot.runtimes.local.allowlist import child_env
from bot.runtimes.local.baselines import Baselines
from bot.runtimes.local.envoy import DataPlane
from bot.runtimes.local.helpers import _run_build, _start_on_free_port, infrastructure
from bot.runtimes.local.journal import Journal
from bot.runtimes.local.ports import free_port
from bot.runtimes.local.postgres import database_name
from bot.runtimes.local.processes import ProcessRef, stop_group, stop_groups, tail
from bot.runtimes.local.registry import ProcessRecord, SandboxRecord
from bot.runtimes.local.state import copy_sqlite
from bot.runtimes.protocol import Baseline, BuildOutcome, ForkOutcome, Sandbox, Source

_KEY_ALPHABET = string.ascii_lowercase + string.digits


def new_routing_key() -> str:
    return "".join(secrets.choice(_KEY_ALPHABET) for _ in range(10))


class Sandboxes(Baselines):
    """A sandbox adds forks of the changed services and routes for its routing key to a baseline."""

    # -- sandboxes ---------------------------------------------------------------------------------

    @infrastructure
    def new_sandbox(self, baseline: Baseline, config: Config, head: Source) -> Sandbox:
        return self._new_sandbox(baseline, config, head, new_routing_key())

    @infrastructure
    def new_control(self, sandbox: Sandbox, base: Source) -> Sandbox:
        """A control of the sandbox: a second routing key whose forks run the base commit's code on
        copies of the data made from the same snapshot as the sandbox's own. Recorded in the sandbox's
        record before it exists, kept and torn down with it; `gc` finds it by its own record too."""
        key = new_routing_key()
        with self.registry.lock(sandbox.baseline.env_id):
            record = self._record(sandbox)
            record.controls.append(key)
            self.registry.save_sandbox(record)
        return self._new_sandbox(sandbox.baseline, sandbox.config, base, key, control_of=sandbox.routing_key)

    def _new_sandbox(
        self, baseline: Baseline, config: Config, head: Source, key: str, control_of: str | None = None
    ) -> Sandbox:
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
                    control_of=control_of,
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
        """Every sandbox, its controls not on their own (they belong to it and go with it)."""
        return [
            s
            for env_id in self.registry.env_ids()
            for s in self.registry.sandboxes(env_id)
            if s.control_of is None
        ]

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
        env = child_env(home, extra, spec.local_spec)
        self.confinement.give(home, state_dir)
        return self.source_dir(sandbox) / spec.local_spec.cwd, env

    def _fork_dirs(self, sandbox: Sandbox, service: str) -> list[Path]:
        """All a build or fork may write: the merge worktree, its HOME, its state copy."""
        sandbox_dir = self._sandbox_dir(sandbox)
        return [self.source_dir(sandbox), sandbox_dir / "home" / service, sandbox_dir / "state" / service]

    @infrastructure
    def build(self, sandbox: Sandbox, service: str, spec: Service) -> BuildOutcome:
        record = self._record(sandbox)
        source = f"{record.head_sha[:12]}:{spec.local_spec.cwd}"
        cwd, env = self._service_context(sandbox, service, spec)
        if not cwd.is_dir():
            return BuildOutcome(service, False, source, detail=f"cwd {spec.local_spec.cwd} does not exist")
        if not spec.local_spec.build:
            return BuildOutcome(service, True, source)
        log = self._sandbox_dir(sandbox) / "logs" / f"{service}.build.log"
        launch = self._fork_launcher(sandbox, service, cwd, env, log)
        started = time.monotonic()
        why = _run_build(spec, launch, lambda ref: self._job(sandbox, ref))
        elapsed = int((time.monotonic() - started) * 1000)
        # A sandbox removed meanwhile (its baseline failed while starting, and took what was made on it)
        # stopped the build: whatever its exit status read, it did not pass.
        self._record(sandbox)
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
        group = self._snapshot_group(sandbox)
        if spec.state is not None and spec.state.sqlite is not None:
            baseline_state = self.registry.env_dir(sandbox.baseline.env_id) / "state" / service
            source = baseline_state / spec.state.sqlite
            if group is not None:  # one backup, copied for the sandbox and each control
                source = self._snapshot(sandbox, group, f"{service}.sqlite", partial(copy_sqlite, source))
            copy_sqlite(source, Path(env["LOOPGATE_STATE"]))
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
                database = database_name(sandbox.baseline.env_id, logical)
                dump = None
                if group is not None:  # one dump, restored for the sandbox and each control
                    dump = self._snapshot(
                        sandbox, group, f"{service}.dump", partial(postgres.snapshot, database)
                    )
                # The copy's own role: not the baseline's database, nor any other sandbox's.
                env["LOOPGATE_STATE"] = postgres.clone(database, copy, dump)
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

        why = _start_on_free_port(spec, launch, log, free_port(), record_fork, env)
        ready_ms = int((time.monotonic() - started) * 1000)
        if why:
            return ForkOutcome(service, "start_failed", ready_ms=ready_ms, log_tail=tail(log), detail=why)
        return ForkOutcome(service, "ready", url=self._record(sandbox).forks[service].url, ready_ms=ready_ms)

    def _snapshot_group(self, sandbox: Sandbox) -> str | None:
        """The key whose snapshot this sandbox's copies come from: its own when it has controls, its
        candidate's when it is a control; None when it copies straight from the baseline."""
        record = self._record(sandbox)
        return record.control_of or (sandbox.routing_key if record.controls else None)

    def _snapshot(self, sandbox: Sandbox, group: str, name: str, make: Callable[[Path], None]) -> Path:
        """The group's snapshot `name`, made by whichever of its forks comes first (in the candidate's
        directory: removed with it)."""
        path = self.registry.sandbox_dir(sandbox.baseline.env_id, group) / "snapshots" / name
        with self.registry.lock(f"{sandbox.baseline.env_id}.{group}.snapshot"):
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                temp = path.with_name(f".{name}.tmp")
                temp.unlink(missing_ok=True)
                make(temp)
                temp.replace(path)
        return path

    @infrastructure
    def keep(self, sandbox: Sandbox) -> None:
        with self.registry.lock(sandbox.baseline.env_id):
            record = self._record(sandbox)
            record.owner, record.state, record.starter = None, "ready", None
            self.registry.save_sandbox(record)
            for key in record.controls:
                control = self.registry.load_sandbox(sandbox.baseline.env_id, key)
                if control is not None:
                    control.owner, control.state, control.starter = None, "ready", None
                    self.registry.save_sandbox(control)
            env = self.registry.load_env(sandbox.baseline.env_id)
            if env is not None and env.owner is not None:
                env.owner = None
                self.registry.save_env(env)

    @infrastructure
    def route(self, sandbox: Sandbox) -> str | None:
        self._set_routed(sandbox, True)
        return None

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
    def teardown(self, sandbox: Sandbox) -> None:
        with self.registry.lock(sandbox.baseline.env_id):
            env = self.registry.load_env(sandbox.baseline.env_id)
            record = self.registry.load_sandbox(sandbox.baseline.env_id, sandbox.routing_key)
            if env is not None and record is not None:
                self._teardown_record(env, record)

    # -- following a source (`loopgate sandbox update`) ---------------------------------------------

    def sandbox_source(self, sandbox: Sandbox) -> str:
        return self._record(sandbox).head_sha

    def forked_services(self, sandbox: Sandbox) -> list[str]:
        return sorted(self._record(sandbox).forks)

    @infrastructure
    def move_sandbox(self, sandbox: Sandbox, merge_sha: str) -> None:
        """Check the sandbox's merge worktree out at `merge_sha` (only the files that differ are
        written) and record it, so any loopgate process updates from there next time."""
        worktree = self._sandbox_dir(sandbox) / "worktree"
        with self.registry.lock(sandbox.baseline.env_id):
            record = self._record(sandbox)
            if worktree.is_dir():
                # The worktree belongs to the confined uid: git would refuse it as "dubious ownership".
                Git(worktree).run(
                    "-c",
                    f"safe.directory={worktree}",
                    "checkout",
                    "--force",
                    "--quiet",
                    "--detach",
                    merge_sha,
                )
                self.confinement.give(worktree)
            record.head_sha = merge_sha
            self.registry.save_sandbox(record)

    @infrastructure
    def refork(self, sandbox: Sandbox, service: str, spec: Service) -> ForkOutcome:
        old = self._record(sandbox).forks.get(service)
        if old is None:
            return self._first_fork(sandbox, service, spec)
        cwd, env = self._service_context(sandbox, service, spec)  # SQLite: the same copy's path
        if spec.state is not None and spec.state.postgres is not None:
            env["LOOPGATE_STATE"] = _state_url(old)  # the copy's own role; its password is nowhere else
        logs = self._sandbox_dir(sandbox) / "logs"
        log = logs / f"{service}.r{len(list(logs.glob(f'{service}.r*.log'))) + 1}.log"
        launch = self._fork_launcher(sandbox, service, cwd, env, log)
        started, attempts = time.monotonic(), []

        def record_start(process: subprocess.Popen[bytes], port: int) -> None:
            # A job until it is routed: teardown and `gc` stop it if this process dies first.
            ref = ProcessRef.of(process.pid)
            attempts.append(ProcessRecord(service=service, port=port, process=ref, log=str(log)))
            with self.registry.lock(sandbox.baseline.env_id):
                record = self._record(sandbox)
                record.jobs.append(ref)
                self.registry.save_sandbox(record)

        why = _start_on_free_port(spec, launch, log, free_port(), record_start, env)
        ready_ms = int((time.monotonic() - started) * 1000)
        refs = [attempt.process for attempt in attempts]
        stale = refs if why else refs[:-1]
        if stale:
            stop_groups(stale)
        with self.registry.lock(sandbox.baseline.env_id):
            record = self._record(sandbox)
            record.jobs = [job for job in record.jobs if job not in refs]
            if not why:
                record.forks[service] = attempts[-1]  # routable once `apply` writes its endpoint
            self.registry.save_sandbox(record)
            if not why and record.routed:
                self._apply_routes(sandbox.baseline.env_id)
        if why:
            return ForkOutcome(service, "start_failed", ready_ms=ready_ms, log_tail=tail(log), detail=why)
        stop_group(old.process)  # after the switch: no tagged request meets a missing fork
        return ForkOutcome(service, "ready", url=attempts[-1].url, ready_ms=ready_ms)

    def _first_fork(self, sandbox: Sandbox, service: str, spec: Service) -> ForkOutcome:
        """A service the sandbox had not forked: forked as a new sandbox forks it, then routed."""
        outcome = self.fork(sandbox, service, spec)
        with self.registry.lock(sandbox.baseline.env_id):
            record = self._record(sandbox)
            if outcome.status != "ready":
                failed = record.forks.pop(service, None)
                self.registry.save_sandbox(record)
                if failed is not None:
                    stop_group(failed.process)
            elif record.routed:
                self._apply_routes(sandbox.baseline.env_id)
        return outcome

    @infrastructure
    def unfork(self, sandbox: Sandbox, service: str) -> None:
        with self.registry.lock(sandbox.baseline.env_id):
            record = self._record(sandbox)
            old = record.forks.pop(service, None)
            self.registry.save_sandbox(record)
            if old is not None and record.routed:
                self._apply_routes(sandbox.baseline.env_id)  # routes before the fork goes
        if old is not None:
            stop_group(old.process)


def _state_url(fork: ProcessRecord) -> str:
    """The running fork's LOOPGATE_STATE: where a re-fork finds the same Postgres copy."""
    try:
        url = psutil.Process(fork.process.pid).environ().get("LOOPGATE_STATE")
    except psutil.Error:
        url = None
    if not url or not fork.process.alive():
        raise InfrastructureError(f"cannot re-fork {fork.service}: its state copy's address is unknown")
    return url
