"""Removing what was made: databases, journalled directories, sandboxes' processes and files."""

from __future__ import annotations

import shutil
from pathlib import Path

from bot.config import InfrastructureError
from bot.runtimes.git import Git
from bot.runtimes.local import pristine
from bot.runtimes.local.core import RuntimeCore
from bot.runtimes.local.journal import Journal
from bot.runtimes.local.processes import ProcessRef, stop_groups, stop_writers
from bot.runtimes.local.registry import EnvRecord, SandboxRecord


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

    def _teardown_record(self, env: EnvRecord, record: SandboxRecord, *, unroute: bool = True) -> None:
        """Routes first, then processes, then files; each step runs even when an earlier one failed. A
        sandbox's controls go with it, in the same steps (one route update, one stop)."""
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
                self._apply_routes(env.env_id)
            except InfrastructureError as exc:
                if unroute:
                    errors.append(str(exc))
        stop_groups([ref for r in records for ref in (*r.jobs, *(fork.process for fork in r.forks.values()))])
        for each in reversed(records):  # the sandbox last: its directory holds the controls' snapshot
            sandbox_dir = self.registry.sandbox_dir(env.env_id, each.routing_key)
            Git(Path(env.repo)).worktree_remove(sandbox_dir / "worktree")  # a record older than journals
            errors += self._purge_dir(sandbox_dir, each.databases)
        if errors:
            raise InfrastructureError(errors[0])
