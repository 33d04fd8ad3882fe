"""`loopgate verify` on a config that cannot verify anything: verdict `error`, exit 2, before any sandbox."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli
from tests.gitrepo import GitRepo

CONFIG = """\
version: 1
services:
  web:
    paths: ["web/**"]
    local: {run: "python -m http.server {port} --bind 127.0.0.1", cwd: site, health: /}
"""


def verify(repo: GitRepo, head: str, out: Path) -> tuple[int, dict[str, object], str]:
    done = run_cli("verify", "--repo", str(repo.path), "--base", "main", "--head", head, "--json", str(out))
    return done.returncode, json.loads(out.read_text()), done.stdout + done.stderr


def test_glob_that_matches_no_file_is_a_config_error(state_dir: Path, tmp_path: Path) -> None:
    """The glob names `web/` but the files live in `site/`: no change could ever fork the service."""
    repo = GitRepo.init(tmp_path / "repo", {".loopgate.yml": CONFIG, "site/index.html": "v1\n"})
    repo.branch("agent/x", {"site/index.html": "v2\n"})
    code, evidence, output = verify(repo, "agent/x", tmp_path / "evidence.json")
    reason = ".loopgate.yml:4 services.web.paths: no file at the base commit matches 'web/**'"
    assert code == 2, output
    assert evidence["verdict"] == "error" and evidence["error_kind"] == "config"
    assert evidence["reasons"] == [reason]
    assert reason in output


def test_docs_only_change_of_a_valid_config_still_passes(state_dir: Path, tmp_path: Path) -> None:
    config = CONFIG.replace('"web/**"', '"site/**"')
    repo = GitRepo.init(tmp_path / "repo", {".loopgate.yml": config, "site/index.html": "v1\n"})
    repo.branch("agent/docs", {"README.md": "docs\n"})
    code, evidence, output = verify(repo, "agent/docs", tmp_path / "evidence.json")
    assert code == 0, output
    assert evidence["verdict"] == "pass"
    assert evidence["reasons"] == ["no service is affected by the change"]
