"""Following a source: a kept sandbox moves to a new head (a working tree's snapshot, another commit) and
only the services whose files changed since its last source start again.

The routing key, the routes and the data copies stay. A service that changed is re-forked (the new
fork is routed as soon as it is healthy, then the old one stops); a service the new head affects that
the sandbox had not forked is forked and routed; a forked service whose files are back to base is
unforked (its tagged requests reach the baseline again); every other service is left alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from bot.config import ConfigError
from bot.config.globs import matches
from bot.pipeline.plan import make_plan
from bot.pipeline.stages import StageListener
from bot.runtimes.git import Git
from bot.runtimes.protocol import ForkOutcome, Runtime, Sandbox, SandboxUpdates

Action = Literal["reforked", "forked", "unforked", "kept", "baseline", "failed"]


class UpdatableRuntime(Runtime, SandboxUpdates, Protocol):
    """A runtime whose sandboxes can follow a source."""


@dataclass(frozen=True)
class UpdateRequest:
    repo: Path
    head_ref: str
    """A ref or commit: for a working tree, the snapshot commit (`bot.runtimes.git.snapshot_worktree`)."""
    base_ref: str | None = None
    """Only to check that the base has not moved; the sandbox's baseline commit by default."""
    config_file: Path | None = None
    retry: tuple[str, ...] = ()
    """Services a previous update failed to start again: re-forked even when unchanged since."""


@dataclass
class ServiceUpdate:
    name: str
    action: Action
    reason: str
    ready_ms: int | None = None
    url: str | None = None
    log_tail: str | None = None


@dataclass
class UpdateResult:
    routing_key: str
    base_sha: str
    head_sha: str
    merge_sha: str
    previous_merge_sha: str
    changed_files: list[str]
    """Files that differ between the previous merge commit and the new one."""
    services: list[ServiceUpdate] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    duration_ms: int = 0

    def names(self, action: Action) -> list[str]:
        return [s.name for s in self.services if s.action == action]

    @property
    def ok(self) -> bool:
        return not self.names("failed")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def _stage(listener: StageListener, name: str) -> Iterator[None]:
    listener(name, "started")
    try:
        yield
    except BaseException:
        listener(name, "error")
        raise
    listener(name, "ok")


def update_sandbox(
    runtime: UpdatableRuntime,
    sandbox: Sandbox,
    request: UpdateRequest,
    listener: StageListener | None = None,
) -> UpdateResult:
    """Move `sandbox` to `request.head_ref`; LoopgateError (config: a bad ref, a conflict, a moved base)
    before anything running is touched."""
    tell = listener or (lambda _name, _event: None)
    started = time.monotonic()
    base_sha = sandbox.baseline.base.sha
    with _stage(tell, "plan"):
        plan = make_plan(request.repo, request.base_ref or base_sha, request.head_ref, request.config_file)
        if plan.base_sha != base_sha:
            raise ConfigError(
                f"the base moved: sandbox {sandbox.routing_key} runs on {base_sha[:12]}, "
                f"{request.base_ref} is now {plan.base_sha[:12]}; create a new sandbox"
            )
        previous = runtime.sandbox_source(sandbox)
        changed = (
            [] if previous == plan.merge_sha else Git(request.repo).changed_between(previous, plan.merge_sha)
        )
        forked = set(runtime.forked_services(sandbox))
    result = UpdateResult(
        routing_key=sandbox.routing_key,
        base_sha=base_sha,
        head_sha=plan.head_sha,
        merge_sha=plan.merge_sha,
        previous_merge_sha=previous,
        changed_files=changed,
    )
    config = sandbox.config
    start: list[str] = []
    stop: list[str] = []
    for name in sorted(config.services):
        hits = [path for path in changed if matches(path, config.services[name].paths)]
        if name in plan.affected and name in forked:
            if hits or name in request.retry:
                why = f"changed: {_few(hits)}" if hits else "its last update failed to start"
                result.services.append(ServiceUpdate(name, "reforked", why))
                start.append(name)
            else:
                result.services.append(ServiceUpdate(name, "kept", "unchanged since the last update"))
        elif name in plan.affected:
            result.services.append(ServiceUpdate(name, "forked", f"changed: {_few(plan.affected[name])}"))
            start.append(name)
        elif name in forked:
            result.services.append(ServiceUpdate(name, "unforked", "its files are back to base"))
            stop.append(name)
        else:
            result.services.append(ServiceUpdate(name, "baseline", "unchanged"))
    runtime.move_sandbox(sandbox, plan.merge_sha)
    by_name = {s.name: s for s in result.services}
    if start:
        _build(runtime, sandbox, start, by_name, tell)
        ready = [name for name in start if by_name[name].action != "failed"]
        if ready:
            with _stage(tell, "fork"), ThreadPoolExecutor(max_workers=len(ready)) as pool:
                specs = {name: config.services[name] for name in ready}
                for outcome in pool.map(lambda n: runtime.refork(sandbox, n, specs[n]), ready):
                    _record_fork(by_name[outcome.service], outcome)
    if stop:
        with _stage(tell, "unfork"):
            for name in stop:
                runtime.unfork(sandbox, name)
    if not runtime.forked_services(sandbox):
        result.notes.append("no service is forked any more: tagged requests reach the baseline everywhere")
    for service in result.services:
        if service.action == "failed":
            result.notes.append(
                f"{service.name}: {service.reason}; the sandbox still runs its previous version"
            )
    result.duration_ms = int((time.monotonic() - started) * 1000)
    return result


def _build(
    runtime: UpdatableRuntime,
    sandbox: Sandbox,
    names: list[str],
    by_name: dict[str, ServiceUpdate],
    tell: StageListener,
) -> None:
    specs = {name: sandbox.config.services[name] for name in names}
    needing = names  # a runtime's build is quick when a service has nothing to build
    with _stage(tell, "build"), ThreadPoolExecutor(max_workers=len(needing)) as pool:
        for name, built in zip(
            needing, pool.map(lambda n: runtime.build(sandbox, n, specs[n]), needing), strict=True
        ):
            if not built.ok:
                update = by_name[name]
                update.action, update.log_tail = "failed", built.log_tail
                update.reason = f"{update.reason}; build failed: {built.detail}"


def _record_fork(update: ServiceUpdate, outcome: ForkOutcome) -> None:
    update.ready_ms, update.url = outcome.ready_ms, outcome.url
    if outcome.status != "ready":
        update.action, update.log_tail = "failed", outcome.log_tail
        update.reason = f"{update.reason}; fork {outcome.detail}"


def _few(paths: list[str]) -> str:
    return ", ".join(paths[:3]) + (" …" if len(paths) > 3 else "")
