"""The agent's inner loop: `loopgate env` and `loopgate sandbox` through the real CLI."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx

from bot.config import RuntimeSettings
from bot.runtimes.local import LocalRuntime
from bot.runtimes.protocol import Baseline
from tests.conftest import processes_under, run_cli
from tests.gitrepo import GitRepo


def test_env_up_finds_the_running_baseline_and_status_lists_it(
    shop_repo: GitRepo, shop_baseline: Baseline
) -> None:
    up = run_cli("env", "up", "--repo", str(shop_repo.path), "--base", "main")
    assert up.returncode == 0, up.stderr
    assert f"baseline {shop_baseline.env_id} already running" in up.stdout
    assert f"LOOPGATE_GATEWAY_URL={shop_baseline.entry_urls['gateway']}" in up.stdout
    status = run_cli("env", "status")
    assert re.search(rf"{shop_baseline.env_id} healthy kept \(env up\)", status.stdout), status.stdout


def test_sandbox_create_call_list_delete(
    shop_repo: GitRepo, shop_baseline: Baseline, state_dir: Path
) -> None:
    started = time.monotonic()
    created = run_cli("sandbox", "create", "--repo", str(shop_repo.path), "--head", "agent/refactor-orders")
    elapsed = time.monotonic() - started
    assert created.returncode == 0, created.stdout + created.stderr
    print(f"sandbox create took {elapsed:.2f}s")
    key = re.search(r"^routing key: ([a-z0-9]+)$", created.stdout, re.M)
    assert key is not None, created.stdout
    routing_key = key.group(1)
    gateway = re.search(r"^LOOPGATE_GATEWAY_URL=(\S+)$", created.stdout, re.M)
    assert gateway is not None and gateway.group(1) == shop_baseline.entry_urls["gateway"]
    assert f"LOOPGATE_BAGGAGE=loopgate-sandbox={routing_key}" in created.stdout

    # The agent calls the system itself, tagged: the fork serves orders.
    body = {"sku": "sku-notebook", "qty": 1, "card": "4242-4242-4242-4242"}
    answer = httpx.post(
        f"{gateway.group(1)}/api/checkout",
        json=body,
        headers={"baggage": f"loopgate-sandbox={routing_key}"},
        timeout=10,
    )
    assert answer.status_code == 201, answer.text
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir))
    sandbox = runtime.load_sandbox(routing_key)
    assert sandbox is not None
    assert any(r.service == "orders" and r.target == routing_key for r in runtime.observed_requests(sandbox))
    # A sandbox made by `create` outlives the command and is not garbage (gc may find an earlier
    # test's leftovers in the shared state dir: those are that test's to answer for).
    collected = run_cli("gc").stdout
    assert routing_key not in collected and shop_baseline.env_id not in collected, collected
    assert runtime.load_sandbox(routing_key) is not None

    listed = run_cli("sandbox", "list")
    assert re.search(
        rf"^{routing_key} env={shop_baseline.env_id} .* kept forks: orders@\d+$", listed.stdout, re.M
    )

    deleted = run_cli("sandbox", "delete", routing_key)
    assert deleted.returncode == 0 and f"deleted {routing_key}" in deleted.stdout
    assert run_cli("sandbox", "list").stdout.strip() == "no sandboxes"
    assert processes_under(state_dir / "envs" / shop_baseline.env_id / "sandboxes") == []
    assert len(shop_repo.worktrees()) == 2


def test_sandbox_delete_unknown_key(shop_baseline: Baseline) -> None:
    done = run_cli("sandbox", "delete", "nosuchkey1")
    assert done.returncode == 2
    assert done.stderr.strip() == "loopgate: no sandbox 'nosuchkey1' (see `loopgate sandbox list`)"


TINY = """\
version: 1
services:
  web:
    paths: ["web/**"]
    local: {run: "python -m http.server {port} --bind 127.0.0.1", cwd: web, health: /}
"""


def test_env_up_and_down_on_a_fresh_repository(tmp_path: Path, state_dir: Path) -> None:
    repo = GitRepo.init(tmp_path / "tiny", {".loopgate.yml": TINY, "web/index.html": "hello\n"})
    up = run_cli("env", "up", "--repo", str(repo.path))
    assert up.returncode == 0, up.stderr
    url = re.search(r"LOOPGATE_WEB_URL=(\S+)", up.stdout)
    env_id = re.search(r"^baseline (\S+) started", up.stdout, re.M)
    assert url is not None and env_id is not None
    assert httpx.get(url.group(1), timeout=5).text == "hello\n"
    env_dir = state_dir / "envs" / env_id.group(1)
    assert processes_under(env_dir) != []
    down = run_cli("env", "down", "--repo", str(repo.path))
    assert down.returncode == 0 and f"stopped {env_id.group(1)}" in down.stdout
    assert processes_under(env_dir) == []
    assert not env_dir.exists()
    assert len(repo.worktrees()) == 1
