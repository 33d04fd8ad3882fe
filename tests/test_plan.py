"""Plan: which services a diff affects, where config comes from, and what stops a run before it starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.config import ConfigError
from bot.config.globs import matches
from bot.pipeline import make_plan
from tests.gitrepo import GitRepo

CONFIG = """\
version: 1
services:
  api:
    paths: ["svc/api/**", "shared/*.proto"]
    local: {run: "serve {port}"}
  worker:
    paths: ["svc/worker"]
    local: {run: "serve {port}"}
verify:
  suites:
    - {name: e2e, run: "true", paths: ["e2e/**"]}
"""


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return GitRepo.init(
        tmp_path / "r",
        {
            ".loopgate.yml": CONFIG,
            "svc/api/main.py": "x = 1\n",
            "svc/worker/w.py": "y = 1\n",
            "README.md": "hi\n",
        },
    )


@pytest.mark.parametrize(
    ("path", "pattern", "hit"),
    [
        ("svc/api/main.py", "svc/api/**", True),
        ("svc/api/deep/er/x.py", "svc/api/**", True),
        ("svc/apix/main.py", "svc/api/**", False),
        ("shared/a.proto", "shared/*.proto", True),
        ("shared/sub/a.proto", "shared/*.proto", False),
        ("svc/worker/w.py", "svc/worker", True),
        ("svc/workers/w.py", "svc/worker", False),
        ("a/b/c.txt", "**/c.txt", True),
        ("c.txt", "**/c.txt", True),
    ],
)
def test_path_globs(path: str, pattern: str, hit: bool) -> None:
    assert bool(matches(path, [pattern])) is hit


@given(st.lists(st.from_regex(r"[a-z]{1,5}", fullmatch=True), min_size=1, max_size=4))
def test_double_star_owns_everything_below_its_directory(segments: list[str]) -> None:
    assert matches("svc/api/" + "/".join(segments), ["svc/api/**"])
    assert not matches("other/" + "/".join(segments), ["svc/api/**"])


def test_affected_services_come_from_the_merge_base_diff(repo: GitRepo) -> None:
    repo.branch("agent/api", {"svc/api/main.py": "x = 2\n"})
    repo.write("svc/worker/w.py", "y = 2\n")  # main moves on; the agent did not touch worker
    repo.commit("main moves")
    plan = make_plan(repo.path, "main", "agent/api")
    assert plan.changed_files == ["svc/api/main.py"]
    assert plan.affected == {"api": ["svc/api/main.py"]}
    assert plan.merge_sha not in (plan.base_sha, plan.head_sha)  # a real merge commit
    assert not plan.run_head_suites


def test_docs_only_change_affects_nothing(repo: GitRepo) -> None:
    repo.branch("agent/docs", {"README.md": "better docs\n"})
    plan = make_plan(repo.path, "main", "agent/docs")
    assert plan.affected == {}
    assert plan.merge_sha == plan.head_sha  # fast-forward: the fork runs exactly what was pushed


def test_head_suite_change_runs_head_suites(repo: GitRepo) -> None:
    repo.branch("agent/suite", {"e2e/test_x.py": "def test(): pass\n"})
    assert make_plan(repo.path, "main", "agent/suite").run_head_suites


def test_config_comes_from_base_not_head(repo: GitRepo) -> None:
    repo.branch("agent/loosen", {".loopgate.yml": "version: 1\n", "svc/api/main.py": "x = 3\n"})
    plan = make_plan(repo.path, "main", "agent/loosen")
    assert set(plan.config.services) == {"api", "worker"}
    assert plan.head_config is not None and plan.head_config.services == {}
    assert plan.run_head_suites


def test_unknown_ref_is_a_config_error(repo: GitRepo) -> None:
    with pytest.raises(ConfigError, match="unknown ref 'agent/nope'"):
        make_plan(repo.path, "main", "agent/nope")


def test_merge_conflict_asks_for_a_rebase(repo: GitRepo) -> None:
    repo.branch("agent/conflict", {"svc/api/main.py": "x = 'agent'\n"})
    repo.write("svc/api/main.py", "x = 'team'\n")
    repo.commit("team edits the same line")
    with pytest.raises(ConfigError, match=r"merge conflict: .*svc/api/main.py.*rebase needed"):
        make_plan(repo.path, "main", "agent/conflict")


def test_missing_config_at_base(tmp_path: Path) -> None:
    bare = GitRepo.init(tmp_path / "bare", {"a.txt": "a\n"})
    with pytest.raises(ConfigError, match=r"\.loopgate\.yml not found at the base commit"):
        make_plan(bare.path, "main", "main")


def test_invalid_config_at_base_names_line(repo: GitRepo) -> None:
    repo.write(".loopgate.yml", CONFIG.replace('paths: ["svc/worker"]', "paths: svc/worker"))
    repo.commit("break config")
    with pytest.raises(ConfigError, match=r"^\.loopgate\.yml:7 services\.worker\.paths: expected a list$"):
        make_plan(repo.path, "main", "main")


def test_not_a_repository(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a git repository"):
        make_plan(tmp_path, "main", "main")
