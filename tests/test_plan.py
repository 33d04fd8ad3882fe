"""Plan: which services a diff affects, where config comes from, and what stops a run before it starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.config import ConfigError
from bot.config.globs import matches, matches_some
from bot.pipeline import make_plan
from bot.runtimes.git import Git
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
    loosened = CONFIG.split("  worker:")[0]  # drops the worker service and the suites
    repo.branch("agent/loosen", {".loopgate.yml": loosened, "svc/api/main.py": "x = 3\n"})
    plan = make_plan(repo.path, "main", "agent/loosen")
    assert set(plan.config.services) == {"api", "worker"}
    assert plan.head_config is not None and set(plan.head_config.services) == {"api"}
    assert plan.run_head_suites


def test_head_config_without_services_runs_no_head_suites(repo: GitRepo) -> None:
    repo.branch("agent/empty", {".loopgate.yml": "version: 1\n", "svc/api/main.py": "x = 3\n"})
    plan = make_plan(repo.path, "main", "agent/empty")
    assert set(plan.config.services) == {"api", "worker"}
    assert plan.head_config is None and not plan.run_head_suites
    assert plan.notes[-1] == (
        "head's .loopgate.yml is invalid, so its suites did not run: .loopgate.yml (head):1 services:"
        " declare at least one service; with none, nothing could ever be verified"
    )


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


@given(
    st.lists(st.from_regex(r"[ab]{1,2}(/[ab*]{1,2}){0,2}", fullmatch=True), max_size=6),
    st.from_regex(r"\*?\*?[ab]{0,2}(/[ab*]{1,3}){0,2}", fullmatch=True),
)
def test_matches_some_agrees_with_matches(paths: list[str], pattern: str) -> None:
    assert matches_some(pattern, sorted(paths)) == any(matches(path, [pattern]) for path in paths)


# -- a config that cannot verify anything at the base commit is a config error ---------------------

SERVICE = 'version: 1\nservices:\n  api:\n    paths: ["svc/api/**"]\n' + (
    '    local: {{run: "serve {{port}}", cwd: {cwd}}}\n'
)


def test_dead_globs_beside_live_ones_and_in_suites_are_notes(repo: GitRepo) -> None:
    plan = make_plan(repo.path, "main", "main")
    assert plan.notes == [
        ".loopgate.yml:4 services.api.paths[1]: 'shared/*.proto' matches no file at the base commit",
        ".loopgate.yml:11 verify.suites[0].paths[0]: 'e2e/**' matches no file at the base commit",
    ]


def test_service_whose_globs_match_no_file_is_a_config_error(repo: GitRepo) -> None:
    config = CONFIG.replace('paths: ["svc/worker"]', 'paths:\n      - "svc/wrker/**"\n      - "svc/wrk.py"')
    repo.write(".loopgate.yml", config)
    repo.commit("typo in a glob")
    with pytest.raises(ConfigError) as caught:
        make_plan(repo.path, "main", "main")
    assert str(caught.value) == (
        ".loopgate.yml:8 services.worker.paths:"
        " no file at the base commit matches 'svc/wrker/**', 'svc/wrk.py'"
    )


def test_every_broken_service_is_counted(repo: GitRepo) -> None:
    config = CONFIG.replace("svc/api/**", "nope/**").replace('"shared/*.proto"', '"gone/*"')
    repo.write(".loopgate.yml", config.replace('["svc/worker"]', '["svc/none"]'))
    repo.commit("globs that match nothing")
    with pytest.raises(ConfigError) as caught:
        make_plan(repo.path, "main", "main")
    assert str(caught.value) == (
        ".loopgate.yml:4 services.api.paths:"
        " no file at the base commit matches 'nope/**', 'gone/*' (and 1 more)"
    )


@pytest.mark.parametrize(
    ("cwd", "problem"),
    [
        ("svc/gone", "'svc/gone' does not exist at the base commit"),
        (
            "svc/api/main.py",
            "'svc/api/main.py' is not a directory at the base commit ('svc/api/main.py' is not)",
        ),
        ("README.md/x", "'README.md/x' is not a directory at the base commit ('README.md' is not)"),
        ("link/api", "'link/api' goes through the symlink 'link', which could lead out of the repository"),
        ("out", "'out' goes through the symlink 'out', which could lead out of the repository"),
    ],
)
def test_cwd_must_be_a_directory_of_the_base_commit(repo: GitRepo, cwd: str, problem: str) -> None:
    (repo.path / "link").symlink_to("svc")
    (repo.path / "out").symlink_to("/etc")
    repo.write(".loopgate.yml", SERVICE.format(cwd=cwd))
    repo.commit("cwd")
    with pytest.raises(ConfigError) as caught:
        make_plan(repo.path, "main", "main")
    assert str(caught.value) == f".loopgate.yml:5 services.api.local.cwd: {problem}"


@pytest.mark.parametrize("cwd", [".", "svc", "./svc/api/", "svc/api"])
def test_cwd_that_is_a_directory_of_the_base_commit_plans(repo: GitRepo, cwd: str) -> None:
    repo.write(".loopgate.yml", SERVICE.format(cwd=cwd))
    repo.commit("cwd")
    assert make_plan(repo.path, "main", "main").config.services["api"].local.cwd == cwd


def test_cwd_the_head_removes_is_the_changes_fault_not_the_configs(repo: GitRepo) -> None:
    repo.write(".loopgate.yml", SERVICE.format(cwd="svc/api"))
    repo.commit("cwd")
    repo.git("checkout", "-q", "-b", "agent/rm")
    repo.git("rm", "-q", "-r", "svc/api")
    repo.commit("remove the service's directory")
    repo.git("checkout", "-q", "main")
    assert make_plan(repo.path, "main", "agent/rm").affected == {"api": ["svc/api/main.py"]}


def test_non_utf8_config_at_base_names_the_line(repo: GitRepo) -> None:
    (repo.path / ".loopgate.yml").write_bytes(CONFIG.encode().replace(b"verify:", b"# \xff\nverify:"))
    repo.commit("latin-1 comment")
    with pytest.raises(ConfigError) as caught:
        make_plan(repo.path, "main", "main")
    assert str(caught.value) == ".loopgate.yml:9 not valid UTF-8 (byte 0xff)"


def test_oversized_config_at_base_is_refused(repo: GitRepo) -> None:
    repo.write(".loopgate.yml", CONFIG + ("#" * 99 + "\n") * 12_000)
    repo.commit("huge config")
    with pytest.raises(
        ConfigError, match=r"^\.loopgate\.yml:\d+ the file is larger than the limit of 1 MiB$"
    ):
        make_plan(repo.path, "main", "main")


def test_config_override_is_checked_against_the_base_tree(repo: GitRepo, tmp_path: Path) -> None:
    override = tmp_path / "loopgate.yml"
    override.write_text(SERVICE.format(cwd=".").replace("svc/api/**", "src/**"))
    with pytest.raises(ConfigError) as caught:
        make_plan(repo.path, "main", "main", override)
    assert (
        str(caught.value) == f"{override}:4 services.api.paths: no file at the base commit matches 'src/**'"
    )


def test_a_file_name_that_is_not_utf8_is_planned_not_a_crash(tmp_path: Path) -> None:
    """An agent may commit any bytes as a file name; the plan still maps it to its service."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git = Git(repo)
    git.run("init", "-q", "-b", "main")
    (repo / "svc").mkdir()
    (repo / "svc" / "ok.py").write_text("x = 1\n")
    git.run("add", "-A")
    git.run("commit", "-qm", "base")
    base = git.resolve("HEAD")
    (repo / "svc" / os.fsdecode(b"caf\xe9.py")).write_text("x = 2\n")
    git.run("add", "-A")
    git.run("commit", "-qm", "head")
    names = git.changed_files(base, git.resolve("HEAD"))
    assert names == ["svc/caf\\xe9.py"]
    assert matches(names[0], ["svc/**"])
