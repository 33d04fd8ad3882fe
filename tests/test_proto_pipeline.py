"""The proto contract check in the pipeline (issue #14 item 3): a forked gRPC service's `.proto` files,
base commit against the merge, judged by the wire rules; breaking findings fail the verdict.

The end-to-end cases run a real grpcio service (health on) behind the real Envoy, forked by the local
runtime, with a suite that calls it tagged through its listener; the others read git trees only.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.config import RuntimeSettings, parse_config
from bot.evidence import Evidence
from bot.pipeline import Pipeline, VerifyRequest
from bot.pipeline.protos import MAX_TREE_FILES, check_forked_protos
from bot.runtimes.git import Git
from bot.runtimes.local import LocalRuntime
from tests.gitrepo import GitRepo

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[1]

CONFIG = """\
version: 1
services:
  pricing:
    paths: ["pricing/**", "proto/**"]
    protocol: grpc
    grpc:
      protos: ["proto/**/*.proto"]
      import_paths: [proto]
    local: {run: "python server.py serving-after-0 {port}", cwd: pricing}
verify:
  suites:
    - {name: quote, run: "python suite.py"}
  diff: {control: false}
"""
PROTO = """\
syntax = "proto3";
package shop.pricing.v1;

import "shop/pricing/v1/money.proto";

message QuoteRequest { string sku = 1; }
message Quote {
  string sku = 1;
  shop.pricing.v1.Money amount = 2;
}
service Pricing { rpc GetQuote(QuoteRequest) returns (Quote); }
"""
MONEY = 'syntax = "proto3";\npackage shop.pricing.v1;\nmessage Money { int64 cents = 1; }\n'
SUITE = """\
import os

import grpc

target = os.environ["LOOPGATE_PRICING_URL"].removeprefix("http://")
with grpc.insecure_channel(target) as channel:
    check = channel.unary_unary("/grpc.health.v1.Health/Check")
    answer = check(b"", metadata=[("baggage", os.environ["LOOPGATE_BAGGAGE"])], timeout=10)
assert answer == b"\\x08\\x01", answer
"""
PROTO_PATH = "proto/shop/pricing/v1/pricing.proto"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> GitRepo:
    files = {
        ".loopgate.yml": CONFIG,
        PROTO_PATH: PROTO,
        "proto/shop/pricing/v1/money.proto": MONEY,
        "pricing/server.py": (ROOT / "tests" / "grpc_fixture.py").read_text(),
        "suite.py": SUITE,
    }
    made = GitRepo.init(tmp_path_factory.mktemp("grpcrepo") / "repo", files)
    made.branch("agent/renumber", {PROTO_PATH: PROTO.replace("amount = 2", "amount = 3")})
    made.branch(
        "agent/currency", {PROTO_PATH: PROTO.replace("amount = 2;", "amount = 2;\n  string currency = 3;")}
    )
    made.branch("agent/bad-syntax", {PROTO_PATH: PROTO.replace("message Quote {", "message Quote {{")})
    return made


def _findings(evidence: Evidence) -> list[tuple[str, str, bool]]:
    return [
        (f.kind, f.pointer, f.breaking)
        for r in evidence.diff
        for f in r.findings
        if r.request.startswith("proto")
    ]


def test_a_renumbered_field_fails_the_run_with_the_field_named(repo: GitRepo, state_dir: Path) -> None:
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir))
    evidence = Pipeline(runtime).verify(
        VerifyRequest(repo=repo.path, base_ref="main", head_ref="agent/renumber")
    )
    assert evidence.verdict is not None and evidence.verdict.value == "fail", evidence.reasons
    assert ("proto_field_number_changed", "/shop.pricing.v1.Quote/amount", True) in _findings(evidence)
    assert any("proto_field_number_changed" in reason for reason in evidence.reasons)
    [result] = [r for r in evidence.diff if r.request.startswith("proto")]
    assert result.service == "pricing" and result.request == f"proto {PROTO_PATH}"
    # The suite's tagged gRPC call reached the fork through Envoy: gRPC coverage is counted.
    [pricing] = evidence.services
    assert pricing.forked and pricing.tagged_requests >= 1, evidence.reasons


def test_a_new_optional_field_is_reported_and_passes(repo: GitRepo, state_dir: Path) -> None:
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir))
    evidence = Pipeline(runtime).verify(
        VerifyRequest(repo=repo.path, base_ref="main", head_ref="agent/currency")
    )
    assert evidence.verdict is not None and evidence.verdict.value == "pass", evidence.reasons
    findings = _findings(evidence)
    assert findings and not any(breaking for _, _, breaking in findings), findings


def test_a_head_that_does_not_compile_is_breaking(repo: GitRepo) -> None:
    git = Git(repo.path)
    base, head = git.resolve("main"), git.resolve("agent/bad-syntax")
    checked = check_forked_protos(git, parse_config(CONFIG), ["pricing"], base, head)
    kinds = [(f.kind, f.breaking) for r in checked.diff for f in r.findings]
    assert ("proto_compile_error", True) in kinds, checked


def test_services_without_protos_or_not_forked_are_not_checked(repo: GitRepo) -> None:
    git = Git(repo.path)
    base, head = git.resolve("main"), git.resolve("agent/renumber")
    assert check_forked_protos(git, parse_config(CONFIG), [], base, head).diff == []
    http_only = parse_config(
        CONFIG.replace("protocol: grpc", "protocol: http2")
        .replace('    grpc:\n      protos: ["proto/**/*.proto"]\n      import_paths: [proto]\n', "")
        .replace('{port}", cwd', '{port}", health: {tcp: true}, cwd')
    )
    assert check_forked_protos(git, http_only, ["pricing"], base, head).diff == []


def test_a_head_tree_flooded_with_protos_is_refused_as_breaking(tmp_path: Path) -> None:
    flooded = GitRepo.init(
        tmp_path / "flood",
        {".loopgate.yml": CONFIG, PROTO_PATH: PROTO, "proto/shop/pricing/v1/money.proto": MONEY},
    )
    many = {f"proto/junk/f{i}.proto": 'syntax = "proto3";\n' for i in range(MAX_TREE_FILES + 1)}
    flooded.branch("agent/flood", many)
    git = Git(flooded.path)
    checked = check_forked_protos(
        git, parse_config(CONFIG), ["pricing"], git.resolve("main"), git.resolve("agent/flood")
    )
    assert [(f.kind, f.breaking) for r in checked.diff for f in r.findings] == [("proto_refused", True)]
    assert any("more than" in note for note in checked.notes)


def test_a_symlink_out_of_the_repository_is_never_followed(tmp_path: Path) -> None:
    linked = GitRepo.init(
        tmp_path / "link",
        {".loopgate.yml": CONFIG, PROTO_PATH: PROTO, "proto/shop/pricing/v1/money.proto": MONEY},
    )
    linked.git("checkout", "-q", "-b", "agent/link")
    os.remove(linked.path / "proto/shop/pricing/v1/money.proto")
    os.symlink("/etc/passwd", linked.path / "proto/shop/pricing/v1/money.proto")
    linked.commit("money is a link")
    linked.git("checkout", "-q", "main")
    git = Git(linked.path)
    checked = check_forked_protos(
        git, parse_config(CONFIG), ["pricing"], git.resolve("main"), git.resolve("agent/link")
    )
    findings = [(f.kind, f.breaking, f.sandbox or "") for r in checked.diff for f in r.findings]
    assert findings and all(breaking for _, breaking, _ in findings), findings
    assert not any("root:" in text for _, _, text in findings)
