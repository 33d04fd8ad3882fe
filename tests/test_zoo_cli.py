"""`loopgate zoo`: mocks-only CI vs loopgate over a manifest of example changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import SHOP, run_cli


def small_manifest(tmp_path: Path, entries: str) -> Path:
    for patch in (SHOP / "changes").glob("*.patch"):
        shutil.copy(patch, tmp_path / patch.name)
    manifest = tmp_path / "zoo.yml"
    manifest.write_text(entries)
    return manifest


GOOD_AND_BAD = """\
changes:
  - name: refactor-orders
    patch: refactor-orders.patch
    kind: good
    service: orders
    expected: pass
    suite_only: pass
    expect_finding: e2e (the team's suite) passed
    description: behaviour-preserving refactor
  - name: contract-break
    patch: contract-break.patch
    kind: defect
    service: inventory
    expected: fail
    suite_only: fail
    expect_finding: test_checkout_in_stock_then_read_order
    description: inventory renames a field orders reads
"""


def test_zoo_compares_mocks_only_ci_with_loopgate(tmp_path: Path, state_dir: Path) -> None:
    manifest = small_manifest(tmp_path, GOOD_AND_BAD)
    out, md = tmp_path / "zoo.json", tmp_path / "zoo.md"
    done = run_cli("zoo", "--manifest", str(manifest), "--json", str(out), "--markdown", str(md), timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert {k: result[k] for k in ("defects_total", "defects_caught", "good_total", "good_passed")} == {
        "defects_total": 1,
        "defects_caught": 1,
        "good_total": 1,
        "good_passed": 1,
    }
    assert result["mocks_only_caught"] == 0  # the defect's own mocked unit tests pass
    rows = {row["name"]: row for row in result["rows"]}
    assert rows["contract-break"]["mocks_only"] == "passed" and rows["contract-break"]["verdict"] == "fail"
    assert "| contract-break | defect | fail | passed | fail | fail |" in md.read_text()
    assert list((state_dir / "envs").glob("*/sandboxes/*")) == []


def test_patch_that_does_not_apply_is_an_error_row(tmp_path: Path) -> None:
    manifest = small_manifest(tmp_path, GOOD_AND_BAD.split("  - name: contract-break")[0])
    (tmp_path / "refactor-orders.patch").write_text("--- a/nope.py\n+++ b/nope.py\n@@ -1 +1 @@\n-x\n+y\n")
    out = tmp_path / "zoo.json"
    done = run_cli("zoo", "--manifest", str(manifest), "--json", str(out), timeout=300)
    assert done.returncode == 1
    (row,) = json.loads(out.read_text())["rows"]
    assert row["verdict"] == "error" and row["finding"].startswith(
        "patch refactor-orders.patch does not apply"
    )


def test_bad_manifest_exits_2_with_its_cause(tmp_path: Path) -> None:
    manifest = small_manifest(tmp_path, GOOD_AND_BAD.replace("    kind: defect\n", ""))
    done = run_cli("zoo", "--manifest", str(manifest))
    assert done.returncode == 2
    assert done.stderr.strip() == "loopgate: zoo.yml changes.1.kind: Field required"
    missing = small_manifest(tmp_path, GOOD_AND_BAD.replace("contract-break.patch", "gone.patch"))
    done = run_cli("zoo", "--manifest", str(missing))
    assert done.returncode == 2 and "contract-break: patch gone.patch not found" in done.stderr


def test_propagation_break_is_inconclusive_and_names_the_service(tmp_path: Path) -> None:
    entries = """\
changes:
  - name: propagation-break
    patch: propagation-break.patch
    kind: defect
    service: inventory,gateway
    expected: inconclusive
    suite_only: pass
    expect_finding: gateway drops baggage
    description: gateway keeps traceparent but stops forwarding baggage
"""
    manifest = small_manifest(tmp_path, entries)
    out = tmp_path / "zoo.json"
    done = run_cli("zoo", "--manifest", str(manifest), "--json", str(out), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["verdict"] == "inconclusive" and row["finding_found"]
    assert row["finding"] == "inventory: the sandbox's requests never reached the fork"
