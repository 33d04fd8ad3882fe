"""The one place loopgate runs `git`: resolving refs, merging without a checkout, worktrees, diffs."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bot.config import ConfigError, InfrastructureError

_GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "loopgate",
    "GIT_AUTHOR_EMAIL": "loopgate@localhost",
    "GIT_COMMITTER_NAME": "loopgate",
    "GIT_COMMITTER_EMAIL": "loopgate@localhost",
}


class MergeConflict(ConfigError):
    pass


class Git:
    def __init__(self, repo: Path) -> None:
        self.repo = repo

    def run(
        self, *args: str, check: bool = True, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        try:
            done = subprocess.run(
                ["git", "-C", str(self.repo), *args],
                capture_output=True,
                text=True,
                env={**os.environ, **_GIT_ENV, **(env or {})},
                stdin=subprocess.DEVNULL,
                timeout=300,
            )
        except FileNotFoundError:
            raise InfrastructureError("git is not installed") from None
        if check and done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise InfrastructureError(f"git {args[0]} failed: {last}")
        return done

    def check_repository(self) -> None:
        if not self.repo.is_dir():
            raise ConfigError(f"{self.repo}: no such directory")
        if self.run("rev-parse", "--git-dir", check=False).returncode != 0:
            raise ConfigError(f"{self.repo}: not a git repository")

    def resolve(self, ref: str) -> str:
        done = self.run("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
        if done.returncode != 0:
            raise ConfigError(f"unknown ref {ref!r} in {self.repo}")
        return done.stdout.strip()

    def merge(self, base: str, head: str) -> str:
        """Commit the merge of head into base without touching any checkout (like a PR's merge ref)."""
        if self._is_ancestor(head, base):
            return base
        if self._is_ancestor(base, head):
            # Fast-forward: the merge is head itself, so the fork runs exactly what the agent pushed.
            return head
        done = self.run("merge-tree", "--write-tree", "--name-only", "--no-messages", base, head, check=False)
        if done.returncode == 1:
            files = [line for line in done.stdout.splitlines()[1:] if line]
            raise MergeConflict(
                f"merge conflict: head does not merge cleanly into base in {', '.join(files[:5]) or '?'}"
                " (rebase needed)"
            )
        if done.returncode != 0:
            raise InfrastructureError(f"git merge-tree failed: {done.stderr.strip()}")
        tree = done.stdout.splitlines()[0].strip()
        message = f"loopgate: merge {head[:12]} into {base[:12]}"
        return self.run("commit-tree", tree, "-p", base, "-p", head, "-m", message).stdout.strip()

    def _is_ancestor(self, older: str, newer: str) -> bool:
        return self.run("merge-base", "--is-ancestor", older, newer, check=False).returncode == 0

    def changed_files(self, base: str, head: str) -> list[str]:
        """Files the head changed since it left base (three-dot: the merge-base diff)."""
        return self._names("diff", "--name-only", "--no-renames", "-z", f"{base}...{head}")

    def changed_between(self, old: str, new: str) -> list[str]:
        return self._names("diff", "--name-only", "--no-renames", "-z", old, new)

    def _names(self, *args: str) -> list[str]:
        """NUL-separated path names. The agent names its files: one that is not UTF-8 is shown with
        backslash escapes (still under its directory, so still matched to its service), never a crash."""
        out = self._output_bytes(*args)
        return sorted(name.decode("utf-8", "backslashreplace") for name in out.split(b"\0") if name)

    def show(self, sha: str, path: str) -> str | None:
        done = self.run("show", f"{sha}:{path}", check=False)
        return done.stdout if done.returncode == 0 else None

    def show_bytes(self, sha: str, path: str, limit: int) -> bytes | None:
        """A file's bytes at a commit, at most `limit` + 1 of them: a caller can refuse a file that is too
        big without git handing over all of it. None when the commit has no such file."""
        command = ["git", "-C", str(self.repo), "cat-file", "blob", f"{sha}:{path}"]
        try:
            process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, **_GIT_ENV}
            )
        except FileNotFoundError:
            raise InfrastructureError("git is not installed") from None
        with process:
            assert process.stdout is not None
            data = process.stdout.read(limit + 1)
            if len(data) > limit:
                process.kill()
                return data
            return data if process.wait(timeout=300) == 0 else None

    def tree(self, sha: str) -> dict[str, str]:
        """Every path of a commit, directories included, with its git mode (040000 a directory,
        120000 a symlink, 160000 a submodule, 100644/100755 a file)."""
        out = self._output_bytes("ls-tree", "-r", "-t", "-z", "--full-tree", sha)
        entries: dict[str, str] = {}
        for entry in out.split(b"\0"):
            if entry:
                meta, path = entry.split(b"\t", 1)
                # A name that is not UTF-8 still gets an entry (and matches no glob) instead of a crash.
                entries[path.decode("utf-8", "surrogateescape")] = meta.split(b" ", 1)[0].decode()
        return entries

    def _output_bytes(self, *args: str) -> bytes:
        try:
            done = subprocess.run(
                ["git", "-C", str(self.repo), *args],
                capture_output=True,
                env={**os.environ, **_GIT_ENV},
                timeout=300,
            )
        except FileNotFoundError:
            raise InfrastructureError("git is not installed") from None
        if done.returncode != 0:
            last = (done.stderr.decode(errors="replace").strip().splitlines() or ["(no output)"])[-1]
            raise InfrastructureError(f"git {args[0]} failed: {last}")
        return done.stdout

    def subject(self, sha: str) -> str:
        return self.run("log", "-1", "--format=%s", sha).stdout.strip()

    def worktree_add(self, path: Path, sha: str) -> None:
        with self._worktrees_locked():
            self.run("worktree", "add", "--detach", "--force", str(path), sha)

    def worktree_remove(self, path: Path) -> None:
        with self._worktrees_locked():
            self.run("worktree", "remove", "--force", "--force", str(path), check=False)
            self.run("worktree", "prune", check=False)

    @contextmanager
    def _worktrees_locked(self) -> Iterator[None]:
        """One worktree change at a time per repository, across processes. Git names a worktree's
        bookkeeping after the directory's last part (`worktree`, `worktree1`, ...): two adds at once can
        pick the same name and break each other (a baseline's and a sandbox's worktree are made at once
        while the baseline starts during the builds), and a prune can remove an add's half-made entry."""
        common = self._common_dir()
        if common is None:  # no repository any more: git's own error follows, unlocked
            yield
            return
        with open(common / "loopgate-worktrees.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _common_dir(self) -> Path | None:
        """The repository's shared `.git`: read from the disk for a plain checkout's top level (what
        loopgate is given), else asked of git (a linked worktree, a subdirectory, a bare repository)."""
        dot = self.repo / ".git"
        if dot.is_dir() and not (dot / "commondir").exists():
            return dot.resolve()
        found = self.run("rev-parse", "--path-format=absolute", "--git-common-dir", check=False)
        return Path(found.stdout.strip()) if found.returncode == 0 else None

    def worktrees(self) -> list[Path]:
        out = self.run("worktree", "list", "--porcelain").stdout
        return [Path(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith("worktree ")]


@dataclass(frozen=True)
class Snapshot:
    """A working tree's files as a commit: `repo` is the tree's top directory, `sha` the commit."""

    repo: Path
    sha: str
    parent: str | None


def snapshot_worktree(path: Path) -> Snapshot:
    """Commit what a working tree holds right now — tracked files as they are on disk, untracked files
    that are not ignored, deletions — with HEAD as the parent, without touching the user's index, HEAD,
    refs or files: `git add -A` goes into a throwaway index (a copy of the user's, so unchanged files
    are not hashed again). The commit is referenced by nothing; git keeps it for weeks (gc.pruneExpire).
    ConfigError, one line, for a path outside a repository or a tree with an unresolved conflict."""
    if not path.is_dir():
        raise ConfigError(f"{path}: no such directory")
    git = Git(path)
    found = git.run("rev-parse", "--show-toplevel", "--git-path", "index", check=False)
    lines = found.stdout.splitlines()
    if found.returncode != 0 or len(lines) != 2 or not lines[0]:
        raise ConfigError(f"{path}: not inside a git working tree")
    top, index = lines[0], path / lines[1]  # --git-path is relative to where git ran
    git = Git(Path(top))
    unmerged = git._names("diff", "--name-only", "--diff-filter=U", "-z")
    if unmerged:
        files = ", ".join(unmerged[:5]) + (" …" if len(unmerged) > 5 else "")
        raise ConfigError(f"{top}: unresolved merge conflict in {files}; resolve it before a snapshot")
    head_done = git.run("rev-parse", "--verify", "--quiet", "HEAD^{commit}", check=False)
    parent = head_done.stdout.strip() if head_done.returncode == 0 else None
    with tempfile.TemporaryDirectory(prefix="loopgate-snapshot-") as scratch:
        temp_index = Path(scratch) / "index"
        if index.is_file():
            shutil.copyfile(index, temp_index)
        env = {"GIT_INDEX_FILE": str(temp_index)}
        added = git.run("add", "--all", "--", ".", check=False, env=env)
        if added.returncode != 0:
            last = (added.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise ConfigError(f"{top}: cannot snapshot the working tree: {last}")
        tree = git.run("write-tree", env=env).stdout.strip()
    message = f"loopgate: snapshot of the working tree {top}"
    parents = ["-p", parent] if parent else []
    sha = git.run("commit-tree", tree, *parents, "-m", message).stdout.strip()
    return Snapshot(Path(top), sha, parent)
