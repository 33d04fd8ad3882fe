"""`loopgate config check`: a config checked without running anything; with `--diff`, the plan's own
answer to what a change would fork and why."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.conftest import ROOT, make_shop, run_cli
from tests.gitrepo import GitRepo


def test_the_shop_config_is_valid_and_every_service_is_listed_with_its_globs(tmp_path: Path) -> None:
    repo = make_shop(tmp_path / "shop", [])
    done = run_cli("config", "check", "--repo", str(repo.path))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"{repo.path / '.loopgate.yml'}: valid (version 1, runtime local)" in out
    for name in ("gateway", "orders", "inventory", "payments"):
        assert f"\n  {name}\n    paths: services/{name}/**\n" in out
        assert f"kubernetes: deployment/{name} in namespace shop, image shop/{name}:{{sha}}" in out
    assert "health: GET /healthz answers 2xx (within 30s)" in out
    assert "state: sqlite orders.db (each fork gets its own copy)" in out
    assert "state: postgres database payments" in out
    assert "  e2e\n    gating, timeout 120s\n" in out
    assert "every service's globs match files at HEAD" in out
    assert "baseline start order" not in out  # no `after:`: all at once


def test_with_diff_it_says_which_services_would_fork_and_why(tmp_path: Path) -> None:
    repo = make_shop(tmp_path / "shop", [])
    orders = (repo.path / "services/orders/orders_app.py").read_text()
    repo.branch(
        "agent/note", {"services/orders/orders_app.py": orders + "\n# a note\n", "e2e/NOTES.md": "x\n"}
    )
    repo.branch("agent/docs", {"README.md": "docs\n"})
    done = run_cli("config", "check", "--repo", str(repo.path), "--diff", "main..agent/note")
    assert done.returncode == 0, done.stderr
    assert ".loopgate.yml at main (" in done.stdout
    assert "2 changed files" in done.stdout
    assert "  would fork orders: services/orders/orders_app.py matches services/orders/**\n" in done.stdout
    assert "  baseline only: gateway, inventory, payments, pricing\n" in done.stdout
    assert "head's suites would also run" in done.stdout  # e2e/** changed

    docs = run_cli("config", "check", "--repo", str(repo.path), "--diff", "main..agent/docs")
    assert docs.returncode == 0, docs.stderr
    assert "no service affected" in docs.stdout and "would fork" not in docs.stdout


def test_an_invalid_config_exits_2_naming_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "version: 1\nservices:\n  web:\n    paths: [web]\n    local: {run: 'x {port}', after: [db]}\n"
    )
    done = run_cli("config", "check", "--config", str(bad), "--repo", str(tmp_path))
    assert done.returncode == 2
    assert f"loopgate: {bad}:5 services.web.local.after[0]: no service 'db'" in done.stderr
    assert done.stdout == ""


def test_a_glob_that_matches_nothing_at_head_is_an_error_and_a_bad_diff_is_refused(tmp_path: Path) -> None:
    config = "version: 1\nservices:\n  web:\n    paths: ['web/**']\n    local: {run: 'x {port}', cwd: site}\n"
    repo = GitRepo.init(tmp_path / "repo", {".loopgate.yml": config, "site/index.html": "v1\n"})
    done = run_cli("config", "check", "--repo", str(repo.path))
    assert done.returncode == 2
    assert "services.web.paths: no file at the base commit matches 'web/**'" in done.stderr
    bad = run_cli("config", "check", "--repo", str(repo.path), "--diff", "main")
    assert bad.returncode == 2 and "--diff takes BASE..HEAD" in bad.stderr


def test_it_says_where_each_program_is_found_and_when_confinement_would_hide_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "bin").mkdir(parents=True)
    tool = home / "bin" / "teamtool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    config = tmp_path / "c.yml"
    config.write_text(
        "version: 1\nservices:\n"
        "  a: {paths: [a], local: {run: 'teamtool --port {port}'}}\n"
        "  b: {paths: [b], local: {run: 'PYTHONOPTIMIZE=1 python -m b {port}'}}\n"
        "  c: {paths: [c], local: {run: 'nosuchtool {port}'}}\n"
    )
    path = f"{home / 'bin'}:{os.environ['PATH']}"
    done = run_cli(
        "config",
        "check",
        "--config",
        str(config),
        "--repo",
        str(tmp_path),
        env={"HOME": str(home), "PATH": path},
    )
    assert done.returncode == 0, done.stderr
    assert f"toolchain: teamtool → {tool}, under {home}, which confinement hides" in done.stdout
    assert f"toolchain: python → {shutil.which('python')}\n" in done.stdout
    assert "toolchain: nosuchtool is not on PATH" in done.stdout
    off = run_cli(
        "config",
        "check",
        "--config",
        str(config),
        env={"HOME": str(home), "PATH": path, "LOOPGATE_CONFINE": "off"},
    )
    assert f"toolchain: teamtool → {tool}\n" in off.stdout


def test_a_folder_inside_another_repository_is_not_checked_against_its_tree() -> None:
    polyglot = ROOT / "examples" / "polyglot"
    done = run_cli("config", "check", "--repo", str(polyglot))
    assert done.returncode == 0, done.stderr
    assert "baseline start order: greeter, names at once; then front (after names)" in done.stdout
    assert (
        f"not checked against any commit's files ({polyglot} is not the root of its repository" in done.stdout
    )
