"""Blame (DESIGN "Verdicts"): a test the base commit already fails is pre-existing, not the change's.

The shop's `main` here carries one more e2e test that the baseline gets wrong (items have no currency),
so it fails on the sandbox and on the baseline alike; real processes, real suites, run twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.config import RuntimeSettings
from bot.pipeline import make_plan
from bot.runtimes.local import LocalRuntime
from bot.runtimes.protocol import Source
from tests.conftest import SHOP, make_shop, run_cli
from tests.gitrepo import GitRepo

KNOWN_BUG = """\
import os

import httpx


def test_item_has_a_currency() -> None:
    baggage = os.environ.get("LOOPGATE_BAGGAGE")
    item = httpx.get(
        os.environ["LOOPGATE_GATEWAY_URL"] + "/api/items/sku-tea-towel",
        headers={"baggage": baggage} if baggage else {},
        timeout=4,
    )
    assert item.json().get("currency") == "GBP"
"""
KNOWN_ID = "e2e.test_known_bug::test_item_has_a_currency"
MUG = KNOWN_BUG.replace("sku-tea-towel", "sku-red-mug").replace(
    "test_item_has_a_currency", "test_mug_reads"
).replace('assert item.json().get("currency") == "GBP"', "assert item.status_code == 200, item.text")
MUG_ID = "e2e.test_mug::test_mug_reads"
GET_ITEM = "        item = request.app.state.catalogue.get(sku)\n"
FLAKY_GET_ITEM = """\
        request.app.state.reads = getattr(request.app.state, "reads", 0) + (sku == "sku-red-mug")
        if sku == "sku-red-mug" and request.app.state.reads % 2:
            return error(503, "warehouse_sync", "try again")
""" + GET_ITEM


@pytest.fixture(scope="module")
def red_base(tmp_path_factory: pytest.TempPathFactory, state_dir: Path) -> Iterator[GitRepo]:
    """The shop with a failing e2e test on `main`, a harmless change and a contract break off it, and
    its baseline kept up for both runs."""
    repo = make_shop(tmp_path_factory.mktemp("red") / "shop", [])
    repo.write("e2e/test_known_bug.py", KNOWN_BUG)
    repo.write("e2e/test_mug.py", MUG)
    repo.commit("a test the base already fails, and one it passes")
    orders = (repo.path / "services/orders/orders_app.py").read_text()
    repo.branch("agent/orders-note", {"services/orders/orders_app.py": orders + "\n# a note\n"})
    inventory = (repo.path / "services/inventory/inventory_app.py").read_text()
    assert GET_ITEM in inventory
    flaky = inventory.replace(GET_ITEM, FLAKY_GET_ITEM)
    repo.branch("agent/flaky-mug", {"services/inventory/inventory_app.py": flaky})
    repo.branch("agent/contract-break", patch=SHOP / "changes" / "contract-break.patch")
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir), persistent=True)
    plan = make_plan(repo.path, "main", "main")
    baseline = runtime.up_baseline(Source(repo.path, plan.base_sha), plan.config)
    yield repo
    runtime.down(baseline.env_id)


def verify(repo: GitRepo, head: str, tmp_path: Path) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    out, md = tmp_path / "evidence.json", tmp_path / "report.md"
    done = run_cli(
        "verify", "--repo", str(repo.path), "--base", "main", "--head", head,
        "--json", str(out), "--markdown", str(md),
    )  # fmt: skip
    evidence = json.loads(out.read_text()) if out.exists() else {}
    return done.returncode, evidence, done.stdout + done.stderr + md.read_text()


def test_a_failure_the_baseline_shows_too_is_pre_existing_and_passes(
    red_base: GitRepo, tmp_path: Path
) -> None:
    code, evidence, output = verify(red_base, "agent/orders-note", tmp_path)
    assert code == 0, output
    assert evidence["verdict"] == "pass"
    assert evidence["reasons"][0] == (
        "suite e2e: 1 failure also fails on the baseline (pre-existing), not counted"
    )
    suite = evidence["suites"][0]
    assert (suite["status"], suite["baseline_status"], suite["pre_existing"]) == ("failed", "failed", True)
    assert [(f["test"], f["pre_existing"]) for f in suite["failures"]] == [(KNOWN_ID, True)]
    assert "Pre-existing (also failing on the baseline, not counted):" in output  # the Markdown report
    assert "`e2e.test_known_bug::test_item_has_a_currency`" in output


def test_a_change_failing_more_than_the_baseline_fails_naming_its_own_failures(
    red_base: GitRepo, tmp_path: Path
) -> None:
    code, evidence, output = verify(red_base, "agent/contract-break", tmp_path)
    assert code == 1, output
    assert evidence["verdict"] == "fail"
    suite = evidence["suites"][0]
    assert (suite["status"], suite["baseline_status"], suite["pre_existing"]) == ("failed", "failed", False)
    blamed = {f["test"]: f["pre_existing"] for f in suite["failures"]}
    assert blamed[KNOWN_ID] is True
    own = [test for test, known in blamed.items() if not known]  # in the order the suite reported them
    assert own and all(test.startswith("e2e.test_checkout::") for test in own)
    reason = next(r for r in evidence["reasons"] if r.startswith("suite e2e failed: "))
    assert reason.startswith(f"suite e2e failed: {len(own)} failing test")
    assert own[0] in reason and KNOWN_ID not in reason and reason.endswith("(pre-existing)")


def test_an_intermittent_sandbox_only_failure_counts_with_its_failing_fraction(
    red_base: GitRepo, tmp_path: Path
) -> None:
    """Every other read of the mug fails on the fork: the suite fails on its first run (the baseline's
    passes), then passes, then fails again; the failure counts, with how often it showed."""
    code, evidence, output = verify(red_base, "agent/flaky-mug", tmp_path)
    assert code == 1, output
    suite = evidence["suites"][0]
    assert suite["runs"] == 3
    runs = {f["test"]: (f["failed_runs"], f["pre_existing"]) for f in suite["failures"]}
    assert runs[MUG_ID] == (2, False)
    assert runs[KNOWN_ID] == (3, True)  # pre-existing, and failing every time
    reason = next(r for r in evidence["reasons"] if r.startswith("suite e2e failed: "))
    assert reason.endswith(f"intermittent, still counted: failed {MUG_ID} in 2 of 3 runs"), reason
    assert "Run 3 times on the sandbox" in output  # the Markdown report
    assert "| 2 of 3 runs |" in output
