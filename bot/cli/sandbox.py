"""`loopgate sandbox`: sandboxes for the inner loop, forks you can call."""

from __future__ import annotations

from pathlib import Path

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
from bot.evidence import Verdict, exit_code
from bot.pipeline import Pipeline, VerifyRequest
from bot.runtimes.local import LocalRuntime
from bot.runtimes.local.allowlist import env_var_name


@sandbox_app.command("create")
def sandbox_create(
    repo: RepoOption = Path("."),
    base: str = "main",
    head: str = "HEAD",
    config: ConfigOption = None,
) -> None:
    """Fork what HEAD changed and route it; print the routing key and entry URLs."""
    runtime = LocalRuntime(_settings(), persistent=True)
    _print_unconfined(runtime.confined)
    pipeline = Pipeline(runtime, listener=StageProgress())
    request = VerifyRequest(repo=repo, base_ref=base, head_ref=head, config_file=config, sandbox_only=True)
    with _terminate_as_interrupt():
        evidence = pipeline.verify(request)
    if pipeline.kept is None:
        _print_summary(evidence)
        if evidence.verdict is Verdict.PASS:
            raise _fail("no service is affected by the change: there is nothing to fork", 0)
        raise typer.Exit(exit_code(evidence))
    key = pipeline.kept.sandbox.routing_key
    console.print(f"routing key: {key}", markup=False)
    console.print(f"LOOPGATE_ROUTING_KEY={key}", markup=False)
    console.print(f"LOOPGATE_BAGGAGE={_baggage(key)}", markup=False)
    for name, url in sorted(pipeline.kept.sandbox.baseline.entry_urls.items()):
        console.print(f"{env_var_name(name)}={url}", markup=False)
    console.print(f"forks: {', '.join(s.name for s in evidence.forks)}", markup=False)
    console.print(f"delete with: loopgate sandbox delete {key}", markup=False)


@sandbox_app.command("delete")
def sandbox_delete(key: str) -> None:
    """Tear a sandbox down: routes, forks, files."""
    runtime = LocalRuntime(_settings())
    sandbox = runtime.load_sandbox(key)
    if sandbox is None:
        raise _fail(f"no sandbox {key!r} (see `loopgate sandbox list`)", 2)
    runtime.teardown(sandbox)
    console.print(f"deleted {key}", markup=False)


@sandbox_app.command("list")
def sandbox_list() -> None:
    """Sandboxes on this machine."""
    records = LocalRuntime(_settings()).sandboxes()
    if not records:
        console.print("no sandboxes", markup=False)
    for record in records:
        owner = "kept" if record.owner is None else f"pid {record.owner.pid}"
        forks = ", ".join(f"{n}@{p.port}" for n, p in record.forks.items()) or "-"
        console.print(
            f"{record.routing_key} env={record.env_id} head={record.head_sha[:12]} {owner} forks: {forks}",
            markup=False,
        )
