"""`verify.seed` (DESIGN "Data"): a command run once against a new baseline, so forks copy real rows.

The shop here seeds one order of two tea towels through the gateway with the base code; its e2e suite
gets a test that reads that order through the orders fork (tagged), and the run compares the orders
list control-vs-candidate, seeded row included. A seed that fails is the baseline's failure: exit 3,
with the seed's own log, and nothing left running.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bot.config import RuntimeSettings
from bot.runtimes.local import LocalRuntime
from tests.conftest import make_shop, processes_under, run_cli
from tests.gitrepo import GitRepo

SEED = """\
import os

import httpx

answer = httpx.post(
    os.environ["LOOPGATE_GATEWAY_URL"] + "/api/checkout",
    json={"sku": "sku-tea-towel", "qty": 2, "card": "4242-4242-4242-4242"},
    timeout=10,
)
assert answer.status_code == 201, answer.text
print("seeded", answer.json()["id"])
"""

SEEDED_TEST = """\
import os

import httpx


def test_the_seeded_order_is_read_through_the_fork() -> None:
    baggage = os.environ.get("LOOPGATE_BAGGAGE")
    listed = httpx.get(
        os.environ["LOOPGATE_ORDERS_URL"] + "/orders",
        headers={"baggage": baggage} if baggage else {},
        timeout=4,
    )
    assert listed.status_code == 200, listed.text
    assert [o for o in listed.json()["orders"] if o["qty"] == 2], listed.text
"""


def seeded_shop(path: Path, seed: str) -> GitRepo:
    repo = make_shop(path, [])
    config = (repo.path / ".loopgate.yml").read_text()
    shop_seed = re.search(r"^  seed: .*$", config, flags=re.MULTILINE)
    assert shop_seed is not None, "the shop seeds its baseline"
    repo.write(".loopgate.yml", config.replace(shop_seed.group(0), f"  seed: {seed}"))
    repo.write("seed/seed.py", SEED)
    repo.write("e2e/test_seeded.py", SEEDED_TEST)
    repo.commit("a seed, and a test that reads what it wrote")
    orders = (repo.path / "services/orders/orders_app.py").read_text()
    repo.branch("agent/orders-note", {"services/orders/orders_app.py": orders + "\n# a note\n"})
    return repo


def verify(repo: GitRepo, tmp_path: Path) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    out = tmp_path / "evidence.json"
    done = run_cli(
        "verify",
        "--repo",
        str(repo.path),
        "--base",
        "main",
        "--head",
        "agent/orders-note",
        "--json",
        str(out),
    )
    evidence = json.loads(out.read_text()) if out.exists() else {}
    return done.returncode, evidence, done.stdout + done.stderr


def test_seeded_rows_are_visible_to_the_fork_and_compared(tmp_path: Path) -> None:
    repo = seeded_shop(tmp_path / "shop", '{run: "python seed/seed.py", timeout: 60}')
    code, evidence, output = verify(repo, tmp_path)
    assert code == 0, output
    assert evidence["verdict"] == "pass"
    [suite] = evidence["suites"]
    assert (suite["status"], suite["failures"]) == ("passed", []), output
    assert any(r.startswith("orders: fork received") for r in evidence["reasons"]), evidence["reasons"]
    listed = next(d for d in evidence["diff"] if d["request"] == "GET /orders" and d["against"] == "control")
    assert listed["findings"] == [], listed


def test_a_failing_seed_is_an_infrastructure_error_with_its_log(tmp_path: Path, state_dir: Path) -> None:
    repo = seeded_shop(tmp_path / "shop", """{run: "echo planting; echo no-soil-here >&2; exit 4"}""")
    code, evidence, output = verify(repo, tmp_path)
    assert code == 3, output
    assert (evidence["verdict"], evidence["error_kind"]) == ("error", "infrastructure")
    assert evidence["reasons"][0].endswith("the seed (verify.seed) exited with 4"), evidence["reasons"]
    [note] = [n for n in evidence["notes"] if n.startswith("seed log:")]
    assert "planting" in note and "no-soil-here" in note
    assert "no-soil-here" in output
    assert not [p for p in processes_under(state_dir) if str(repo.path.name) in p and "seed" in p]
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir))
    assert not [s for s in runtime.sandboxes()]


@pytest.mark.parametrize("seed", ["{}", '{run: ""}', '{run: "x", timeout: 0}', '{run: "x", wait: 1}'])
def test_a_malformed_seed_is_a_config_error(tmp_path: Path, seed: str) -> None:
    repo = seeded_shop(tmp_path / "shop", seed)
    code, _, output = verify(repo, tmp_path)
    assert code == 2, output
    assert "seed" in output
