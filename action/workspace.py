"""The checked-out repository the Action runs in: the base and default branches fetched and resolved,
and files read at a commit, never from the checkout (which holds the agent's change).

`actions/checkout` fetches one commit by default; loopgate needs the base branch and the history
between it and the head to merge them, so the branches are fetched here (and a shallow clone is
deepened) rather than asking every caller to remember `fetch-depth: 0`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from bot.config import ConfigError
from bot.runtimes.git import Git


class Workspace:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.git = Git(path)
        self._unfetched: dict[str, str] = {}

    def fetch(self, branches: Iterable[str]) -> None:
        """Bring `origin`'s branches up to date; without an `origin` (a local run) use the local ones.
        A branch that cannot be fetched is reported when it is resolved, with git's reason."""
        if self.git.run("remote", "get-url", "origin", check=False).returncode != 0:
            return
        if self.git.run("rev-parse", "--is-shallow-repository", check=False).stdout.strip() == "true":
            self.git.run("fetch", "--quiet", "--no-tags", "--unshallow", "origin", check=False)
        for name in sorted(set(branches)):
            spec = f"+refs/heads/{name}:refs/remotes/origin/{name}"
            done = self.git.run("fetch", "--quiet", "--no-tags", "origin", spec, check=False)
            if done.returncode != 0:
                self._unfetched[name] = (done.stderr.strip().splitlines() or ["(no output)"])[-1]

    def branch_sha(self, branch: str) -> str:
        """The branch as `origin` has it, else as this clone does."""
        for ref in (f"refs/remotes/origin/{branch}", f"refs/heads/{branch}"):
            done = self.git.run("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
            if done.returncode == 0:
                return done.stdout.strip()
        why = f" (git fetch: {self._unfetched[branch]})" if branch in self._unfetched else ""
        raise ConfigError(f"branch {branch!r} does not exist in the repository{why}")

    def has_commit(self, sha: str) -> bool:
        return self.git.run("cat-file", "-e", f"{sha}^{{commit}}", check=False).returncode == 0

    def read(self, sha: str, path: str) -> str | None:
        """A file at a commit; None when that commit has none."""
        return self.git.show(sha, path)
