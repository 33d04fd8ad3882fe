"""Control beside the candidate (DESIGN "Control and candidate"): the base code on copies of the same
data, the suites run on every side, requests at a forked service compared control-vs-candidate by value,
with the noise learned from two controls. Real shop processes; pure tests of the value comparison last.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.config import RuntimeSettings
from bot.config.schema import Diff
from bot.pipeline import make_plan
from bot.runtimes.local import LocalRuntime
from bot.runtimes.local.postgres import database_name
from bot.runtimes.local.processes import ProcessRef
from bot.runtimes.protocol import Source
from bot.verify.compare import Response
from bot.verify.diff import Pair, Probe, control_pairs, run_control_diff
from bot.verify.noise import MAX_LEAVES, leaves, noise_pointers, value_findings
from tests.conftest import make_shop, processes_under, run_cli
from tests.gitrepo import GitRepo

STOCK_LINE = "        item.stock -= body.qty  # no await between check and update: atomic on the event loop\n"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, state_dir: Path) -> Iterator[GitRepo]:
    """The shop with its two good zoo changes, a value change (stock never decreases: every status and
    shape kept) and a harmless payments change (Postgres state), its baseline kept up for the module."""
    repo = make_shop(tmp_path_factory.mktemp("control") / "shop", ["refactor-orders", "additive-field"])
    inventory = (repo.path / "services/inventory/inventory_app.py").read_text()
    assert STOCK_LINE in inventory
    repo.branch(
        "agent/stock-kept", {"services/inventory/inventory_app.py": inventory.replace(STOCK_LINE, "")}
    )
    payments = (repo.path / "services/payments/payments_app.py").read_text()
    repo.branch("agent/payments-note", {"services/payments/payments_app.py": payments + "\n# a note\n"})
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir), persistent=True)
    plan = make_plan(repo.path, "main", "main")
    baseline = runtime.up_baseline(Source(repo.path, plan.base_sha), plan.config)
    yield repo
    runtime.down(baseline.env_id)


def verify(repo: GitRepo, head: str, tmp_path: Path) -> tuple[int, dict[str, Any], str]:
    out = tmp_path / f"{head.replace('/', '-')}.json"
    done = run_cli("verify", "--repo", str(repo.path), "--base", "main", "--head", head, "--json", str(out))
    evidence = json.loads(out.read_text()) if out.exists() else {}
    return done.returncode, evidence, done.stdout + done.stderr


def control_results(evidence: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in evidence["diff"] if d["against"] == "control"]


def test_a_changed_value_fails_with_the_pointer_and_both_values(shop: GitRepo, tmp_path: Path) -> None:
    code, evidence, output = verify(shop, "agent/stock-kept", tmp_path)
    assert code == 1, output
    assert evidence["verdict"] == "fail"
    assert [s["status"] for s in evidence["suites"]] == ["passed"]  # the suite never sees it
    assert len(evidence["control_keys"]) == 2
    item = next(d for d in control_results(evidence) if d["request"] == "GET /items/sku-tea-towel")
    [finding] = [f for f in item["findings"] if f["breaking"]]
    assert (finding["kind"], finding["pointer"]) == ("value_changed", "/available")
    control, candidate = int(finding["baseline"]), int(finding["sandbox"])
    assert candidate > control  # the control's stock went down with the suite's checkout; not here
    assert "/available" in output


@pytest.mark.parametrize("change", ["refactor-orders", "additive-field"])
def test_good_changes_pass_with_no_value_findings(shop: GitRepo, tmp_path: Path, change: str) -> None:
    code, evidence, output = verify(shop, f"agent/{change}", tmp_path)
    assert code == 0, output
    assert evidence["verdict"] == "pass"
    compared = control_results(evidence)
    assert compared, evidence["diff"]
    findings = [f for d in compared for f in d["findings"]]
    assert not [f for f in findings if f["breaking"] or f["kind"] == "value_changed"], findings
    if change == "additive-field":
        assert {f["kind"] for f in findings} == {"field_added"}
    else:
        # An order the suite made: compared (not skipped), each side read for its own id; its id and
        # charge id differ between the two controls, so they are noise and never findings.
        order = next(
            d for d in compared if d["request"].startswith("GET /orders/ord_") and "controls:" in d["request"]
        )
        assert {"/id", "/charge_id"} <= set(order["noise"])
        assert order["findings"] == []


def test_teardown_leaves_no_control_process_copy_route_or_database(
    shop: GitRepo, tmp_path: Path, state_dir: Path
) -> None:
    before = set(processes_under(state_dir))
    code, evidence, output = verify(shop, "agent/payments-note", tmp_path)
    assert code == 0, output
    keys = evidence["control_keys"]
    assert len(keys) == 2 and evidence["routing_key"] not in keys
    assert set(processes_under(state_dir)) <= before
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir))
    assert [s.routing_key for s in runtime.sandboxes()] == []
    envs = list((state_dir / "envs").iterdir())
    assert not [p for env in envs for p in (env / "sandboxes").glob("*")]
    routes = "".join(
        p.read_text() for env in envs for p in (env / "envoy").glob("*") if p.suffix in (".yaml", ".json")
    )
    assert not [key for key in [*keys, evidence["routing_key"]] if key in routes]
    with runtime._postgres() as postgres:
        assert not [key for key in keys if postgres.exists(database_name(key, "payments"))]


def test_gc_finds_controls_whose_owner_is_gone(shop: GitRepo, state_dir: Path) -> None:
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir))
    plan = make_plan(shop.path, "main", "agent/stock-kept")
    baseline = runtime.up_baseline(Source(shop.path, plan.base_sha), plan.config)
    assert baseline.reused
    sandbox = runtime.new_sandbox(baseline, plan.config, Source(shop.path, plan.merge_sha))
    controls = [runtime.new_control(sandbox, Source(shop.path, plan.base_sha)) for _ in range(2)]
    keys = [c.routing_key for c in controls]
    record = runtime.registry.load_sandbox(baseline.env_id, sandbox.routing_key)
    assert record is not None and record.controls == keys
    spec = plan.config.services["orders"]
    forked = [runtime.fork(box, "orders", spec) for box in (sandbox, *controls)]
    assert [f.status for f in forked] == ["ready"] * 3
    snapshot = (
        runtime.registry.sandbox_dir(baseline.env_id, sandbox.routing_key) / "snapshots" / "orders.sqlite"
    )
    assert snapshot.is_file()  # one backup, copied three times
    gone = ProcessRef(pid=2**22 + 7, create_time=1.0)
    for key in [sandbox.routing_key, *keys]:
        each = runtime.registry.load_sandbox(baseline.env_id, key)
        assert each is not None and each.control_of == (
            None if key == sandbox.routing_key else sandbox.routing_key
        )
        each.owner = each.starter = gone
        runtime.registry.save_sandbox(each)
    runtime.gc()
    for key in [sandbox.routing_key, *keys]:
        assert not runtime.registry.sandbox_dir(baseline.env_id, key).exists()
    assert not [p for p in processes_under(state_dir) if any(k in p for k in [sandbox.routing_key, *keys])]
    assert not [f for f in forked if f.url and _answers(f.url)]


def _answers(url: str) -> bool:
    try:
        httpx.get(url + "/healthz", timeout=1)
    except httpx.HTTPError:
        return False
    return True


# --- the value comparison, pure ------------------------------------------------------------------


def answer(value: Any, status: int = 200) -> Response:
    return Response(status, {"content-type": "application/json"}, json.dumps(value).encode())


def diff(primary: Any, secondary: Any, candidate: Any) -> list[tuple[str, str, str | None, str | None]]:
    probe = Probe("svc", "GET", "/x", recorded=True)
    sides = {"primary": answer(primary), "secondary": answer(secondary), "candidate": answer(candidate)}
    [result] = run_control_diff(Diff(), [Pair(probe, (probe, probe))], lambda _, side: sides[side])
    assert result.against == "control"
    return [(f.kind, f.pointer, f.baseline, f.sandbox) for f in result.findings]


def test_a_value_is_a_finding_unless_the_controls_disagree_on_it() -> None:
    one = {"id": "a1", "at": "2026-01-01T00:00:00Z", "stock": 9, "tags": ["x"]}
    two = {**one, "id": "b2", "at": "2026-01-01T00:00:01Z"}
    cand = {**one, "id": "c3", "at": "2026-01-02T00:00:00Z", "stock": 10}
    assert diff(one, two, cand) == [("value_changed", "/stock", "9", "10")]
    assert diff(one, two, {**cand, "stock": 9, "extra": True})[0][0] == "field_added"
    assert diff(one, one, {**one, "tags": ["x", "y"]}) == [("value_changed", "/tags", "1 items", "2 items")]
    assert diff(one, one, {**one, "tags": ["z"]}) == [("value_changed", "/tags/0", '"x"', '"z"')]


def test_noise_covers_everything_below_it_and_a_whole_disagreeing_answer() -> None:
    assert noise_pointers(answer({"a": {"b": 1, "c": 2}}), answer({"a": {"b": 2, "c": 3}})) == [
        "/a/b",
        "/a/c",
    ]
    assert noise_pointers(answer({"a": [1]}), answer({"a": {"x": 1}})) == ["/a"]
    assert noise_pointers(answer({}), answer({}, 500)) == [""]
    assert diff({"a": 1}, {"a": 1}, {"a": 1}) == []
    probe = Probe("svc", "GET", "/x")
    sides = {"primary": answer({"a": 1}), "secondary": answer({}, 503), "candidate": answer({"a": 2})}
    [result] = run_control_diff(Diff(), [Pair(probe, (probe, probe))], lambda _, side: sides[side])
    assert result.findings == [] and result.noise == [""]


def test_hostile_json_deep_huge_nan_like_and_unicode() -> None:
    deep: Any = "leaf"
    for _ in range(5000):  # far past any recursion limit: flattened iteratively, cut at MAX_DEPTH
        deep = {"k": deep}
    assert leaves(deep).values  # no RecursionError
    huge = list(range(MAX_LEAVES * 2))
    found = value_findings(answer(huge), answer([*huge[:-1], -1]), [])
    assert found[-1].kind == "truncated" and not found[-1].breaking
    assert value_findings(answer(huge), answer(huge), []) == [next(f for f in found if f.kind == "truncated")]
    nan_like = {"v": "NaN", "w": "Infinity", "x": "-0", "y": "1e309"}
    assert diff(nan_like, nan_like, nan_like) == []
    assert diff(nan_like, nan_like, {**nan_like, "v": "nan"}) == [("value_changed", "/v", '"NaN"', '"nan"')]
    nan = Response(200, {"content-type": "application/json"}, b'{"n": NaN, "i": 1, "f": 1.0}')
    assert value_findings(nan, nan, []) == []  # NaN equals NaN here; 1 and 1.0 are one number
    assert math.isnan(json.loads(b'{"n": NaN}')["n"])
    keys = {"ключ": 1, "a/b": 2, "m~n": 3, "": 4, "🙂": 5}
    found = value_findings(answer(keys), answer({k: v + 1 for k, v in keys.items()}), ["/a~1b"])
    assert {f.pointer for f in found} == {"/ключ", "/m~0n", "/", "/🙂"}
    assert value_findings(answer(keys), Response(200, {"content-type": "text/plain"}, b"x"), []) == []


def test_noise_in_a_long_list_is_learned_and_reported_as_a_pattern() -> None:
    """What learning it costs is measured by bench/hostile_inputs.py, not here."""
    primary = {"orders": [{"id": f"a{i}", "qty": i % 3} for i in range(6_000)]}
    secondary = {"orders": [{"id": f"b{i}", "qty": i % 3} for i in range(6_000)]}
    candidate = {"orders": [{"id": f"c{i}", "qty": i % 3} for i in range(6_000)]}
    candidate["orders"][7]["qty"] = 99
    probe = Probe("svc", "GET", "/orders")
    sides = {"primary": answer(primary), "secondary": answer(secondary), "candidate": answer(candidate)}
    [result] = run_control_diff(Diff(), [Pair(probe, (probe, probe))], lambda _, side: sides[side])
    assert result.noise == ["/orders/*/id"]
    assert [(f.kind, f.pointer, f.baseline, f.sandbox) for f in result.findings] == [
        ("value_changed", "/orders/7/qty", "1", "99")
    ]


def test_requests_pair_by_path_then_by_place_in_the_run() -> None:
    class Seen:
        def __init__(self, key: str, path: str, service: str = "orders", method: str = "GET") -> None:
            self.service, self.routing_key, self.method, self.path = service, key, method, path

    candidate = [
        Seen("c", "/orders/ord_c1"),
        Seen("c", "/items/x"),
        Seen("c", "/orders/ord_c2"),
        Seen("c", "/o", "x"),
    ]
    primary = [
        Seen("p", "/items/x"),
        Seen("p", "/orders/ord_p1"),
        Seen("p", "/orders/ord_p2"),
        Seen("c", "/z"),
    ]
    secondary = [Seen("s", "/orders/ord_s1"), Seen("s", "/orders/ord_s2", method="POST")]
    pairs = control_pairs(Diff(), candidate, (primary, secondary), ("c", "p", "s"), ["orders"])  # type: ignore[arg-type]
    got = [(p.candidate.path, p.controls[0].path, p.controls[1].path) for p in pairs]
    assert got == [
        ("/orders/ord_c1", "/orders/ord_p1", "/orders/ord_s1"),
        ("/items/x", "/items/x", "/items/x"),
        ("/orders/ord_c2", "/orders/ord_p2", "/orders/ord_c2"),  # no such read on that control: sent as is
    ]
    assert pairs[0].label == "GET /orders/ord_c1 (controls: /orders/ord_p1, /orders/ord_s1)"


def test_value_findings_past_a_lost_tag_do_not_count() -> None:
    from bot.evidence import DiffResult, Evidence, Finding, GitRef, Propagation
    from bot.pipeline.sides import set_aside_values_past_a_lost_tag

    def result(service: str, against: str = "control") -> DiffResult:
        value = Finding(kind="value_changed", pointer="/available", baseline="7", sandbox="9", breaking=True)
        removed = Finding(kind="field_removed", pointer="/name", baseline="string", breaking=True)
        return DiffResult(request="GET /x", service=service, findings=[value, removed], against=against)  # type: ignore[arg-type]

    evidence = Evidence(run_id="r", repo="/r", base=GitRef(ref="main"), head=GitRef(ref="agent/x"))
    evidence.propagation = [Propagation(service="gateway", drops_baggage_to=["inventory"])]
    evidence.diff = [result("gateway"), result("orders"), result("gateway", "baseline")]
    set_aside_values_past_a_lost_tag(evidence)
    assert [[f.breaking for f in r.findings] for r in evidence.diff] == [
        [False, True],
        [True, True],
        [True, True],
    ]
    assert evidence.notes == [
        "1 value difference(s) at gateway not counted: its fork drops the sandbox's tag, so it read the"
        " baseline's data where the controls read their own copies"
    ]
