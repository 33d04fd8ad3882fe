"""`loopgate sandbox`: sandboxes for the inner loop, forks you can call, that follow a working tree.

The operations (`create`, `update`, `delete`, `list`) are plain functions returning data, raising
LoopgateError with a one-line cause: the commands below print them, `loopgate mcp` returns them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from bot.cli.output import (
    ConfigOption,
    RepoOption,
    StageProgress,
    _baggage,
    _fail,
    _print_summary,
    _print_unconfined,
    _settings,
    _terminate_as_interrupt,
    console,
)
from bot.cli.root import sandbox_app
from bot.config import ConfigError, LoopgateError
from bot.evidence import Evidence, Verdict, exit_code
from bot.pipeline import Pipeline, StageListener, UpdateRequest, UpdateResult, VerifyRequest, update_sandbox
from bot.runtimes.git import snapshot_worktree
from bot.runtimes.local import LocalRuntime
from bot.runtimes.local.allowlist import env_var_name
from bot.runtimes.local.registry import SandboxRecord, flocked
from bot.runtimes.protocol import Sandbox

FOLLOW_FILE = "follow.json"
"""Beside the sandbox's record: where it came from, so any loopgate process can update it."""

WorktreeOption = Annotated[
    Path | None,
    typer.Option("--worktree", help="Fork from this working tree's files as they are, uncommitted too."),
]


@dataclass
class Follow:
    """What a sandbox follows: a working tree, or a ref; and what its last update failed to start."""

    repo: str
    base_ref: str
    worktree: str | None = None
    head_ref: str | None = None
    config: str | None = None
    head_sha: str = ""
    retry: list[str] = field(default_factory=list)


@dataclass
class Created:
    evidence: Evidence
    sandbox: Sandbox | None
    """None when nothing was kept (no service affected, a fork failed, an error)."""

    def env(self) -> dict[str, str]:
        """What a caller needs to reach the sandbox: the key, the baggage and every entry URL."""
        if self.sandbox is None:
            return {}
        key = self.sandbox.routing_key
        env = {"LOOPGATE_ROUTING_KEY": key, "LOOPGATE_BAGGAGE": _baggage(key)}
        for name, url in sorted(self.sandbox.baseline.entry_urls.items()):
            env[env_var_name(name)] = url
        return env


def resolve_head(repo: Path, head: str | None, worktree: Path | None) -> tuple[Path, str, str | None]:
    """(repository, head commit or ref, the worktree's top) from --head or --worktree (not both)."""
    if worktree is not None and head is not None:
        raise ConfigError("give either a worktree or a head, not both")
    if worktree is not None:
        snapshot = snapshot_worktree(worktree.expanduser().absolute())
        return snapshot.repo, snapshot.sha, str(snapshot.repo)
    return repo, head or "HEAD", None


def runtime() -> LocalRuntime:
    """Sandboxes outlive the process that starts or updates them: persistent."""
    return LocalRuntime(_settings(), persistent=True)


def create(
    repo: Path,
    base: str,
    head: str | None,
    worktree: Path | None,
    config: Path | None,
    listener: StageListener | None = None,
) -> Created:
    repo, head_ref, top = resolve_head(repo, head, worktree)
    local = runtime()
    pipeline = Pipeline(local, listener=listener)
    request = VerifyRequest(
        repo=repo, base_ref=base, head_ref=head_ref, config_file=config, sandbox_only=True
    )
    evidence = pipeline.verify(request)
    if top is not None:
        evidence.head.ref = f"worktree {top}"
    if pipeline.kept is None:
        return Created(evidence, None)
    sandbox = pipeline.kept.sandbox
    follow = Follow(
        repo=str(repo.absolute()),
        base_ref=base,
        worktree=top,
        head_ref=None if top else head_ref,
        config=str(config.absolute()) if config else None,
        head_sha=evidence.head.sha or "",
    )
    _save_follow(local, sandbox, follow)
    return Created(evidence, sandbox)


def load(local: LocalRuntime, key: str) -> Sandbox:
    sandbox = local.load_sandbox(key)
    if sandbox is None:
        raise ConfigError(f"no sandbox {key!r} (see `loopgate sandbox list`)")
    return sandbox


def update(
    key: str,
    head: str | None = None,
    worktree: Path | None = None,
    listener: StageListener | None = None,
) -> UpdateResult:
    """Move the sandbox to the working tree (or ref) it follows, or to the one given."""
    local = runtime()
    sandbox = load(local, key)
    follow = _load_follow(local, sandbox)
    if head is None and worktree is None:
        if follow.worktree is not None:
            worktree = Path(follow.worktree)
        else:
            head = follow.head_ref or "HEAD"
    repo, head_ref, top = resolve_head(Path(follow.repo), head, worktree)
    with _updating(local, sandbox):
        request = UpdateRequest(
            repo=repo,
            head_ref=head_ref,
            config_file=Path(follow.config) if follow.config else None,
            retry=tuple(follow.retry),
        )
        result = update_sandbox(local, sandbox, request, listener)
        follow.repo, follow.worktree = str(repo.absolute()), top
        follow.head_ref = None if top else head_ref
        follow.head_sha, follow.retry = result.head_sha, result.names("failed")
        _save_follow(local, sandbox, follow)
    return result


def delete(key: str) -> None:
    local = LocalRuntime(_settings())
    local.teardown(load(local, key))


def records() -> list[SandboxRecord]:
    return LocalRuntime(_settings()).sandboxes()


def describe(local: LocalRuntime, record: SandboxRecord) -> dict[str, Any]:
    """A sandbox as data: for `sandbox list` over MCP."""
    follow = _read_follow(local.registry.sandbox_dir(record.env_id, record.routing_key) / FOLLOW_FILE)
    return {
        "routing_key": record.routing_key,
        "env_id": record.env_id,
        "merge_sha": record.head_sha,
        "head_sha": follow.head_sha if follow else None,
        "follows": (follow.worktree or follow.head_ref) if follow else None,
        "kept": record.owner is None,
        "state": record.state,
        "forks": {name: p.url for name, p in sorted(record.forks.items())},
    }


def _follow_path(local: LocalRuntime, sandbox: Sandbox) -> Path:
    return local.registry.sandbox_dir(sandbox.baseline.env_id, sandbox.routing_key) / FOLLOW_FILE


def _read_follow(path: Path) -> Follow | None:
    try:
        return Follow(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _load_follow(local: LocalRuntime, sandbox: Sandbox) -> Follow:
    """A sandbox made before sandboxes followed anything follows its repository's HEAD."""
    found = _read_follow(_follow_path(local, sandbox))
    if found is not None:
        return found
    return Follow(repo=str(sandbox.baseline.base.repo), base_ref=sandbox.baseline.base.sha, head_ref="HEAD")


def _save_follow(local: LocalRuntime, sandbox: Sandbox, follow: Follow) -> None:
    path = _follow_path(local, sandbox)
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(follow.__dict__, indent=2), encoding="utf-8")
    temp.replace(path)


@contextmanager
def _updating(local: LocalRuntime, sandbox: Sandbox) -> Iterator[None]:
    """One update of a sandbox at a time, across processes."""
    with flocked(_follow_path(local, sandbox).with_name("update.lock")):
        yield


def _exit_for(exc: LoopgateError) -> typer.Exit:
    return _fail(str(exc), 2 if exc.kind == "config" else 3)


@sandbox_app.command("create")
def sandbox_create(
    repo: RepoOption = Path("."),
    base: str = "main",
    head: Annotated[str | None, typer.Option(help="The commit to fork (default HEAD).")] = None,
    worktree: WorktreeOption = None,
    config: ConfigOption = None,
) -> None:
    """Fork what HEAD (or a working tree) changed and route it; print the routing key and entry URLs."""
    _print_unconfined(_settings().confine == "on")
    try:
        with _terminate_as_interrupt():
            created = create(repo, base, head, worktree, config, StageProgress())
    except LoopgateError as exc:
        raise _exit_for(exc) from None
    evidence = created.evidence
    if created.sandbox is None:
        _print_summary(evidence)
        if evidence.verdict is Verdict.PASS:
            raise _fail("no service is affected by the change: there is nothing to fork", 0)
        raise typer.Exit(exit_code(evidence))
    key = created.sandbox.routing_key
    console.print(f"routing key: {key}", markup=False)
    for name, value in created.env().items():
        console.print(f"{name}={value}", markup=False)
    console.print(f"forks: {', '.join(s.name for s in evidence.forks)}", markup=False)
    console.print(f"update with: loopgate sandbox update {key}", markup=False)
    console.print(f"delete with: loopgate sandbox delete {key}", markup=False)


@sandbox_app.command("update")
def sandbox_update(
    key: str,
    head: Annotated[str | None, typer.Option(help="Follow this ref or commit instead.")] = None,
    worktree: WorktreeOption = None,
) -> None:
    """Re-fork only the services whose files changed since the sandbox's last source; the routing key,
    routes and data copies stay. Without options: the working tree or ref the sandbox follows."""
    try:
        with _terminate_as_interrupt():
            result = update(key, head, worktree, StageProgress())
    except LoopgateError as exc:
        raise _exit_for(exc) from None
    console.print(f"routing key: {key} (unchanged)", markup=False)
    console.print(f"source: {result.merge_sha[:12]} (was {result.previous_merge_sha[:12]})", markup=False)
    for service in result.services:
        if service.action == "baseline":
            continue
        ready = f", ready in {service.ready_ms} ms" if service.ready_ms is not None else ""
        console.print(f"{service.action} {service.name} ({service.reason}{ready})", markup=False)
    for note in result.notes:
        console.print(f"note: {note}", markup=False)
    if not result.ok:
        raise typer.Exit(1)


@sandbox_app.command("delete")
def sandbox_delete(key: str) -> None:
    """Tear a sandbox down: routes, forks, files."""
    try:
        delete(key)
    except LoopgateError as exc:
        raise _exit_for(exc) from None
    console.print(f"deleted {key}", markup=False)


@sandbox_app.command("list")
def sandbox_list() -> None:
    """Sandboxes on this machine."""
    found = records()
    if not found:
        console.print("no sandboxes", markup=False)
    for record in found:
        owner = "kept" if record.owner is None else f"pid {record.owner.pid}"
        forks = ", ".join(f"{n}@{p.port}" for n, p in record.forks.items()) or "-"
        console.print(
            f"{record.routing_key} env={record.env_id} head={record.head_sha[:12]} {owner} forks: {forks}",
            markup=False,
        )
