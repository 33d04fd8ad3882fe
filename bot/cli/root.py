"""The root Typer application and its command groups; the command modules register on them."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Prove agent changes in sandboxes.")
env_app = typer.Typer(no_args_is_help=True, help="The shared baseline: start, stop, inspect.")
sandbox_app = typer.Typer(no_args_is_help=True, help="Sandboxes for the inner loop: forks you can call.")
app_app = typer.Typer(no_args_is_help=True, help="The GitHub App: its manifest.")
config_app = typer.Typer(no_args_is_help=True, help="The .loopgate.yml file: check it without running it.")
app.add_typer(env_app, name="env")
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(app_app, name="app")
app.add_typer(config_app, name="config")
