"""`loopgate verify` end to end on the example shop: real git, real processes, real Envoy, real suites."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from bot.config import RuntimeSettings
from bot.runtimes.local import LocalRuntime
from bot.runtimes.local.envoy import DataPlane
from bot.runtimes.local.registry import env_id_for
from bot.runtimes.protocol import Baseline
from tests.conftest import SHOP, TINY_CONFIG, processes_under, run_cli
from tests.gitrepo import GitRepo


def verify(repo: GitRepo, head: str, tmp_path: Path, *extra: str) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    out = tmp_path / "evidence.json"
    done = run_cli(
        "verify", "--repo", str(repo.path), "--base", "main", "--head", head, "--json", str(out), *extra
    )
    evidence = json.loads(out.read_text()) if out.exists() else {}
    return done.returncode, evidence, done.stdout + done.stderr


def assert_sandboxes_gone(state_dir: Path, baseline: Baseline, repo: GitRepo) -> None:
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir))
    assert runtime.registry.sandboxes(baseline.env_id) == []
    assert len(repo.worktrees()) == 2, repo.worktrees()  # the repo itself and the baseline's worktree
    spec = DataPlane(runtime.registry.env_dir(baseline.env_id) / "envoy").current_spec()
    assert spec is not None and dict(spec.forks) == {}


def assert_verdict_before_teardown(output: str, verdict: str) -> None:
    """The verdict is printed (and written) before the sandbox is torn down; the CLI waits for the
    teardown, says so, and its outcome is the last line."""
    lines = [line.strip() for line in output.strip().splitlines()]
    said = lines.index(f"verdict: {verdict}")
    assert lines[said + 1] == "tearing the sandbox down before exiting …", lines[said:]
    assert lines[-1].startswith("✓ teardown  ok"), lines[said:]


def test_good_refactor_passes(
    shop_repo: GitRepo, shop_baseline: Baseline, state_dir: Path, tmp_path: Path
) -> None:
    md, html = tmp_path / "report.md", tmp_path / "report.html"
    code, evidence, output = verify(
        shop_repo, "agent/refactor-orders", tmp_path, "--markdown", str(md), "--html", str(html)
    )
    assert code == 0, output
    assert_verdict_before_teardown(output, "pass")
    assert evidence["verdict"] == "pass"
    orders = next(s for s in evidence["services"] if s["name"] == "orders")
    assert orders["forked"] and orders["status"] == "ready" and orders["tagged_requests"] > 0
    assert [s["name"] for s in evidence["services"] if s["forked"]] == ["orders"]
    assert {s["name"]: s["status"] for s in evidence["suites"]} == {"e2e": "passed"}
    stages = {s["name"]: s for s in evidence["stages"]}
    assert list(stages) == ["plan", "baseline", "build", "fork", "route", "verify", "decide", "teardown"]
    assert stages["baseline"]["detail"] == "reused a running baseline"
    assert "PASS" in md.read_text() and "<html" in html.read_text().lower()
    assert_sandboxes_gone(state_dir, shop_baseline, shop_repo)


def test_contract_break_fails_with_the_suite_as_reason(
    shop_repo: GitRepo, shop_baseline: Baseline, state_dir: Path, tmp_path: Path
) -> None:
    code, evidence, output = verify(shop_repo, "agent/contract-break", tmp_path)
    assert code == 1, output
    assert evidence["verdict"] == "fail"
    assert any("suite e2e failed" in reason for reason in evidence["reasons"])
    suite = evidence["suites"][0]
    assert suite["status"] == "failed" and suite["counts"]["failed"] >= 1
    assert {f["file"] for f in suite["failures"]} == {"e2e/test_checkout.py"}
    assert "upstream_bad_response" in suite["failures"][0]["message"]
    # The response diff names the service that changed, on its own listener, not only at the entry.
    findings = {
        (d["service"], f["kind"], f["pointer"])
        for d in evidence["diff"]
        for f in d["findings"]
        if f["breaking"]
    }
    assert ("inventory", "field_removed", "/available") in findings
    assert "inventory: field_removed at /available (GET /items/sku-tea-towel)" in evidence["reasons"]
    assert_sandboxes_gone(state_dir, shop_baseline, shop_repo)


def test_docs_only_change_passes_without_a_sandbox(
    shop_repo: GitRepo, shop_baseline: Baseline, tmp_path: Path
) -> None:
    code, evidence, _ = verify(shop_repo, "agent/docs-only", tmp_path)
    assert code == 0
    assert evidence["reasons"] == ["no service is affected by the change"]
    assert evidence["changed_files"] == ["README.md"]
    assert not any(s["forked"] for s in evidence["services"])
    assert {s["name"]: s["outcome"] for s in evidence["stages"]}["fork"] == "skipped"


def config_with_suite(tmp_path: Path, command: str, timeout: float = 60) -> Path:
    """The shop's own config with its suites replaced by one smoke suite."""
    services = (SHOP / ".loopgate.yml").read_text().split("verify:")[0]
    path = tmp_path / "loopgate.yml"
    suite = f"verify:\n  suites:\n    - {{name: smoke, run: {json.dumps(command)}, timeout: {timeout}}}\n"
    path.write_text(services + suite)
    return path


def test_fork_the_suites_never_reach_is_inconclusive(
    shop_repo: GitRepo, shop_baseline: Baseline, tmp_path: Path
) -> None:
    smoke = (
        "python -c \"import os, httpx; r = httpx.get(os.environ['LOOPGATE_GATEWAY_URL'] + '/healthz',"
        " headers={'baggage': os.environ['LOOPGATE_BAGGAGE']}); assert r.status_code == 200\""
    )
    config = config_with_suite(tmp_path, smoke)
    code, evidence, output = verify(shop_repo, "agent/orders-note", tmp_path, "--config", str(config))
    assert code == 4, output
    assert evidence["verdict"] == "inconclusive"
    assert evidence["suites"][0]["status"] == "passed"
    assert "orders: the sandbox's requests never reached the fork" in evidence["reasons"]


def test_fork_that_never_becomes_healthy_fails_with_its_log(
    shop_repo: GitRepo, shop_baseline: Baseline, state_dir: Path, tmp_path: Path
) -> None:
    code, evidence, output = verify(shop_repo, "agent/orders-crash", tmp_path)
    assert code == 1, output
    orders = next(s for s in evidence["services"] if s["name"] == "orders")
    assert orders["status"] == "start_failed"
    assert "cannot read ORDERS_SECRET" in orders["log_tail"]
    assert evidence["reasons"][0] == "orders: the fork never became healthy"
    assert {s["name"]: s["outcome"] for s in evidence["stages"]}["verify"] == "skipped"
    assert_sandboxes_gone(state_dir, shop_baseline, shop_repo)


def test_hanging_suite_times_out_and_its_processes_are_killed(
    shop_repo: GitRepo, shop_baseline: Baseline, state_dir: Path, tmp_path: Path
) -> None:
    # The suite runs confined (its own /tmp), so it says it started on its output, not in a file of ours.
    config = config_with_suite(tmp_path, "sleep 300 & echo hang-started; wait", timeout=2)
    started = time.time()
    code, evidence, output = verify(shop_repo, "agent/orders-note", tmp_path, "--config", str(config))
    assert code == 1, output
    assert evidence["suites"][0]["status"] == "timed_out"
    assert "suite smoke timed out" in evidence["reasons"]
    assert "hang-started" in evidence["suites"][0]["log_tail"]
    # The kernel finishes tearing down a PID namespace asynchronously: allow it a moment, not more.
    # Only this run's: another test's leftover would be that test's failure, not this one's.
    sleeping = [
        p
        for p in psutil.process_iter(["cmdline", "create_time"])
        if p.info["cmdline"] == ["sleep", "300"] and p.info["create_time"] >= started - 1
    ]
    _, survivors = psutil.wait_procs(sleeping, timeout=5)
    assert not survivors
    assert processes_under(state_dir / "envs" / shop_baseline.env_id / "sandboxes") == []


@pytest.mark.parametrize(
    ("head", "expected"),
    [("agent/no-such-branch", "unknown ref 'agent/no-such-branch'")],
)
def test_unknown_ref_is_a_config_error(shop_repo: GitRepo, tmp_path: Path, head: str, expected: str) -> None:
    code, evidence, _ = verify(shop_repo, head, tmp_path)
    assert code == 2
    assert evidence["verdict"] == "error" and evidence["error_kind"] == "config"
    assert expected in evidence["reasons"][0]


def test_merge_conflict_asks_for_a_rebase(tmp_path: Path) -> None:
    repo = GitRepo.init(tmp_path / "tiny", {".loopgate.yml": TINY_CONFIG, "web/index.html": "v1\n"})
    repo.branch("agent/edit", {"web/index.html": "agent\n"})
    repo.write("web/index.html", "team\n")
    repo.commit("team edit")
    code, evidence, output = verify(repo, "agent/edit", tmp_path)
    assert code == 2, output
    assert "merge conflict" in evidence["reasons"][0] and "rebase needed" in evidence["reasons"][0]


def test_invalid_config_names_file_and_line(tmp_path: Path) -> None:
    repo = GitRepo.init(tmp_path / "tiny", {".loopgate.yml": TINY_CONFIG.replace('["web/**"]', "web/**")})
    repo.branch("agent/x", {"web/a.txt": "a\n"})
    code, evidence, output = verify(repo, "agent/x", tmp_path)
    assert code == 2
    assert evidence["reasons"] == [".loopgate.yml:4 services.web.paths: expected a list"]
    assert ".loopgate.yml:4 services.web.paths: expected a list" in output


def test_port_in_use_is_an_infrastructure_error_and_nothing_is_left(state_dir: Path, tmp_path: Path) -> None:
    import socket

    repo = GitRepo.init(tmp_path / "tiny", {".loopgate.yml": TINY_CONFIG, "web/index.html": "v1\n"})
    repo.branch("agent/x", {"web/index.html": "v2\n"})
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        out = tmp_path / "e.json"
        done = run_cli(
            "verify",
            "--repo",
            str(repo.path),
            "--head",
            "agent/x",
            "--json",
            str(out),
            env={"LOOPGATE_ENVOY_BASE_PORT": str(port)},
        )
    evidence = json.loads(out.read_text())
    assert done.returncode == 3, done.stdout + done.stderr
    assert evidence["error_kind"] == "infrastructure"
    assert evidence["reasons"] == [f"port {port} (Envoy) is already in use"]
    assert processes_under(tmp_path) == []
    assert len(repo.worktrees()) == 1


def test_demo_contract_break_fails_and_leaves_nothing(state_dir: Path, tmp_path: Path) -> None:
    """The README's second example, as a user runs it: its own throwaway repo and its own baseline."""
    out = tmp_path / "out.json"
    before = set(LocalRuntime(RuntimeSettings(state_dir=state_dir)).registry.env_ids())
    done = run_cli("demo", "--change", "contract-break", "--json", str(out))
    assert done.returncode == 1, done.stdout + done.stderr
    assert_verdict_before_teardown(done.stdout, "fail")
    evidence = json.loads(out.read_text())
    assert evidence["verdict"] == "fail"
    assert any("suite e2e failed" in r for r in evidence["reasons"])
    assert set(LocalRuntime(RuntimeSettings(state_dir=state_dir)).registry.env_ids()) == before
    assert not Path(evidence["repo"]).exists()  # the throwaway repository is gone too
    assert [p for p in processes_under(state_dir) if evidence["repo"] in p] == []


def test_demo_unknown_change_lists_the_choices() -> None:
    done = run_cli("demo", "--change", "nope")
    assert done.returncode == 2
    manifest = yaml.safe_load((SHOP / "changes" / "zoo.yml").read_text())
    changes = ", ".join(sorted(entry["name"] for entry in manifest["changes"]))  # not the base patches
    assert "contract-break, " in changes and "refactor-orders" in changes
    assert done.stderr.strip() == f"loopgate: unknown change 'nope'; choose one of: {changes}"


def test_keep_leaves_the_sandbox_up_and_says_how_to_delete_it(
    shop_repo: GitRepo, shop_baseline: Baseline, state_dir: Path, tmp_path: Path
) -> None:
    code, evidence, output = verify(shop_repo, "agent/refactor-orders", tmp_path, "--keep")
    assert code == 0, output
    key = evidence["routing_key"]
    assert f"delete it with: loopgate sandbox delete {key}" in output
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir))
    sandbox = runtime.load_sandbox(key)
    assert sandbox is not None
    answer = httpx.get(
        f"{shop_baseline.entry_urls['gateway']}/api/items/sku-notebook",
        headers={"baggage": f"loopgate-sandbox={key}"},
        timeout=10,
    )
    assert answer.status_code == 200
    assert run_cli("sandbox", "delete", key).returncode == 0
    assert_sandboxes_gone(state_dir, shop_baseline, shop_repo)


def test_state_missing_in_the_baseline_is_an_error_never_a_pass(tmp_path: Path, state_dir: Path) -> None:
    config = TINY_CONFIG.replace("cwd: web, health: /}", "cwd: web, health: /}\n    state: {sqlite: web.db}")
    repo = GitRepo.init(tmp_path / "tiny", {".loopgate.yml": config, "web/index.html": "v1\n"})
    repo.branch("agent/x", {"web/index.html": "v2\n"})
    code, evidence, output = verify(repo, "agent/x", tmp_path)
    assert code == 3, output
    assert evidence["verdict"] == "error" and evidence["error_kind"] == "infrastructure"
    assert evidence["reasons"][0].startswith("state database ")
    assert evidence["reasons"][0].endswith("web.db is missing in the baseline")
    env_dir = state_dir / "envs" / env_id_for(repo.path, repo.git("rev-parse", "main"))
    assert not env_dir.exists()  # its own baseline was stopped and removed
