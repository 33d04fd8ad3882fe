"""`loopgate app manifest` and `loopgate serve`: the GitHub App, its manifest and its server."""

from __future__ import annotations

import contextlib
import json
import os
from importlib import resources
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from bot.cli.output import _fail, _terminate_as_interrupt, console, errors
from bot.cli.root import app, app_app
from bot.config import AppSettings, LoopgateError
from bot.evidence import Evidence
from bot.runtimes.choice import Runtimes
from bot.runtimes.local import LocalRuntime

MANIFEST_PACKAGE = "bot.manifest"
"""The top-level `app.yml`, shipped in the package (pyproject.toml maps it) so a wheel has it too."""


def app_manifest_data(url: str = "") -> dict[str, Any]:
    """The App manifest, its webhook and redirect URLs pointed at `url` when given."""
    import yaml

    text = resources.files(MANIFEST_PACKAGE).joinpath("app.yml").read_text(encoding="utf-8")
    manifest: dict[str, Any] = yaml.safe_load(text)
    if url:
        base = url.rstrip("/")
        manifest["hook_attributes"]["url"] = f"{base}/webhooks/github"
        manifest["redirect_url"] = f"{base}/"
    return manifest


@app_app.command("manifest")
def app_manifest(
    url: Annotated[str, typer.Option(help="Where this loopgate server is reachable from GitHub.")] = "",
) -> None:
    """Print the App manifest (JSON) for GitHub's manifest flow."""
    console.print(json.dumps(app_manifest_data(url), indent=2), markup=False)


def _app_settings() -> AppSettings:
    try:
        return AppSettings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "LOOPGATE_" + str(first["loc"][0]).upper()
        why = "is required" if first["type"] == "missing" else first["msg"]
        raise _fail(f"{name} {why}", 2) from None


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
) -> None:
    """Run the GitHub App: webhook server plus LOOPGATE_WORKERS worker loops."""
    import uvicorn

    from bot.github.client import GitHubApp
    from bot.pipeline import new_run_id
    from bot.server import Metrics, create_app
    from bot.server.webhooks import replay_unprocessed
    from bot.store import Store
    from bot.worker import Mirrors, RunEnvironment, WorkerPool, recover

    settings = _app_settings()
    try:
        private_key = settings.private_key()
    except (ValueError, OSError) as exc:
        raise _fail(str(exc), 2) from None
    try:
        store = Store.open(settings.database(), state_dir=settings.state_dir)
    except LoopgateError as exc:
        raise _fail(str(exc), 3) from None
    metrics = Metrics()
    github = GitHubApp(
        settings.github_app_id, private_key, settings.github_api_url, throttle=settings.github_throttle
    )
    runtime = Runtimes(settings, only=settings.runtime).get(settings.runtime)

    def observe(evidence: Evidence) -> None:
        for stage in evidence.stages:
            metrics.stage_seconds.labels(stage.name).observe(stage.duration_ms / 1000)

    env = RunEnvironment(
        settings,
        store,
        github,
        runtime,
        Mirrors(settings.git_cache_dir or settings.state_dir / "mirrors"),
        observe,
    )
    for run_id in recover(env):
        errors.print(f"loopgate: concluded run {run_id} left in flight by a previous process", markup=False)
    replay_unprocessed(store, new_run_id)
    pool = WorkerPool(env, settings.workers)
    pool.start()
    server = create_app(
        settings, store, github, workers_alive=pool.alive, new_run_id=new_run_id, metrics=metrics
    )
    try:
        # uvicorn re-raises SIGTERM after its graceful shutdown; as an interrupt it lets this block
        # stop the workers and the baselines this process started.
        with _terminate_as_interrupt(), contextlib.suppress(KeyboardInterrupt):
            uvicorn.run(server, host=host, port=port, log_level="warning")
    finally:
        pool.stop()
        if isinstance(runtime, LocalRuntime):
            for record, _ in runtime.baselines():
                if record.owner is not None and record.owner.pid == os.getpid():
                    runtime.down(record.env_id)
        store.close()
