"""`loopgate init`: a first `.loopgate.yml`, drafted from what the repository already declares.

The drafting is `bot.config.draft` (pure); this command only picks the files it reads and writes
the result, never over an existing config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from bot.cli.output import RepoOption, _fail, console
from bot.cli.root import app
from bot.config import CONFIG_FILE
from bot.config.draft import COMPOSE_FILES, PER_DIRECTORY, PROCFILES, draft

SKIPPED_DIRS = {".git", "node_modules", ".venv", "venv", "__pycache__", "dist", "build", ".tox", "target"}
MAX_DEPTH = 4
"""Directories below the root looked into: services live near the top of a repository."""
MAX_FILE_BYTES = 256 * 1024


@app.command()
def init(
    repo: RepoOption = Path("."),
    write: Annotated[
        bool,
        typer.Option("--write", help=f"Write {CONFIG_FILE} (only where none exists) instead of printing it."),
    ] = False,
) -> None:
    """Draft a .loopgate.yml from Procfile, docker-compose services with a build context, and
    per-directory package.json / pyproject.toml; `# TODO:` marks what a human must decide."""
    if not repo.is_dir():
        raise _fail(f"{repo}: not a directory", 2)
    result = draft(read_declarations(repo))
    if not result.services:
        for why in result.skipped:
            console.print(f"not drafted: {why}", markup=False)
        raise _fail(
            "found no service to draft from (no Procfile, no compose service with a build context, no"
            " package.json with a start script or pyproject.toml that says how it starts)",
            1,
        )
    if not write:
        console.print(result.text, markup=False, end="")
        return
    target = repo / CONFIG_FILE
    try:
        with target.open("x", encoding="utf-8") as out:  # never over an existing file, even a racing one
            out.write(result.text)
    except FileExistsError:
        raise _fail(
            f"{target} exists; loopgate init never overwrites it (print the draft without --write)", 1
        ) from None
    names = ", ".join(service.name for service in result.services)
    console.print(
        f"wrote {target}: {names}; resolve its TODOs, then run `loopgate config check`", markup=False
    )


def read_declarations(repo: Path) -> dict[str, str]:
    """The files drafting reads: Procfiles, compose files, per-directory manifests, and the Python
    files and Dockerfiles beside them (to find an app object or a CMD)."""
    wanted = {*PROCFILES, *COMPOSE_FILES, *PER_DIRECTORY, "Dockerfile"}
    files: dict[str, str] = {}
    root = repo.resolve()
    for directory, dirs, names in os.walk(root):
        here = Path(directory)
        depth = len(here.relative_to(root).parts)
        dirs[:] = sorted(
            d for d in dirs if d not in SKIPPED_DIRS and not d.startswith(".") and depth < MAX_DEPTH
        )
        python = "pyproject.toml" in names
        for name in sorted(names):
            if name in wanted or (python and name.endswith(".py")):
                path = here / name
                if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
                    continue
                try:
                    files[path.relative_to(root).as_posix()] = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
    return files
