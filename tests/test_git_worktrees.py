"""Worktrees of one repository made at once: a baseline's, a sandbox's and its controls' while builds
run, from threads and from other processes (real git, real repositories)."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bot.runtimes.git import Git
from tests.gitrepo import GitRepo


def test_worktrees_added_at_once_each_get_their_own_commit(tmp_path: Path) -> None:
    """Git names a worktree's bookkeeping after its directory's last part: eight adds at once of
    directories all called `worktree` pick the same name unless they take turns."""
    repo = GitRepo.init(tmp_path / "repo", {"which.txt": "0\n"})
    shas = [repo.git("rev-parse", "HEAD")]
    for n in range(1, 8):
        repo.write("which.txt", f"{n}\n")
        shas.append(repo.commit(f"change {n}"))
    targets = [tmp_path / f"env{n}" / "worktree" for n in range(8)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda n: Git(repo.path).worktree_add(targets[n], shas[n]), range(8)))

    assert [(t / "which.txt").read_text() for t in targets] == [f"{n}\n" for n in range(8)]
    expected = [repo.path.resolve(), *(t.resolve() for t in targets)]
    assert sorted(Git(repo.path).worktrees()) == sorted(expected)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda t: Git(repo.path).worktree_remove(t), targets))
    assert Git(repo.path).worktrees() == [repo.path.resolve()]
    assert not any(t.exists() for t in targets)


def test_a_repository_named_by_a_linked_worktree_shares_its_lock(tmp_path: Path) -> None:
    """Adds through the main checkout and through one of its linked worktrees take turns on one lock,
    the one in the shared `.git`, not one of their own."""
    repo = GitRepo.init(tmp_path / "repo", {"a.txt": "a\n"})
    head = repo.git("rev-parse", "HEAD")
    linked = tmp_path / "linked"
    Git(repo.path).worktree_add(linked, head)
    lock = repo.path / ".git" / "loopgate-worktrees.lock"
    assert lock.is_file()
    lock.unlink()

    Git(linked).worktree_add(tmp_path / "through-linked", head)

    assert lock.is_file()
    assert not (repo.path / ".git" / "worktrees" / "linked" / "loopgate-worktrees.lock").exists()
    assert (tmp_path / "through-linked" / "a.txt").read_text() == "a\n"


def test_a_bare_repository_is_locked_in_itself(tmp_path: Path) -> None:
    source = GitRepo.init(tmp_path / "source", {"a.txt": "a\n"})
    bare = tmp_path / "bare.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(source.path), str(bare)], check=True)

    Git(bare).worktree_add(tmp_path / "wt", source.git("rev-parse", "HEAD"))

    assert (bare / "loopgate-worktrees.lock").is_file()
    assert (tmp_path / "wt" / "a.txt").read_text() == "a\n"
