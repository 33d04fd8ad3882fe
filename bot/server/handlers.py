"""The webhook's event handlers, one per event (and action), and the table that dispatches to them.

A handler registers with `@handlers.on("push", model=Push)` and receives the payload already parsed
into its model, with a `Context` to record its delivery and queue runs; `bot.server.webhooks` routes,
parses and dispatches. An event only recorded, never acted on, registers with
`handlers.acknowledge(event, action, answer)`. The webhook's fast path (`bot.server.endpoint`) records
those, and acts for `on_push` and `on_pull_request`, in one prepared transaction with the same answers
and rows as these handlers; they remain what a replay after a crash runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import BackgroundTasks
from pydantic import BaseModel

from bot.github.events import (
    CheckRerun,
    CheckRunEvent,
    CheckSuiteEvent,
    Delete,
    Ignored,
    InstallationEvent,
    PullRequestEvent,
    Push,
    fork_branch,
)
from bot.github.gate import CHECK_NAME, is_gated
from bot.server.warmups import WARMING, warmup_for
from bot.store import Store
from bot.store.snapshots import NewRun

ZERO_SHA = "0" * 40
Handler = Callable[["Context", Any], str]


class Redelivery(Exception):
    """GitHub sent a delivery already handled: answer it, act on nothing."""


@dataclass
class Context:
    """What a handler needs. Handlers record their delivery themselves — `accept()`, or
    `accept_push()` which records it together with the run in one transaction."""

    store: Store
    delivery_id: str
    event: str
    action: str | None
    payload_text: str
    background: BackgroundTasks
    refresh_comment: Callable[[str, str, int | None], None]
    new_run_id: Callable[[], str]
    replaying: bool = False
    warm_baselines: bool = True
    """Queue a baseline warm-up for a push of the default branch (`LOOPGATE_WARM_BASELINES`)."""
    payload: dict[str, Any] | None = None
    """The decoded payload, for what the handler's model does not carry (the default branch)."""
    repo: str | None = None
    installation_id: int | None = None
    recorded: bool = False
    """Recorded by `accept()`, so still to be marked processed once acted on."""

    def accept(self) -> None:
        self.recorded = True
        if self.replaying:
            return
        if not self.store.record_delivery(
            self.delivery_id, self.event, self.action, self.repo, self.installation_id, self.payload_text
        ):
            raise Redelivery

    def reject(self, reason: str) -> None:
        """A malformed delivery is kept, marked rejected with its reason, and never acted on."""
        if not self.replaying:
            self.store.record_delivery(
                self.delivery_id,
                self.event,
                self.action,
                self.repo,
                self.installation_id,
                self.payload_text,
                outcome="rejected",
                error=reason,
            )


@dataclass(frozen=True)
class Entry:
    model: type[BaseModel]
    handler: Handler
    answer: str | None = None
    """Set for an event only recorded, never acted on: its answer, so the webhook can record it
    in one statement without calling the handler."""


@dataclass
class Handlers:
    table: dict[tuple[str, str | None], Entry] = field(default_factory=dict)

    def on(
        self, event: str, action: str | None = None, *, model: type[BaseModel]
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.table[(event, action)] = Entry(model, handler)
            return handler

        return register

    def acknowledge(self, event: str, action: str | None, answer: str) -> None:
        """An event answered without acting: its delivery is recorded, nothing else."""

        def record(ctx: Context, _event: Ignored) -> str:
            ctx.accept()
            return answer

        self.table[(event, action)] = Entry(Ignored, record, answer)

    def find(self, event: str, action: str | None) -> Entry | None:
        return self.table.get((event, action)) or self.table.get((event, None))


handlers = Handlers()


def _new_run(
    ctx: Context,
    repo: str,
    branch: str,
    sha: str,
    trigger: str,
    clone_url: str,
    installation: int | None,
    pr_number: int | None = None,
) -> NewRun:
    return NewRun(
        id=ctx.new_run_id(),
        repo=repo,
        branch=branch,
        head_sha=sha,
        check_name=CHECK_NAME,
        trigger=trigger,
        clone_url=clone_url,
        installation_id=installation,
        delivery_id=ctx.delivery_id,
        pr_number=pr_number,
    )


def _enqueue(ctx: Context, run: NewRun, *, reuse: bool = False) -> str:
    queued, created = ctx.store.enqueue_next(run, reuse=reuse)
    return f"queued run {queued.id}" if created else f"attached to run {queued.id}"


def ignored_push(push: Push) -> str | None:
    """The answer to a push that queues nothing (a tag, a deletion), None for one that does."""
    if push.branch is None:
        return "ignored: a tag push"
    if push.deleted or push.after == ZERO_SHA:
        return "ignored: branch deletions act on the delete event"
    return None


def push_outcome(created: bool, run_id: str, superseded: int) -> str:
    """The webhook's answer to a push that queued or attached to a run."""
    done = "queued run" if created else "attached to run"
    return f"{done} {run_id}" + (f"; superseded {superseded}" if superseded else "")


def push_run(push: Push, delivery_id: str, run_id: str) -> NewRun:
    """The run a push of a branch asks for (`ignored_push` said it asks for one)."""
    repo = push.repository
    return NewRun(
        id=run_id,
        repo=repo.full_name,
        branch=str(push.branch),
        head_sha=push.after,
        check_name=CHECK_NAME,
        trigger="push",
        clone_url=repo.clone_url,
        installation_id=push.installation_id,
        delivery_id=delivery_id,
    )


@handlers.on("push", model=Push)
def on_push(ctx: Context, push: Push) -> str:
    """A push supersedes only the runs of the commit it moved the branch from (`before`), never by
    arrival order: GitHub may deliver an older push after a newer one. The worker settles the rest
    against the branch head, and decides from the trusted config whether the branch is gated (see
    `bot.worker.executor`). A push of the default branch also queues its baseline's warm-up
    (`bot.server.warmups`)."""
    ignored = ignored_push(push)
    if ignored is not None:
        ctx.accept()
        return ignored
    run = push_run(push, ctx.delivery_id, ctx.new_run_id())
    warmup = warmup_for(push, ctx.payload or {}, ctx.delivery_id) if ctx.warm_baselines else None
    warming = WARMING if warmup is not None else ""
    if ctx.replaying:
        ctx.store.supersede(run.repo, run.branch, run.head_sha, heads=[push.before])
        if warmup is not None:
            ctx.store.enqueue_warmup(warmup)
        return _enqueue(ctx, run, reuse=True) + warming
    accepted = ctx.store.accept_push(
        ctx.delivery_id, ctx.payload_text, run, push.installation_id, replaces=push.before, warmup=warmup
    )
    if not accepted.new_delivery or accepted.run is None:
        raise Redelivery
    return push_outcome(accepted.created, accepted.run.id, len(accepted.superseded)) + warming


@handlers.on("delete", model=Delete)
def on_delete(ctx: Context, deleted: Delete) -> str:
    ctx.accept()
    if deleted.branch is None:
        return "ignored: a tag"
    stopped = ctx.store.cancel_branch(deleted.repository.full_name, deleted.branch, "the branch was deleted")
    return f"cancelled {len(stopped)} runs"


def _rerun(ctx: Context, rerun: CheckRerun) -> str:
    """A re-request always makes a new attempt; the worker decides whether its branch is gated."""
    branch = rerun.branch
    if not branch:
        previous = ctx.store.find(repo=rerun.repo.full_name, sha=rerun.head_sha, limit=1)
        branch = previous[0].branch if previous else None
    if not branch:
        return "ignored: no branch known for this commit"
    run = _new_run(
        ctx,
        rerun.repo.full_name,
        branch,
        rerun.head_sha,
        "rerun",
        rerun.repo.clone_url,
        rerun.installation_id,
    )
    return _enqueue(ctx, run)


@handlers.on("check_run", "rerequested", model=CheckRunEvent)
def on_check_run_rerequested(ctx: Context, event: CheckRunEvent) -> str:
    ctx.accept()
    if event.check_run.name != CHECK_NAME:
        return "ignored: another app's check"
    return _rerun(ctx, event.rerun)


@handlers.on("check_run", "requested_action", model=CheckRunEvent)
def on_requested_action(ctx: Context, event: CheckRunEvent) -> str:
    ctx.accept()
    if event.rerun.requested_action != "rerun":
        return "ignored: unknown action"
    return _rerun(ctx, event.rerun)


@handlers.on("check_suite", "rerequested", model=CheckSuiteEvent)
def on_check_suite_rerequested(ctx: Context, event: CheckSuiteEvent) -> str:
    ctx.accept()
    return _rerun(ctx, event.rerun)


handlers.acknowledge("check_suite", "requested", "ignored: the push starts the run")


PULL_CHECKED = ("opened", "reopened", "synchronize", "ready_for_review")
"""The pull request actions after which its head commit needs loopgate's check."""


def pull_run(pull: PullRequestEvent, delivery_id: str, run_id: str, trigger: str) -> NewRun:
    """A PR from a fork runs under a branch name no git ref can have, so no branch of the
    repository is mistaken for it and the worker answers it `neutral` (loopgate gates its own)."""
    branch = fork_branch(pull.head_branch) if pull.from_fork else pull.head_branch
    repo = pull.repository
    return NewRun(
        id=run_id,
        repo=repo.full_name,
        branch=branch,
        head_sha=pull.head_sha,
        check_name=CHECK_NAME,
        trigger=trigger,
        clone_url=repo.clone_url,
        installation_id=pull.installation_id,
        delivery_id=delivery_id,
        pr_number=pull.number,
    )


def refreshes_comment(pull: PullRequestEvent) -> bool:
    """Does this PR get loopgate's sticky comment refreshed? Its own branches' PRs, not forks'."""
    return not pull.from_fork and is_gated(pull.head_branch)


def _pull_run(ctx: Context, pull: PullRequestEvent, trigger: str) -> NewRun:
    return pull_run(pull, ctx.delivery_id, ctx.new_run_id(), trigger)


@handlers.on("pull_request", "edited", model=PullRequestEvent)
def on_pull_request_edited(ctx: Context, pull: PullRequestEvent) -> str:
    """A retargeted PR is verified again: the verdict it has was against another base. The run
    reads the PR's base when it starts, so a later retarget is never missed."""
    ctx.accept()
    if not pull.base_changed:
        return "ignored: only a base change re-verifies"
    return _enqueue(ctx, _pull_run(ctx, pull, "base_changed"))


@handlers.on("pull_request", "ready_for_review", model=PullRequestEvent)
def on_ready_for_review(ctx: Context, pull: PullRequestEvent) -> str:
    """Whoever readied the PR, a draft loopgate made is over: a later failure may draft it again."""
    outcome = on_pull_request(ctx, pull)
    ctx.store.clear_drafted(pull.repository.full_name, pull.number)
    return outcome


@handlers.on("pull_request", model=PullRequestEvent)
def on_pull_request(ctx: Context, pull: PullRequestEvent) -> str:
    """The PR's head commit gets a check: it attaches to the commit's run (its push made one), or a
    run is queued — one the worker concludes `neutral` when the branch is not gated, so a required
    check never blocks people's PRs."""
    ctx.accept()
    if pull.action not in PULL_CHECKED:
        return "ignored"
    outcome = _enqueue(ctx, _pull_run(ctx, pull, "pull_request"), reuse=True)
    if refreshes_comment(pull):
        ctx.background.add_task(ctx.refresh_comment, pull.repository.full_name, pull.head_branch, pull.number)
    return outcome


@handlers.on("installation", model=InstallationEvent)
@handlers.on("installation_repositories", model=InstallationEvent)
def on_installation(ctx: Context, change: InstallationEvent) -> str:
    ctx.accept()
    if change.action == "deleted":
        ctx.store.remove_installation(change.installation_id)
        return "installation removed"
    current = ctx.store.installation(change.installation_id)
    repos = set(current.repositories if current else ()) | set(change.added)
    ctx.store.upsert_installation(
        change.installation_id,
        change.account,
        sorted(repos - set(change.removed)),
        change.action == "suspend",
    )
    return "installation recorded"


handlers.acknowledge("ping", None, "pong")
