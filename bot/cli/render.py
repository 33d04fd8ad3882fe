"""`loopgate render`: print, as YAML, every object the Kubernetes runtime would create or patch for a
sandbox, so a user can check them (`kubectl apply --dry-run=server -f -`) before loopgate runs there."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bot.cli.output import _fail
from bot.cli.root import app
from bot.config import ConfigError
from bot.config.loader import ConfigFile, read_config, read_limited

NEEDS_KUBERNETES = "render needs --runtime kubernetes"


def _load(path: Path) -> ConfigFile:
    """The config with its node tree, so a missing `kubernetes:` section is reported with its line."""
    return read_config(read_limited(path), source=str(path))


def _require_kubernetes_sections(loaded: ConfigFile, services: list[str]) -> None:
    """A config written for `local` may still be rendered, if what is rendered says how it runs in a
    cluster; the loader checks this only for the runtime the config itself chooses."""
    config = loaded.config
    for name in services:
        if name not in config.services:
            raise ConfigError(f"unknown service {name!r} (services: {', '.join(sorted(config.services))})")
        if config.services[name].kubernetes is None:
            where = loaded.at("services", name)
            raise ConfigError(f"{where}: no `kubernetes:` section, which render --runtime kubernetes needs")
    for index, suite in enumerate(config.verify.suites):
        if suite.kubernetes is None:
            where = loaded.at("verify", "suites", index)
            raise ConfigError(f"{where}: suite {suite.name!r} has no `kubernetes:`, which render needs")


@app.command()
def render(
    config: Annotated[Path, typer.Option("--config", help="The .loopgate.yml to render.")],
    sandbox: Annotated[
        str, typer.Option("--sandbox", help="The sandbox's routing key: 6 to 16 of a-z and 0-9.")
    ],
    runtime: Annotated[
        str | None, typer.Option("--runtime", help="kubernetes (the only runtime with objects to render).")
    ] = None,
    routing: Annotated[
        str | None, typer.Option("--routing", help="istio, gateway-api or none; default the config's.")
    ] = None,
    service: Annotated[
        list[str] | None, typer.Option("--service", help="Fork this service (repeatable); default all.")
    ] = None,
    head: Annotated[str, typer.Option("--head", help="Head commit sha, for image templates.")] = "head",
    base: Annotated[str, typer.Option("--base", help="Base commit sha, for image templates.")] = "base",
    controls: Annotated[
        bool,
        typer.Option(
            "--controls",
            help="Also the sandbox's two controls (verify.diff.control): forks of the base commit beside it.",
        ),
    ] = False,
) -> None:
    """Print every object the Kubernetes runtime would create or patch for a sandbox, as YAML."""
    # Here, not at the top: the Kubernetes client costs every other command a third of a second to load.
    from bot.runtimes.kubernetes import objects
    from bot.runtimes.kubernetes.render import (
        ROUTINGS,
        control_keys,
        header,
        render_sandbox,
        settings_of,
        to_yaml,
    )

    if runtime is not None and runtime != "kubernetes":
        raise _fail(NEEDS_KUBERNETES, 2)
    if not objects.is_routing_key(sandbox):
        raise _fail(f"--sandbox {sandbox!r} is not a routing key: 6 to 16 of a-z and 0-9", 2)
    if routing is not None and routing not in ROUTINGS:
        raise _fail(f"--routing {routing!r} is not one of {', '.join(ROUTINGS)}", 2)
    try:
        loaded = _load(config)
        if runtime is None and loaded.config.runtime.kind != "kubernetes":
            raise _fail(f"{config} has runtime.kind {loaded.config.runtime.kind}: {NEEDS_KUBERNETES}", 2)
        services = sorted(set(service)) if service else sorted(loaded.config.services)
        _require_kubernetes_sections(loaded, services)
        shown = control_keys(sandbox) if controls else []
        documents = render_sandbox(
            loaded.config,
            key=sandbox,
            routing=routing,
            services=services,
            head_sha=head,
            base_sha=base,
            controls=shown,
        )
    except ConfigError as exc:
        raise _fail(str(exc), 2) from None
    chosen = routing or settings_of(loaded.config).routing
    comment = header(
        key=sandbox, routing=chosen, services=services, head_sha=head, base_sha=base, controls=shown
    )
    typer.echo(to_yaml(documents, comment), nl=False)
