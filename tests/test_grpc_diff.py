"""gRPC answers compared like JSON ones (issue #14 item 3): real protobuf grpcio services behind the real
Envoy, each candidate under its own routing key beside two controls running the base code.

The probes go out as the local runtime sends them (`grpcprobe.call`, to the service's listener with the
side's baggage); their answers are decoded with the base protos and judged by `bot.verify.grpc`. The
same traffic, read back from Envoy's access log, is compared by gRPC status at the listener.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from bot.evidence import DiffResult, Evidence, GitRef
from bot.evidence.verdict import decide
from bot.runtimes.local import grpcprobe
from bot.runtimes.local.accesslog import read_access_log
from bot.runtimes.local.envoy import DataPlane
from bot.runtimes.local.xds import DataPlaneSpec, Upstream
from bot.verify.grpc.probes import Answer, Call, GrpcCheck, probe_service
from bot.verify.grpc.schema import Schema, compile_schema
from bot.verify.listener import listener_findings
from tests.grpc_shop import PROTO, PROTO_PATH, serve

pytestmark = pytest.mark.timeout(180)  # a hang fails in 3 min; a busy 2-core CI host is no hang

PRIMARY, SECONDARY = "primary1", "second1"
CANDIDATES = {
    # key: (mode, proto)
    "cbase1": ("base", PROTO),
    "cvalue": ("value", PROTO),
    "crenum": ("base", PROTO.replace("Money amount = 2;", "Money amount = 7;")),
    "crenumcents": ("base", PROTO.replace("int64 cents = 1;", "int64 cents = 3;")),
    "cnotfound": ("not-found", PROTO),
    "cinternal": ("internal", PROTO),
    "cgarbage": ("garbage", PROTO),
    "chuge1": ("huge", PROTO),
    "cgood1": ("base", PROTO.replace("string quote_id = 4;", "string quote_id = 4;\n  string note = 5;")),
}
GET = "/shop.pricing.v1.Pricing/GetQuote"
LIST = "/shop.pricing.v1.Pricing/ListQuotes"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _protos(root: Path, text: str) -> Path:
    (root / PROTO_PATH).parent.mkdir(parents=True, exist_ok=True)
    (root / PROTO_PATH).write_text(text)
    return root


class Shop:
    def __init__(self, tmp: Path) -> None:
        self.base = _protos(tmp / "base", PROTO)
        self.servers: dict[str, tuple[grpc.Server, int]] = {}
        for key in ("baseline", PRIMARY, SECONDARY):
            self.servers[key] = serve(self.base, "base")
        for key, (mode, proto) in CANDIDATES.items():
            self.servers[key] = serve(_protos(tmp / key, proto), mode)
        self.listener = _free_port()

    def spec(self) -> DataPlaneSpec:
        forks = {key: {"pricing": Upstream("127.0.0.1", port)} for key, (_, port) in self.servers.items()}
        baseline = forks.pop("baseline")
        return DataPlaneSpec(
            listeners={"pricing": self.listener}, baseline=baseline, forks=forks, http2=frozenset({"pricing"})
        )

    def close(self) -> None:
        for server, _ in self.servers.values():
            server.stop(grace=None)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    made = Shop(tmp_path_factory.mktemp("shop"))
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def plane(shop: Shop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPlane]:
    dp = DataPlane(tmp_path_factory.mktemp("envoy"))
    try:
        dp.start(shop.spec())
        yield dp
    finally:
        dp.stop()


@pytest.fixture(scope="module")
def schema(shop: Shop) -> Schema:
    return compile_schema(shop.base, [PROTO_PATH], ["."])


def probe(shop: Shop, schema: Schema, candidate: str) -> GrpcCheck:
    keys = {"primary": PRIMARY, "secondary": SECONDARY, "candidate": candidate}

    def send(call: Call, side: str) -> Answer:
        baggage = {"baggage": f"userid=7,loopgate-sandbox={keys[side]}"}
        answer = grpcprobe.call(f"127.0.0.1:{shop.listener}", call.method.path, call.body, baggage, 10)
        return Answer(answer.code, answer.message, answer.body)

    return probe_service(schema, "pricing", send, controls=True, budget=50)


def findings(check: GrpcCheck) -> list[tuple[str, str, str, str | None, str | None, bool]]:
    return [
        (r.request, f.kind, f.pointer, f.baseline, f.sandbox, f.breaking)
        for r in check.diff
        for f in r.findings
    ]


def test_only_safe_unary_methods_are_probed(schema: Schema) -> None:
    assert [m.path for m in schema.methods] == [GET, LIST]  # Reserve has side effects


def test_controls_with_noisy_values_and_the_same_code_give_no_finding(
    plane: DataPlane, shop: Shop, schema: Schema
) -> None:
    check = probe(shop, schema, "cbase1")
    assert findings(check) == [], check
    requests = [r.request for r in check.diff]
    # The empty messages, then GetQuote with each sku the catalogue answered (values seen in answers).
    assert f'gRPC {GET} {{"sku": "mug"}} (probed from descriptors)' in requests
    assert f"gRPC {LIST} {{}} (probed from descriptors)" in requests
    [listed] = [r for r in check.diff if LIST in r.request]
    assert {"/items/*/quote_id", "/items/*/priced_at"} <= set(listed.noise)
    # Nothing with side effects reached any side.
    records, _ = read_access_log(plane.access_log)
    assert records and not any(r.path.endswith("/Reserve") for r in records)


def test_a_changed_value_names_the_method_the_field_and_both_values(shop: Shop, schema: Schema) -> None:
    found = findings(probe(shop, schema, "cvalue"))
    mug = f'gRPC {GET} {{"sku": "mug"}} (probed from descriptors)'
    assert (mug, "value_changed", "/amount/cents", '"1200"', '"1250"', True) in found
    assert any(r.startswith(f"gRPC {LIST}") and p == "/items/0/amount/cents" for r, _, p, *_ in found)
    assert not any("quote_id" in p or "priced_at" in p for _, _, p, *_ in found)


def test_a_renumbered_field_is_missing_at_its_place_and_unknown_at_its_new_number(
    shop: Shop, schema: Schema
) -> None:
    found = findings(probe(shop, schema, "crenum"))
    mug = f'gRPC {GET} {{"sku": "mug"}} (probed from descriptors)'
    kinds = {(r, k, p, b) for r, k, p, _, _, b in found}
    assert (mug, "field_removed", "/amount", True) in kinds
    [unknown] = [f for f in found if f[0] == mug and f[1] == "unknown_field"]
    assert unknown[2] == "/#7" and not unknown[5]
    assert unknown[4] is not None and unknown[4].startswith("field 7 (bytes ")


def test_a_renumbered_scalar_reads_as_zero_with_its_value_under_the_new_number(
    shop: Shop, schema: Schema
) -> None:
    found = findings(probe(shop, schema, "crenumcents"))
    mug = f'gRPC {GET} {{"sku": "mug"}} (probed from descriptors)'
    assert (mug, "value_changed", "/amount/cents", '"1200"', '"0"', True) in found, found
    assert (mug, "unknown_field", "/amount/#3", None, UNKNOWN_CENTS, False) in found, found


UNKNOWN_CENTS = "field 3 (varint 1200), not in the base protos: renumbered, or new"


def test_a_new_optional_field_is_reported_and_breaks_nothing(shop: Shop, schema: Schema) -> None:
    found = findings(probe(shop, schema, "cgood1"))
    assert found and all(kind == "unknown_field" and not breaking for _, kind, _, _, _, breaking in found)
    shown = 'field 5 (bytes 16: "handle with care"), not in the base protos: renumbered, or new'
    assert any(p == "/#5" and s == shown for _, _, p, _, s, _ in found), found


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [("cnotfound", "NOT_FOUND: no price for mug"), ("cinternal", "INTERNAL: pricing")],
)
def test_a_status_change_is_a_breaking_finding_by_name(
    shop: Shop, schema: Schema, candidate: str, expected: str
) -> None:
    found = findings(probe(shop, schema, candidate))
    mug = f'gRPC {GET} {{"sku": "mug"}} (probed from descriptors)'
    [(_, kind, pointer, before, after, breaking)] = [f for f in found if f[0] == mug]
    assert (kind, pointer, before, breaking) == ("status_changed", "", "OK", True)
    assert after is not None and after.startswith(expected) and len(after) < 200
    # The empty request's INVALID_ARGUMENT is every side's: no finding.
    assert not any(r.startswith(f"gRPC {GET} {{}}") for r, *_ in found)
    evidence = Evidence(
        run_id="r",
        repo="/r",
        base=GitRef(ref="main"),
        head=GitRef(ref="x"),
        diff=probe(shop, schema, candidate).diff,
    )
    verdict, reasons = decide(evidence)
    assert verdict.value == "fail" and f"status_changed OK → {expected}" in reasons[0], reasons


def test_garbage_and_huge_answers_are_one_line_causes(shop: Shop, schema: Schema) -> None:
    garbage = findings(probe(shop, schema, "cgarbage"))
    mug = f'gRPC {GET} {{"sku": "mug"}} (probed from descriptors)'
    [(_, kind, _, before, after, breaking)] = [f for f in garbage if f[0] == mug]
    assert (kind, before, breaking) == ("undecodable", "a shop.pricing.v1.Quote", True)
    assert (
        after is not None and after.startswith("not a shop.pricing.v1.Quote (11 bytes)") and "\n" not in after
    )
    huge = findings(probe(shop, schema, "chuge1"))
    [listed] = [f for f in huge if f[0].startswith(f"gRPC {LIST}")]
    assert listed[1:4] == ("status_changed", "", "OK") and listed[5]
    assert listed[4] == "RESOURCE_EXHAUSTED: the answer is over 4 MiB, gRPC's default receive limit"


def _calls(shop: Shop, key: str, skus: list[str]) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{shop.listener}") as channel:
        stub = channel.unary_unary(GET)
        for sku in skus:
            body = b"\x0a" + bytes([len(sku)]) + sku.encode()
            with contextlib.suppress(grpc.RpcError):
                stub(body, metadata=[("baggage", f"loopgate-sandbox={key}")], timeout=10)


def test_statuses_at_the_listener_are_compared_by_grpc_name(plane: DataPlane, shop: Shop) -> None:
    assert plane.await_access_log()  # the probes of the other tests are all logged before the offset
    offset = plane.access_log.stat().st_size if plane.access_log.exists() else 0
    for key in (PRIMARY, SECONDARY, "cnotfound", "cinternal", "cbase1"):
        _calls(shop, key, ["mug", "towel"])
    assert plane.await_access_log()
    records, _ = read_access_log(plane.access_log, offset=offset)

    def at_listener(candidate: str) -> list[DiffResult]:
        return listener_findings(
            records, (records, records), (candidate, PRIMARY, SECONDARY), ["pricing"], ["pricing"]
        )

    assert at_listener("cbase1") == []
    [result] = at_listener("cnotfound")
    assert result.request == f"gRPC {GET}, the suites' exchanges"
    assert [(f.kind, f.baseline, f.sandbox, f.breaking) for f in result.findings] == [
        ("status_added", "OK (2)", "NOT_FOUND (2)", True),
        ("status_missing", "OK (2)", "NOT_FOUND (2)", True),
    ]
    [result] = at_listener("cinternal")
    assert [(f.kind, f.sandbox, f.breaking) for f in result.findings] == [
        ("server_errors", "INTERNAL (2)", True),
        ("status_missing", "INTERNAL (2)", True),
    ]


def test_without_controls_the_baseline_is_compared_by_shape_and_status(shop: Shop, schema: Schema) -> None:
    """No noise can be learned from one baseline: values are not compared, so fresh ids never show."""

    def probe_baseline(candidate: str) -> GrpcCheck:
        def send(call: Call, side: str) -> Answer:
            baggage = {} if side == "baseline" else {"baggage": f"loopgate-sandbox={candidate}"}
            answer = grpcprobe.call(f"127.0.0.1:{shop.listener}", call.method.path, call.body, baggage, 10)
            return Answer(answer.code, answer.message, answer.body)

        return probe_service(schema, "pricing", send, controls=False, budget=50)

    assert findings(probe_baseline("cbase1")) == []
    assert findings(probe_baseline("cvalue")) == []
    renumbered = probe_baseline("crenum")
    assert {r.against for r in renumbered.diff} == {"baseline"}
    mug = f'gRPC {GET} {{"sku": "mug"}} (probed from descriptors)'
    assert (mug, "field_removed", "/amount", True) in {
        (r, k, p, b) for r, k, p, _, _, b in findings(renumbered)
    }
    [status] = [f for f in findings(probe_baseline("cnotfound")) if f[0] == mug]
    assert status[1:4] == ("status_changed", "", "OK")
