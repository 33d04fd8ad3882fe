"""`loopgate env` (the shared baseline: start, stop, inspect) and `loopgate gc`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bot.cli.output import ConfigOption, RepoOption, _fail, _settings, _terminate_as_interrupt, console
from bot.cli.root import app, env_app
from bot.config import LoopgateError
from bot.pipeline import make_plan
from bot.runtimes.choice import Runtimes
from bot.runtimes.local import LocalRuntime
from bot.runtimes.local.allowlist import env_var_name
from bot.runtimes.protocol import Source


@app.command()
def gc(
    runtime: Annotated[
        str, typer.Option(help="`local`: this machine's; `kubernetes`: the cluster's (LOOPGATE_KUBECONFIG).")
    ] = "local",
) -> None:
    """Remove what dead runs left: local sandboxes and baselines whose owner is gone, or a cluster's
    forks, Jobs and routes past their expiry or whose fork is gone."""
    if runtime not in ("local", "kubernetes"):
        raise _fail(f"--runtime must be local or kubernetes, not {runtime!r}", 2)
    try:
        removed = Runtimes(_settings()).get("kubernetes" if runtime == "kubernetes" else "local").gc()
    except LoopgateError as exc:
        raise _fail(str(exc), 2 if exc.kind == "config" else 3) from None
    for line in removed:
        console.print(f"removed {line}", markup=False)
    console.print(f"{len(removed)} removed", markup=False)


@env_app.command("up")
def env_up(repo: RepoOption = Path("."), base: str = "main", config: ConfigOption = None) -> None:
    """Start (or find) the baseline for BASE and leave it running for later runs to share."""
    try:
        plan = make_plan(repo, base, base, config)
        with _terminate_as_interrupt():
            baseline = LocalRuntime(_settings(), persistent=True).up_baseline(
                Source(repo, plan.base_sha), plan.config
            )
    except LoopgateError as exc:
        raise _fail(str(exc), 2 if exc.kind == "config" else 3) from None
    except KeyboardInterrupt:
        raise _fail("interrupted; the baseline was stopped", 130) from None
    state = "already running" if baseline.reused else "started"
    console.print(f"baseline {baseline.env_id} {state} at {plan.base_sha[:12]}", markup=False)
    for name, url in sorted(baseline.entry_urls.items()):
        console.print(f"  {env_var_name(name)}={url}", markup=False)


@env_app.command("down")
def env_down(
    repo: RepoOption = Path("."),
    base: str = "main",
    all_envs: Annotated[bool, typer.Option("--all", help="Stop every baseline.")] = False,
) -> None:
    """Stop a baseline and every sandbox on it."""
    runtime = LocalRuntime(_settings())
    if all_envs:
        # Those with an unreadable record too: `down` stops what their journal says they ran.
        targets = [record.env_id for record, _ in runtime.baselines()] + sorted(runtime.env_problems())
    else:
        try:
            plan_base = make_plan(repo, base, base).base_sha
        except LoopgateError as exc:
            raise _fail(str(exc), 2) from None
        found = runtime.find_baseline(repo, plan_base)
        targets = [found.env_id] if found else []
    for env_id in targets:
        runtime.down(env_id)
        console.print(f"stopped {env_id}", markup=False)
    if not targets:
        console.print("no baseline running", markup=False)


@env_app.command("status")
def env_status() -> None:
    """List baselines, their health and sandboxes."""
    runtime = LocalRuntime(_settings())
    baselines = runtime.baselines()
    if not baselines:
        console.print("no baseline running", markup=False)
    if any(record.databases for record, _ in baselines):
        console.print(runtime.postgres_site().note(), markup=False)
    for env_id, why in sorted(runtime.env_problems().items()):
        console.print(f"{env_id} broken: record {why} (`loopgate gc` stops what it ran)", markup=False)
    for record, _healthy in baselines:
        owner = "kept (env up)" if record.owner is None else f"owned by pid {record.owner.pid}"
        health = runtime.env_health(record)
        console.print(
            f"{record.env_id} {health} {owner} repo={record.repo} base={record.base_sha[:12]}", markup=False
        )
        for name, port in sorted(record.listeners.items()):
            console.print(f"  {name}: http://127.0.0.1:{port}", markup=False)
        for sandbox in runtime.registry.sandboxes(record.env_id):
            console.print(
                f"  sandbox {sandbox.routing_key}: forks {', '.join(sandbox.forks) or '-'}", markup=False
            )
