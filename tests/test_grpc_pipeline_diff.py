"""The gRPC diff in the pipeline (issue #14 item 3): a forked protobuf gRPC service behind the real Envoy,
with two controls, its safe methods probed from the base protos and its suite's calls compared by gRPC
status at its listener. The hostile-proto cases need no process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from bot.config import RuntimeSettings, parse_config
from bot.evidence import Evidence, GitRef, ServiceResult
from bot.pipeline import Pipeline, VerifyRequest
from bot.pipeline.grpcprobes import add_grpc_probes
from bot.runtimes.local import LocalRuntime
from bot.runtimes.protocol import GrpcAnswer, ProbeRequest, Runtime, Sandbox
from bot.verify.grpc.schema import NoSchema, compile_schema
from tests.gitrepo import GitRepo
from tests.grpc_shop import PROTO, PROTO_PATH

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[1]
GET = "/shop.pricing.v1.Pricing/GetQuote"

CONFIG = """\
version: 1
services:
  pricing:
    paths: ["pricing/**", "proto/**"]
    protocol: grpc
    grpc:
      protos: ["proto/**/*.proto"]
      import_paths: [proto]
    local: {run: "python server.py file {port}", cwd: pricing}
verify:
  suites:
    - {name: quote, run: "python suite.py"}
"""
SUITE = """\
import os

import grpc

target = os.environ["LOOPGATE_PRICING_URL"].removeprefix("http://")
with grpc.insecure_channel(target) as channel:
    quote = channel.unary_unary("/shop.pricing.v1.Pricing/GetQuote")
    for sku in (b"mug", b"towel"):
        try:
            baggage = [("baggage", os.environ["LOOPGATE_BAGGAGE"])]
            quote(b"\\x0a" + bytes([len(sku)]) + sku, metadata=baggage, timeout=10)
        except grpc.RpcError as exc:
            print("answered", exc.code())
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> GitRepo:
    files = {
        ".loopgate.yml": CONFIG,
        f"proto/{PROTO_PATH}": PROTO,
        "pricing/server.py": (ROOT / "tests" / "grpc_shop.py").read_text(),
        "pricing/mode.txt": "base\n",
        "suite.py": SUITE,
    }
    made = GitRepo.init(tmp_path_factory.mktemp("grpcdiff") / "repo", files)
    made.branch("agent/pricier", {"pricing/mode.txt": "value\n"})
    made.branch("agent/missing", {"pricing/mode.txt": "not-found\n"})
    made.branch(
        "agent/renumber", {f"proto/{PROTO_PATH}": PROTO.replace("Money amount = 2;", "Money amount = 7;")}
    )
    return made


def _verify(repo: GitRepo, head: str, state_dir: Path) -> Evidence:
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir))
    return Pipeline(runtime).verify(VerifyRequest(repo=repo.path, base_ref="main", head_ref=head))


def test_a_changed_value_fails_naming_the_method_the_field_and_both_values(
    repo: GitRepo, state_dir: Path
) -> None:
    evidence = _verify(repo, "agent/pricier", state_dir)
    assert evidence.verdict is not None and evidence.verdict.value == "fail", (evidence.notes, evidence.diff)
    found = [
        (r.request, r.against, f.kind, f.pointer, f.baseline, f.sandbox)
        for r in evidence.diff
        for f in r.findings
        if f.breaking
    ]
    mug = f'gRPC {GET} {{"sku": "mug"}} (probed from descriptors)'
    assert (mug, "control", "value_changed", "/amount/cents", '"1200"', '"1250"') in found, found
    assert not any("quote_id" in pointer or "priced_at" in pointer for *_, pointer, _, _ in found)
    assert any(
        reason.startswith(f"pricing: value_changed at /amount/cents ({mug})") for reason in evidence.reasons
    )


def test_a_status_change_fails_at_the_probe_and_at_the_listener(repo: GitRepo, state_dir: Path) -> None:
    evidence = _verify(repo, "agent/missing", state_dir)
    assert evidence.verdict is not None and evidence.verdict.value == "fail", evidence.reasons
    by_request = {r.request: r for r in evidence.diff}
    listener = by_request[f"gRPC {GET}, the suites' exchanges"]
    assert [(f.kind, f.baseline, f.sandbox) for f in listener.findings] == [
        ("status_added", "OK (2)", "NOT_FOUND (2)"),
        ("status_missing", "OK (2)", "NOT_FOUND (2)"),
    ]
    probed = by_request[f'gRPC {GET} {{"sku": "mug"}} (probed from descriptors)']
    [finding] = probed.findings
    assert (finding.kind, finding.baseline, finding.sandbox) == (
        "status_changed",
        "OK",
        "NOT_FOUND: no price for mug",
    )


def test_a_renumbered_field_fails_at_the_proto_check_and_in_the_answers(
    repo: GitRepo, state_dir: Path
) -> None:
    """The fork runs the edited proto: callers built from the base one find `amount` gone and a field 7
    they do not know, in every answer."""
    evidence = _verify(repo, "agent/renumber", state_dir)
    assert evidence.verdict is not None and evidence.verdict.value == "fail", evidence.reasons
    found = {(r.request, f.kind, f.pointer, f.breaking) for r in evidence.diff for f in r.findings}
    mug = f'gRPC {GET} {{"sku": "mug"}} (probed from descriptors)'
    assert (mug, "field_removed", "/amount", True) in found, found
    assert (mug, "unknown_field", "/#7", False) in found, found
    proto = f"proto proto/{PROTO_PATH}"
    assert (proto, "proto_field_number_changed", "/shop.pricing.v1.Quote/amount", True) in found, found


class _NoCalls:
    kind = "local"

    def probe_grpc(self, sandbox: Sandbox, request: ProbeRequest, *, tagged: bool) -> GrpcAnswer:
        raise AssertionError("nothing is sent when the base protos do not compile")


def test_base_protos_that_do_not_compile_are_a_one_line_note(tmp_path: Path) -> None:
    broken = GitRepo.init(
        tmp_path / "broken",
        {
            ".loopgate.yml": CONFIG,
            f"proto/{PROTO_PATH}": PROTO.replace("message Quote {", "message Quote {{"),
        },
    )
    evidence = Evidence(
        run_id="r",
        repo=str(broken.path),
        base=GitRef(ref="main"),
        head=GitRef(ref="main"),
        services=[ServiceResult(name="pricing", forked=True, reason="changed", status="ready")],
    )
    runtime = cast(Runtime, _NoCalls())
    sha = broken.git("rev-parse", "HEAD").strip()
    add_grpc_probes(evidence, parse_config(CONFIG), broken.path, sha, runtime, cast(Sandbox, object()), [])
    [note] = evidence.notes
    assert note.startswith(
        "pricing: gRPC methods not probed: the base protos: proto/shop/pricing/v1/pricing.proto:11:16: "
    )
    assert "\n" not in note and len(note) < 400 and evidence.diff == []


@pytest.mark.parametrize(
    ("files", "cause"),
    [
        ({PROTO_PATH: 'syntax = "proto3";\nimport "../../etc/passwd";\n'}, "escapes the repository"),
        ({PROTO_PATH: "message A {" * 40 + "}" * 40}, "nested over"),
        ({PROTO_PATH: "x" * (2 * 1024 * 1024)}, "bytes: refused"),
    ],
)
def test_hostile_protos_are_refused_with_a_cause(tmp_path: Path, files: dict[str, Any], cause: str) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    with pytest.raises(NoSchema, match=cause):
        compile_schema(tmp_path, [PROTO_PATH], ["."])


def test_a_request_is_built_for_required_fields_and_values_that_do_not_fit(tmp_path: Path) -> None:
    """proto2 `required` left unset is the server's to refuse; an int64's value is never forced into
    an int32."""
    (tmp_path / "a.proto").write_text(
        'syntax = "proto2";\npackage p;\nmessage R { required string sku = 1; optional int32 n = 2; }\n'
        "message A { required string x = 1; }\n"
        "service S { rpc G(R) returns (A) { option idempotency_level = NO_SIDE_EFFECTS; } }\n"
    )
    schema = compile_schema(tmp_path, ["a.proto"], ["."])
    [method] = schema.methods
    assert method.path == "/p.S/G"
    assert schema.encode(method, {}) == b""
    assert schema.encode(method, {"sku": "a", "n": 2**40}) == b"\n\x01a"
    assert schema.decode(method, b"") == {}
