"""A cache of bare mirrors, one per repository, fetched incrementally.

The installation token reaches git through `GIT_ASKPASS` and an environment variable of the git
process only: it is never written into a remote URL, a config file or the cache.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

from bot.config import InfrastructureError

_ASKPASS = """#!/bin/sh
case "$1" in
  Username*) echo x-access-token ;;
  *) echo "$LOOPGATE_GIT_TOKEN" ;;
esac
"""


class Mirrors:
    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        cache_dir.mkdir(parents=True, exist_ok=True)
        self._askpass = cache_dir / "askpass.sh"
        if not self._askpass.exists():
            self._askpass.write_text(_ASKPASS, encoding="utf-8")
            self._askpass.chmod(0o700)

    def path(self, repo: str) -> Path:
        return self.cache_dir / (repo.replace("/", "__") + ".git")

    def sync(self, repo: str, clone_url: str, token: str | None) -> Path:
        """Clone the mirror on first use, fetch every branch afterwards; one sync per repo at a time."""
        target = self.path(repo)
        with (self.cache_dir / f"{target.name}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (target / "HEAD").exists():
                self._git(token, "clone", "--mirror", "--quiet", clone_url, str(target))
            else:
                self._git(token, "-C", str(target), "remote", "set-url", "origin", clone_url)
                self._git(token, "-C", str(target), "fetch", "--prune", "--quiet", "origin")
        return target

    def _git(self, token: str | None, *args: str) -> None:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("LOOPGATE_")},
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": str(self._askpass),
            "LOOPGATE_GIT_TOKEN": token or "",
        }
        done = subprocess.run(
            ["git", "-c", "credential.helper=", *args], capture_output=True, text=True, env=env, timeout=600
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise InfrastructureError(f"git {args[0] if args[0] != '-C' else args[2]} failed: {last}")
