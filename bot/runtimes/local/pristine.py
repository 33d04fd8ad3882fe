"""The base commit as base suites read it: a checkout of its own that no fork can write.

The baseline's worktree is where baseline services build and run; a fork that could reach it (or any
code sharing its uid, were confinement off) could rewrite the suites that judge it before they start.
Base suites therefore run from this second checkout, mounted read-only for them and read-only on
disk as well, so that even an unconfined run needs an explicit `chmod` to change it.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from bot.config import InfrastructureError

_WRITE = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
_READ = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
_ENTER = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH


def materialise(repo: Path, sha: str, target: Path) -> None:
    """Check `sha` out at `target`, readable by everyone (the confined uid, whatever loopgate's umask)
    and writable by no one.

    A checkout through a throw-away index, not `git worktree add`: nothing is registered in the
    repository (no `.git` link a suite could follow back), and attributes and filters apply as in any
    checkout (`git archive` would drop `export-ignore` files).
    """
    target.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="loopgate-index-") as scratch:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(scratch) / "index"), "GIT_CONFIG_NOSYSTEM": "1"}
        for args in (["read-tree", sha], ["checkout-index", "--all", "--force"]):
            done = subprocess.run(
                ["git", "-C", str(repo), f"--work-tree={target}", *args],
                capture_output=True,
                text=True,
                env=env,
                timeout=300,
            )
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise InfrastructureError(f"git {args[0]} of the base commit failed: {last}")
    _set_writable(target, writable=False)


def remove(target: Path) -> None:
    """Give write permission back (a non-root owner could not delete it otherwise) and remove it."""
    if target.is_dir():
        _set_writable(target, writable=True)
    shutil.rmtree(target, ignore_errors=True)


def _set_writable(root: Path, *, writable: bool) -> None:
    for directory, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            _chmod(Path(directory) / name, writable)
    _chmod(root, writable)


def _chmod(path: Path, writable: bool) -> None:
    mode = path.lstat().st_mode
    if stat.S_ISLNK(mode):
        return  # a link's own mode means nothing; its target is in the tree and is handled there
    os.chmod(path, stat.S_IMODE(mode | stat.S_IWUSR if writable else _read_only(mode)))


def _read_only(mode: int) -> int:
    return (mode & ~_WRITE) | _READ | (_ENTER if stat.S_ISDIR(mode) else 0)
