"""Removing what was made: databases, journalled directories, sandboxes' processes and files.

A stop gathers everything first (records and journals say what exists), then removes it in three
steps, each step's parts at once: process groups stopped alongside the databases dropped (`DROP
DATABASE ... WITH (FORCE)` ends a service's sessions itself, so the drop need not wait for the
service), then worktrees and checkouts (only once no process runs in them), then the directories,
whose journals are the last word on what is left should loopgate be killed midway.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from bot.config import InfrastructureError
from bot.runtimes.git import Git
from bot.runtimes.local import pristine
from bot.runtimes.local.core import RuntimeCore
from bot.runtimes.local.journal import Journal
from bot.runtimes.local.processes import ProcessRef, stop_groups, stop_writers
from bot.runtimes.local.registry import EnvRecord, SandboxRecord

TEARDOWN_DRAIN_S = 0.25
"""How long a torn-down sandbox's requests still in flight get before its forks' clusters go: its
verdict is decided, and whatever is still running against it ends with its forks anyway."""

Step = Callable[[], list[str] | None]
"""One part of a stop: returns the errors it met (None: none)."""


@dataclass
class Leftovers:
    """Everything one stop removes, gathered before anything is removed."""

    processes: list[ProcessRef] = field(default_factory=list)
    """Process groups to stop (a dead leader's group too: orphans may still hold it)."""
    databases: list[str] = field(default_factory=list)
    """Databases to drop, each with its role of the same name."""
    worktrees: list[tuple[Path, Path]] = field(default_factory=list)
    """(repository, worktree) pairs."""
    checkouts: list[Path] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)
    """Searched for processes whose pid never reached a journal, then removed last, in this order."""

    def add_dir(self, directory: Path, databases: Sequence[str] = ()) -> None:
        """The directory and whatever its journal says was made for it."""
        journal = Journal(directory)
        self.processes += [ref for ref in journal.processes() if ref.alive()]
        self.databases += [*databases, *journal.databases()]
        self.worktrees += journal.worktrees()
        self.checkouts += journal.checkouts()
        self.dirs.append(directory)


class Cleanup(RuntimeCore):
    """Purging envs and sandboxes by what their records and journals say was made."""

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

    def _remove(self, leftovers: Leftovers, *, alongside: Sequence[Step] = ()) -> list[str]:
        """Stop, drop, remove (see the module's docstring); `alongside` runs with the first step (Envoy's
        stop, for a baseline). Every part runs whatever the others met; their errors are returned."""
        names = list(dict.fromkeys(leftovers.databases))
        unique = {(ref.pid, ref.create_time): ref for ref in leftovers.processes}

        def stop() -> None:
            stop_groups(list(unique.values()))
            stop_writers(leftovers.dirs)  # those whose pid never reached the journal

        errors = _concurrently([stop, partial(self._drop_databases, names, names), *alongside])
        by_repo: dict[Path, list[Path]] = {}
        for repo, worktree in dict.fromkeys(leftovers.worktrees):
            by_repo.setdefault(repo, []).append(worktree)
        # One repository's worktrees in turn: git serialises its own worktree bookkeeping anyway.
        removals: list[Step] = [partial(_remove_worktrees, repo, paths) for repo, paths in by_repo.items()]
        removals += [partial(pristine.remove, checkout) for checkout in dict.fromkeys(leftovers.checkouts)]
        errors += _concurrently(removals)
        for directory in leftovers.dirs:
            shutil.rmtree(directory, ignore_errors=True)
        return errors

    def _purge_env(
        self,
        env_id: str,
        *,
        databases: list[str] | None = None,
        also: Leftovers | None = None,
        alongside: Sequence[Step] = (),
    ) -> list[str]:
        """Remove whatever the journals say was made for the env and its sandboxes, records or not,
        with what `also` names (what the records say)."""
        env_dir = self.registry.env_dir(env_id)
        if not env_dir.exists():
            return []
        leftovers = also or Leftovers()
        for key in self.registry.sandbox_keys(env_id):
            leftovers.add_dir(self.registry.sandbox_dir(env_id, key))
        leftovers.add_dir(env_dir, databases or [])
        errors = self._remove(leftovers, alongside=alongside)
        if leftovers.databases:
            self.postgres_site().release()  # loopgate's own cluster stops with its last database
        return errors

    def _purge_dir(self, directory: Path, databases: list[str]) -> list[str]:
        """Processes, databases, worktrees and checkouts journalled in `directory`, then the directory."""
        leftovers = Leftovers()
        leftovers.add_dir(directory, databases)
        return self._remove(leftovers)

    def _teardown_record(self, env: EnvRecord, record: SandboxRecord, *, unroute: bool = True) -> None:
        """Routes first (Envoy's connections to the forks close with their clusters), then processes,
        databases and files; each step runs even when an earlier one failed. A sandbox's controls go
        with it, in the same steps (one route update, one stop)."""
        errors: list[str] = []
        controls = [self.registry.load_sandbox(env.env_id, key) for key in record.controls]
        records = [record, *(c for c in controls if c is not None)]
        # `unroute=False`: the caller unrouted the sandbox itself (gc); its controls are unrouted here,
        # best effort, as gc does.
        leaving = [r for r in records if r.routed and (unroute or r is not record)]
        for each in records:
            each.state, each.starter = "stopping", ProcessRef.current()
            if each in leaving:
                each.routed = False
            self.registry.save_sandbox(each)
        if leaving:
            try:
                self._apply_routes(env.env_id, drain_limit=TEARDOWN_DRAIN_S)
            except InfrastructureError as exc:
                if unroute:
                    errors.append(str(exc))
        leftovers = Leftovers(processes=[ref for r in records for ref in sandbox_processes(r)])
        for each in reversed(records):  # the sandbox last: its directory holds the controls' snapshot
            sandbox_dir = self.registry.sandbox_dir(env.env_id, each.routing_key)
            # Named by the record too: a record older than journals.
            leftovers.worktrees.append((Path(env.repo), sandbox_dir / "worktree"))
            leftovers.add_dir(sandbox_dir, each.databases)
        errors += self._remove(leftovers)
        if errors:
            raise InfrastructureError(errors[0])


def sandbox_processes(record: SandboxRecord) -> list[ProcessRef]:
    """The sandbox's builds, suites and forks, by its record."""
    return [*record.jobs, *(fork.process for fork in record.forks.values())]


def _remove_worktrees(repo: Path, worktrees: list[Path]) -> None:
    git = Git(repo)
    for worktree in worktrees:
        git.worktree_remove(worktree)


def _concurrently(steps: Sequence[Step]) -> list[str]:
    """Run independent steps at once, each on its own thread, and wait for all of them: one that
    fails does not keep the others from running. Returns the errors they reported; re-raises the first
    exception one raised, once all have finished."""
    if not steps:
        return []
    if len(steps) == 1:
        return steps[0]() or []
    with ThreadPoolExecutor(max_workers=len(steps), thread_name_prefix="loopgate-stop") as pool:
        futures = [pool.submit(step) for step in steps]
    errors: list[str] = []
    failure: BaseException | None = None
    for future in futures:
        exc = future.exception()
        if exc is not None:
            failure = failure or exc
        else:
            errors += future.result() or []
    if failure is not None:
        raise failure
    return errors
