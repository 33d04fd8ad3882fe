"""Real git repositories for tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


class GitRepo:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def init(cls, path: Path, files: dict[str, str] | None = None, source: Path | None = None) -> GitRepo:
        if source is not None:
            shutil.copytree(
                source, path, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.db")
            )
        path.mkdir(parents=True, exist_ok=True)
        repo = cls(path)
        repo.git("init", "-q", "-b", "main")
        for name, text in (files or {}).items():
            repo.write(name, text)
        repo.commit("initial")
        return repo

    def git(self, *args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=self.path, capture_output=True, text=True, env={**os.environ, **GIT_ENV}
        )
        if done.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} failed: {done.stderr}")
        return done.stdout.strip()

    def write(self, name: str, text: str) -> None:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")

    def branch(
        self, name: str, files: dict[str, str] | None = None, patch: Path | None = None, start: str = "main"
    ) -> str:
        """A branch off `start` with files written or a patch applied; the checkout returns to main."""
        self.git("checkout", "-q", "-B", name, start)
        if patch is not None:
            self.git("apply", "--index", str(patch))
        for path, text in (files or {}).items():
            self.write(path, text)
        sha = self.commit(f"change on {name}")
        self.git("checkout", "-q", "main")
        return sha

    def worktrees(self) -> list[str]:
        return [
            line
            for line in self.git("worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")
        ]
