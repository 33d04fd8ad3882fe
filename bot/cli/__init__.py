"""The `loopgate` command. Errors become exit codes here, at the edge, and nowhere else."""

from __future__ import annotations

import sys

# Importing a command module registers its commands on `app`, in the order `loopgate --help` lists them.
# isort: off
from bot.cli import verify, zoo, serve, env, sandbox, render, mcp, config, init  # noqa: F401

# isort: on
from bot.cli.output import EXAMPLES, StageProgress, console, errors
from bot.cli.root import app
from bot.cli.serve import MANIFEST_PACKAGE, app_manifest_data
from bot.cli.verify import make_demo_repo
from bot.config import LoopgateError

__all__ = [
    "EXAMPLES",
    "MANIFEST_PACKAGE",
    "StageProgress",
    "app",
    "app_manifest_data",
    "console",
    "errors",
    "main",
    "make_demo_repo",
]


def main() -> None:  # pragma: no cover - console entry point
    try:
        app()
    except LoopgateError as exc:
        errors.print(f"loopgate: {exc}", markup=False)
        sys.exit(2 if exc.kind == "config" else 3)
