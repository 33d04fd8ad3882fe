"""Base-vs-head `.proto` changes (bot/verify/proto/): real protoc (grpcio-tools) on real `.proto` files in
tmp checkouts, one test per rule family with its breaking / non-breaking classification, and the hostile
trees the head side may be (syntax errors, escaping imports, symlinks, oversized and nested files, cycles).

Classifications cite buf's breaking-rule categories (buf.build/docs/breaking/rules): WIRE is what breaks
callers on the binary wire and is what `breaking` means here; WIRE_JSON adds what breaks only the JSON
mapping, and counts as breaking with `wire_json=True`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.evidence import Finding
from bot.verify.proto import ProtoCheck, check_protos, limits

PROTO = "proto/shop/pricing/v1/pricing.proto"
HEADER = 'syntax = "proto3";\npackage shop.pricing.v1;\n'


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def run(
    tmp_path: Path,
    base: str | dict[str, str],
    head: str | dict[str, str],
    *,
    wire_json: bool = False,
    files: tuple[str, ...] = ("proto/**/*.proto",),
) -> ProtoCheck:
    """The check on two checkouts; a string is the body of pricing.proto after the proto3 header."""
    trees = []
    for side, content in (("base", base), ("head", head)):
        spec = {PROTO: HEADER + content} if isinstance(content, str) else content
        trees.append(write(tmp_path / side, spec))
    return check_protos(trees[0], trees[1], list(files), ["proto"], service="pricing", wire_json=wire_json)


def findings(check: ProtoCheck) -> dict[tuple[str, str], Finding]:
    out: dict[tuple[str, str], Finding] = {}
    for result in check.diff:
        for finding in result.findings:
            out.setdefault((finding.kind, finding.pointer), finding)
    return out


def one(check: ProtoCheck, kind: str, pointer: str) -> Finding:
    found = findings(check)
    assert (kind, pointer) in found, sorted(found)
    return found[(kind, pointer)]


QUOTE = (
    "message Quote {\n  string sku = 1;\n  int64 amount = 2;\n"
    "  oneof discount { int64 percent = 3; int64 fixed = 4; }\n}\n"
)


def test_renumbered_retyped_removed_and_reoneofed_fields_break_a_new_optional_field_does_not(
    tmp_path: Path,
) -> None:
    """The issue's defects in one change, and its good change beside them."""
    head = (
        "message Quote {\n  int64 amount = 5;\n"  # amount renumbered 2 → 5; sku (1) removed
        "  int32 percent = 3;\n"  # out of the oneof, and int64 → int32 (a wire-compatible varint)
        "  oneof discount { string fixed = 4; }\n"  # int64 → string: another wire type
        "  optional string note = 6;\n}\n"
    )
    check = run(tmp_path, QUOTE, head)
    assert [r.request for r in check.diff] == [f"proto {PROTO}"] and check.notes == []
    assert check.diff[0].service == "pricing"
    moved = one(check, "proto_field_number_changed", "/shop.pricing.v1.Quote/amount")
    assert (moved.baseline, moved.sandbox, moved.breaking) == ("field 2 int64", "field 5 int64", True)
    assert one(check, "proto_field_removed", "/shop.pricing.v1.Quote/sku").breaking
    retyped = one(check, "proto_field_type_changed", "/shop.pricing.v1.Quote/fixed")
    assert (retyped.baseline, retyped.sandbox, retyped.breaking) == ("field 4 int64", "field 4 string", True)
    oneof = one(check, "proto_oneof_changed", "/shop.pricing.v1.Quote/percent")
    assert (oneof.baseline, oneof.sandbox, oneof.breaking) == ("in oneof discount", "outside any oneof", True)
    added = one(check, "proto_field_added", "/shop.pricing.v1.Quote/note")
    assert (added.sandbox, added.breaking) == ("field 6 optional string", False)
    # Breaking findings come first.
    flags = [f.breaking for f in check.diff[0].findings]
    assert flags == sorted(flags, reverse=True)


def test_a_new_optional_field_alone_is_reported_and_not_breaking(tmp_path: Path) -> None:
    check = run(tmp_path, QUOTE, QUOTE.replace("}\n}\n", "}\n  optional string note = 5;\n}\n"))
    assert [(f.kind, f.breaking) for r in check.diff for f in r.findings] == [("proto_field_added", False)]


def test_identical_protos_with_well_known_imports_give_nothing(tmp_path: Path) -> None:
    body = 'import "google/protobuf/timestamp.proto";\nmessage Quote { google.protobuf.Timestamp at = 1; }\n'
    assert run(tmp_path, body, body) == ProtoCheck([], [])


def test_a_renumbered_field_breaks_even_when_the_old_number_is_reserved(tmp_path: Path) -> None:
    """Stricter than buf: WIRE sees FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED satisfied plus a new field,
    but every old caller's amount is dropped."""
    check = run(
        tmp_path, "message Quote { int64 amount = 2; }\n", "message Quote { reserved 2; int64 amount = 3; }\n"
    )
    assert one(check, "proto_field_number_changed", "/shop.pricing.v1.Quote/amount").breaking
    assert ("proto_field_added", "/shop.pricing.v1.Quote/amount") not in findings(check)


def test_a_field_name_reused_at_another_number_breaks(tmp_path: Path) -> None:
    """Two fields swapped numbers: same types, so the wire is 'compatible', and the values are swapped."""
    check = run(
        tmp_path,
        "message Quote { int64 net = 1; int64 gross = 2; }\n",
        "message Quote { int64 gross = 1; int64 net = 2; }\n",
    )
    net = one(check, "proto_field_number_changed", "/shop.pricing.v1.Quote/net")
    assert (net.baseline, net.sandbox, net.breaking) == ("field 1 int64", "field 2 int64", True)
    assert one(check, "proto_field_number_changed", "/shop.pricing.v1.Quote/gross").breaking


def test_a_field_removed_breaks_unless_its_number_is_reserved(tmp_path: Path) -> None:
    base = "message Quote { string sku = 1; int64 amount = 2; }\n"
    # FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED is WIRE: unreserved, the number can come back with another type.
    gone = run(tmp_path / "a", base, "message Quote { string sku = 1; }\n")
    assert one(gone, "proto_field_removed", "/shop.pricing.v1.Quote/amount").baseline == "field 2 int64"
    assert one(gone, "proto_field_removed", "/shop.pricing.v1.Quote/amount").breaking
    reserved = "message Quote { string sku = 1; reserved 2; }\n"
    assert not one(
        run(tmp_path / "b", base, reserved), "proto_field_removed", "/shop.pricing.v1.Quote/amount"
    ).breaking
    # FIELD_NO_DELETE_UNLESS_NAME_RESERVED is WIRE_JSON only: the name matters to JSON callers.
    strict = run(tmp_path / "c", base, reserved, wire_json=True)
    assert one(strict, "proto_field_removed", "/shop.pricing.v1.Quote/amount").breaking
    both = 'message Quote { string sku = 1; reserved 2; reserved "amount"; }\n'
    assert not one(
        run(tmp_path / "d", base, both, wire_json=True),
        "proto_field_removed",
        "/shop.pricing.v1.Quote/amount",
    ).breaking


@pytest.mark.parametrize(
    ("before", "after", "wire", "wire_json"),
    [
        # FIELD_WIRE_COMPATIBLE_TYPE (WIRE): int32, uint32, int64, uint64 and bool share the varint.
        ("int32", "int64", False, True),  # WIRE_JSON: 64-bit integers are JSON strings
        ("int32", "uint32", False, False),
        ("uint64", "bool", False, True),
        ("int32", "sint32", True, True),  # zigzag is another encoding
        ("sint32", "sint64", False, True),
        ("fixed32", "sfixed32", False, False),
        ("fixed64", "double", True, True),
        ("string", "bytes", False, True),  # string may become bytes; JSON has base64 for bytes
        ("bytes", "string", True, True),  # nothing proves the bytes are UTF-8
        ("float", "double", True, True),
    ],
)
def test_scalar_type_changes_follow_the_wire_compatibility_groups(
    tmp_path: Path, before: str, after: str, wire: bool, wire_json: bool
) -> None:
    base, head = f"message Quote {{ {before} v = 1; }}\n", f"message Quote {{ {after} v = 1; }}\n"
    assert (
        one(run(tmp_path / "w", base, head), "proto_field_type_changed", "/shop.pricing.v1.Quote/v").breaking
        is wire
    )
    strict = run(tmp_path / "j", base, head, wire_json=True)
    assert one(strict, "proto_field_type_changed", "/shop.pricing.v1.Quote/v").breaking is wire_json


def test_message_and_enum_field_types(tmp_path: Path) -> None:
    """FIELD_WIRE_COMPATIBLE_TYPE compares message types by name; an enum that moved keeps its short name
    and all its values, which buf accepts."""
    base = {
        PROTO: HEADER + 'import "shop/common/v1/common.proto";\n'
        "message Money { int64 units = 1; }\nmessage Cents { int64 units = 1; }\n"
        "enum Tier { TIER_UNSPECIFIED = 0; TIER_GOLD = 1; }\n"
        "message Quote { Money price = 1; Tier tier = 2; }\n",
        "proto/shop/common/v1/common.proto": 'syntax = "proto3";\npackage shop.common.v1;\n'
        "enum Tier { TIER_UNSPECIFIED = 0; TIER_GOLD = 1; TIER_SILVER = 2; }\n",
    }
    head = dict(base)
    head[PROTO] = base[PROTO].replace(
        "Money price = 1; Tier tier = 2;", "Cents price = 1; shop.common.v1.Tier tier = 2;"
    )
    check = run(tmp_path, base, head)
    price = one(check, "proto_field_type_changed", "/shop.pricing.v1.Quote/price")
    assert (price.baseline, price.sandbox, price.breaking) == (
        "field 1 shop.pricing.v1.Money",
        "field 1 shop.pricing.v1.Cents",
        True,
    )
    assert not one(check, "proto_field_type_changed", "/shop.pricing.v1.Quote/tier").breaking


def test_cardinality_changes(tmp_path: Path) -> None:
    """FIELD_WIRE_COMPATIBLE_CARDINALITY: singular and optional share a group; repeated and required do
    not; a proto2 field made required breaks every sender that leaves it out."""
    check = run(
        tmp_path,
        "message Quote { string tag = 1; int64 amount = 2; }\n",
        "message Quote { repeated string tag = 1; optional int64 amount = 2; }\n",
    )
    tag = one(check, "proto_cardinality_changed", "/shop.pricing.v1.Quote/tag")
    assert (tag.baseline, tag.sandbox, tag.breaking) == ("singular (implicit presence)", "repeated", True)
    amount = one(check, "proto_cardinality_changed", "/shop.pricing.v1.Quote/amount")
    assert (amount.sandbox, amount.breaking) == ("optional (explicit presence)", False)
    # `optional` is a synthetic oneof in the descriptor, not a oneof membership change.
    assert ("proto_oneof_changed", "/shop.pricing.v1.Quote/amount") not in findings(check)
    proto2 = 'syntax = "proto2";\npackage shop.pricing.v1;\n'
    required = run(
        tmp_path / "p2",
        {PROTO: proto2 + "message Quote { optional int64 amount = 1; }\n"},
        {
            PROTO: proto2
            + "message Quote { required int64 amount = 1; optional string sku = 2;"
            + " required string id = 3; }\n"
        },
    )
    made = one(required, "proto_cardinality_changed", "/shop.pricing.v1.Quote/amount")
    assert (made.baseline, made.sandbox, made.breaking) == ("optional (explicit presence)", "required", True)
    # MESSAGE_SAME_REQUIRED_FIELDS (WIRE): a new required field is breaking, a new optional one is not.
    assert one(required, "proto_field_added", "/shop.pricing.v1.Quote/id").breaking
    assert not one(required, "proto_field_added", "/shop.pricing.v1.Quote/sku").breaking


def test_oneof_membership_changes_break(tmp_path: Path) -> None:
    """FIELD_SAME_ONEOF is in WIRE: into an existing oneof, out of one, or across oneofs."""
    check = run(
        tmp_path,
        "message Quote {\n  int64 a = 1;\n  oneof x { int64 b = 2; int64 c = 3; }\n"
        "  oneof y { int64 d = 4; }\n}\n",
        "message Quote {\n  oneof x { int64 a = 1; int64 c = 3; }\n  int64 b = 2;\n"
        "  oneof y { int64 d = 4; }\n}\n",
    )
    into = one(check, "proto_oneof_changed", "/shop.pricing.v1.Quote/a")
    assert (into.baseline, into.sandbox, into.breaking) == ("outside any oneof", "in oneof x", True)
    assert one(check, "proto_oneof_changed", "/shop.pricing.v1.Quote/b").breaking
    assert ("proto_oneof_changed", "/shop.pricing.v1.Quote/c") not in findings(check)
    across = run(
        tmp_path / "across",
        "message Quote { oneof x { int64 a = 1; } oneof y { int64 b = 2; } }\n",
        "message Quote { oneof x { int64 b = 2; } oneof y { int64 a = 1; } }\n",
    )
    assert one(across, "proto_oneof_changed", "/shop.pricing.v1.Quote/a").sandbox == "in oneof y"


def test_enum_values(tmp_path: Path) -> None:
    base = "enum Status { STATUS_UNSPECIFIED = 0; STATUS_OK = 1; STATUS_DENIED = 2; STATUS_LATE = 3; }\n"
    head = "enum Status { STATUS_UNSPECIFIED = 0; STATUS_FINE = 1; STATUS_HELD = 4; reserved 3; }\n"
    check = run(tmp_path, base, head)
    # ENUM_VALUE_NO_DELETE_UNLESS_NUMBER_RESERVED (WIRE)
    denied = one(check, "proto_enum_value_removed", "/shop.pricing.v1.Status/STATUS_DENIED")
    assert (denied.baseline, denied.breaking) == ("STATUS_DENIED = 2", True)
    assert not one(check, "proto_enum_value_removed", "/shop.pricing.v1.Status/STATUS_LATE").breaking
    # ENUM_VALUE_SAME_NAME is WIRE_JSON: enums travel as numbers.
    renamed = one(check, "proto_enum_value_renamed", "/shop.pricing.v1.Status/STATUS_OK")
    assert (renamed.sandbox, renamed.breaking) == ("STATUS_FINE = 1", False)
    assert not one(check, "proto_enum_value_added", "/shop.pricing.v1.Status/STATUS_HELD").breaking
    strict = run(tmp_path / "j", base, head, wire_json=True)
    assert one(strict, "proto_enum_value_renamed", "/shop.pricing.v1.Status/STATUS_OK").breaking
    assert one(strict, "proto_enum_value_removed", "/shop.pricing.v1.Status/STATUS_LATE").breaking


def test_reserved_numbers_reused_or_given_up_break(tmp_path: Path) -> None:
    """RESERVED_MESSAGE_NO_DELETE / RESERVED_ENUM_NO_DELETE are in WIRE: old data may still carry a
    retired number."""
    check = run(
        tmp_path,
        "message Quote { string sku = 1; reserved 2, 5 to 10; }\n"
        "enum Status { STATUS_UNSPECIFIED = 0; reserved 7; }\n",
        "message Quote { string sku = 1; int32 legacy = 2; reserved 5 to 7; }\n"
        "enum Status { STATUS_UNSPECIFIED = 0; STATUS_RETRY = 7; }\n",
    )
    reused = one(check, "proto_reserved_reused", "/shop.pricing.v1.Quote/legacy")
    assert (reused.baseline, reused.sandbox, reused.breaking) == ("reserved 2", "field 2 int32", True)
    given_up = one(check, "proto_reserved_removed", "/shop.pricing.v1.Quote/reserved")
    assert (given_up.baseline, given_up.breaking) == ("reserved 8 to 10", True)
    assert one(check, "proto_reserved_reused", "/shop.pricing.v1.Status/STATUS_RETRY").breaking


def test_rpc_changes(tmp_path: Path) -> None:
    messages = (
        "message Req { string sku = 1; }\nmessage Resp { int64 amount = 1; }\n"
        "message Resp2 { int64 amount = 1; }\n"
    )
    base = messages + (
        "service Pricing {\n  rpc GetQuote(Req) returns (Resp);\n  rpc Watch(Req) returns (stream Resp);\n"
        "  rpc Cancel(Req) returns (Resp);\n"
        "  rpc Peek(Req) returns (Resp) { option idempotency_level = NO_SIDE_EFFECTS; }\n}\n"
        "service Audit { rpc Log(Req) returns (Resp); }\n"
    )
    head = messages + (
        "service Pricing {\n  rpc GetQuote(Req) returns (Resp2);\n"
        "  rpc Watch(stream Req) returns (stream Resp);\n"
        "  rpc Peek(Req) returns (Resp);\n  rpc Price(Req) returns (Resp);\n}\n"
    )
    check = run(tmp_path, base, head)
    # RPC_SAME_RESPONSE_TYPE, RPC_SAME_CLIENT_STREAMING and RPC_SAME_IDEMPOTENCY_LEVEL are in WIRE.
    retyped = one(check, "proto_rpc_type_changed", "/shop.pricing.v1.Pricing/GetQuote")
    assert (retyped.baseline, retyped.sandbox, retyped.breaking) == (
        "response shop.pricing.v1.Resp",
        "response shop.pricing.v1.Resp2",
        True,
    )
    streaming = one(check, "proto_rpc_streaming_changed", "/shop.pricing.v1.Pricing/Watch")
    assert (streaming.baseline, streaming.sandbox, streaming.breaking) == (
        "server streaming",
        "bidirectional streaming",
        True,
    )
    assert one(check, "proto_rpc_idempotency_changed", "/shop.pricing.v1.Pricing/Peek").breaking
    # Stricter than buf's WIRE (RPC_NO_DELETE / SERVICE_NO_DELETE are FILE/PACKAGE there): a running
    # service without the method answers UNIMPLEMENTED to every old caller.
    assert one(check, "proto_rpc_removed", "/shop.pricing.v1.Pricing/Cancel").breaking
    assert one(check, "proto_service_removed", "/shop.pricing.v1.Audit").breaking
    added = one(check, "proto_rpc_added", "/shop.pricing.v1.Pricing/Price")
    assert (added.sandbox, added.breaking) == ("unary shop.pricing.v1.Req → shop.pricing.v1.Resp", False)


def test_removed_messages_and_a_changed_package(tmp_path: Path) -> None:
    """MESSAGE_NO_DELETE and PACKAGE_NO_DELETE are not WIRE rules: a removed message is reported, not
    breaking. FILE_SAME_PACKAGE is: a file's package moves every type and RPC path."""
    check = run(
        tmp_path,
        "message Quote { int64 a = 1; }\nmessage Old { int64 a = 1; }\n",
        "message Quote { int64 a = 1; }\n",
    )
    assert not one(check, "proto_message_removed", "/shop.pricing.v1.Old").breaking
    moved = run(
        tmp_path / "pkg",
        "message Quote { int64 a = 1; }\nservice Pricing { rpc Get(Quote) returns (Quote); }\n",
        {
            PROTO: 'syntax = "proto3";\npackage shop.pricing.v2;\nmessage Quote { int64 a = 1; }\n'
            "service Pricing { rpc Get(Quote) returns (Quote); }\n"
        },
    )
    package = one(moved, "proto_package_changed", "")
    assert (package.baseline, package.sandbox, package.breaking) == (
        "shop.pricing.v1",
        "shop.pricing.v2",
        True,
    )
    assert one(moved, "proto_service_removed", "/shop.pricing.v1.Pricing").breaking
    assert not one(moved, "proto_package_removed", "").breaking


def test_findings_are_grouped_per_file_with_repository_paths(tmp_path: Path) -> None:
    other = "proto/shop/pricing/v1/extra.proto"
    base = {
        PROTO: HEADER + "message Quote { int64 a = 1; }\n",
        other: HEADER + "message Extra { int64 b = 1; }\n",
    }
    head = {
        PROTO: HEADER + "message Quote { int32 a = 1; }\n",
        other: HEADER + "message Extra { string b = 1; }\n",
    }
    check = run(tmp_path, base, head)
    assert [r.request for r in check.diff] == [f"proto {other}", f"proto {PROTO}"]


def test_prebuilt_descriptor_sets_are_compared(tmp_path: Path) -> None:
    """A `.binpb` named in the config is read as a FileDescriptorSet instead of compiled."""
    for side, number in (("base", 2), ("head", 3)):
        src = write(
            tmp_path / f"{side}-src", {"a.proto": HEADER + f"message Quote {{ int64 amount = {number}; }}\n"}
        )
        (tmp_path / side).mkdir()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{src}",
                f"--descriptor_set_out={tmp_path / side / 'api.binpb'}",
                "a.proto",
            ],
            check=True,
        )
    check = check_protos(tmp_path / "base", tmp_path / "head", ["api.binpb"], [], service="pricing")
    assert one(check, "proto_field_number_changed", "/shop.pricing.v1.Quote/amount").breaking
    assert check.diff[0].request == "proto a.proto"
    (tmp_path / "head" / "api.binpb").write_bytes(b"\xff\xff\xff not a descriptor set")
    garbage = check_protos(tmp_path / "base", tmp_path / "head", ["api.binpb"], [], service="pricing")
    refused = one(garbage, "proto_refused", "")
    assert refused.breaking and "not a FileDescriptorSet" in (refused.sandbox or "")


# Hostile and broken trees: a one-line cause, never a traceback.


def test_a_head_syntax_error_is_a_breaking_finding_with_file_and_line(tmp_path: Path) -> None:
    check = run(tmp_path, "message Quote { int64 a = 1; }\n", "message Quote {\n  int64 a = 1\n}\n")
    [result] = check.diff
    assert result.request == f"proto {PROTO}"
    [finding] = result.findings
    assert finding.kind == "proto_compile_error" and finding.breaking
    assert (finding.sandbox or "").startswith(f'{PROTO}:5:1: Expected ";"')
    assert check.notes == [f"head protos: {finding.sandbox}"]


def test_protos_broken_on_both_sides_are_notes_not_findings(tmp_path: Path) -> None:
    check = run(tmp_path, "message Quote {\n", "message Quote {\n")
    assert check.diff == [] and len(check.notes) == 2
    assert check.notes[0].startswith(f"base protos not compared: {PROTO}:")


def test_a_missing_import_names_the_importing_line(tmp_path: Path) -> None:
    check = run(
        tmp_path, "message Q { int64 a = 1; }\n", 'import "shop/nowhere.proto";\nmessage Q { int64 a = 1; }\n'
    )
    cause = one(check, "proto_compile_error", "").sandbox or ""
    assert cause.startswith(f'{PROTO}:3:1: Import "shop/nowhere.proto" was not found'), cause


@pytest.mark.parametrize("target", ["../../etc/passwd", "/etc/passwd", "shop/../../../etc/passwd"])
def test_an_import_escaping_the_repository_is_refused(tmp_path: Path, target: str) -> None:
    check = run(
        tmp_path, "message Q { int64 a = 1; }\n", f'import "{target}";\nmessage Q {{ int64 a = 1; }}\n'
    )
    refused = one(check, "proto_refused", "")
    assert refused.breaking
    assert refused.sandbox == f'{PROTO}:3: import "{target}" escapes the repository: refused'
    assert "\n" not in refused.sandbox


def test_an_import_in_a_comment_is_not_an_import(tmp_path: Path) -> None:
    body = '// import "../../etc/passwd";\n/* import "/etc/shadow"; */\nmessage Q { string s = 1; }\n'
    assert run(tmp_path, body, body) == ProtoCheck([], [])


def test_symlinks_out_of_the_checkout_are_refused(tmp_path: Path) -> None:
    outside = write(tmp_path / "outside", {"secret.proto": HEADER + "message Secret { string s = 1; }\n"})
    base = write(tmp_path / "base", {PROTO: HEADER + "message Q { int64 a = 1; }\n"})
    head = write(
        tmp_path / "head", {PROTO: HEADER + 'import "shop/secret.proto";\nmessage Q { int64 a = 1; }\n'}
    )
    os.symlink(outside / "secret.proto", head / "proto/shop/secret.proto")
    # Imported: the importing line is named.
    check = check_protos(base, head, [PROTO], ["proto"], service="pricing")
    cause = one(check, "proto_refused", "").sandbox
    assert cause == (
        f'{PROTO}:3: import "shop/secret.proto" leads out of the checkout (a symlink): refused'
    ), cause
    # Matched by a glob.
    check = check_protos(base, head, ["proto/**/*.proto"], ["proto"], service="pricing")
    cause = one(check, "proto_refused", "").sandbox or ""
    assert cause.startswith("proto/shop/secret.proto leads out of the checkout"), cause
    # The named file itself a symlink out.
    (head / PROTO).unlink()
    os.symlink(outside / "secret.proto", head / PROTO)
    check = check_protos(base, head, [PROTO], ["proto"], service="pricing")
    assert "leads out of the checkout" in (one(check, "proto_refused", "").sandbox or "")


def test_an_oversized_file_is_refused(tmp_path: Path) -> None:
    padding = "// " + "x" * 1000 + "\n"
    big = "message Q { int64 a = 1; }\n" + padding * (limits.MAX_FILE_BYTES // len(padding) + 1)
    check = run(tmp_path, "message Q { int64 a = 1; }\n", big)
    assert (
        one(check, "proto_refused", "").sandbox == f"{PROTO}: over {limits.MAX_FILE_BYTES:,} bytes: refused"
    )


def test_deep_nesting_is_refused_before_protoc_sees_it(tmp_path: Path) -> None:
    depth = limits.MAX_NESTING + 1
    nested = "".join(f"message M{i} {{ " for i in range(depth)) + "}" * depth + "\n"
    cause = one(run(tmp_path, "message Q { int64 a = 1; }\n", nested), "proto_refused", "").sandbox or ""
    assert cause == f"{PROTO}:3: nested over {limits.MAX_NESTING} levels deep: refused"


def test_an_import_cycle_is_one_line_from_protoc(tmp_path: Path) -> None:
    files = {
        "proto/a.proto": 'syntax = "proto3";\nimport "b.proto";\nmessage A { int64 a = 1; }\n',
        "proto/b.proto": 'syntax = "proto3";\nimport "a.proto";\nmessage B { int64 b = 1; }\n',
    }
    base = {"proto/a.proto": 'syntax = "proto3";\nmessage A { int64 a = 1; }\n'}
    check = run(tmp_path, base, files)
    cause = one(check, "proto_compile_error", "").sandbox or ""
    assert "recursively imports itself" in cause and "\n" not in cause, cause


def test_too_many_files_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_FILES", 3)
    many = {f"proto/m{i}.proto": f'syntax = "proto3";\nmessage M{i} {{ int64 a = 1; }}\n' for i in range(5)}
    check = run(tmp_path, {"proto/m0.proto": many["proto/m0.proto"]}, many)
    assert (
        one(check, "proto_refused", "").sandbox == "pattern 'proto/**/*.proto' matches over 3 files: refused"
    )


def test_a_file_outside_the_import_paths_or_a_climbing_pattern_is_refused(tmp_path: Path) -> None:
    body = {PROTO: HEADER + "message Q { int64 a = 1; }\n", "other/x.proto": 'syntax = "proto3";\n'}
    outside = run(tmp_path / "a", body, body, files=("other/x.proto",))
    assert outside.notes[0] == "base protos not compared: other/x.proto: not under any import path (proto)"
    climbing = run(tmp_path / "b", body, body, files=("../**/*.proto",))
    assert climbing.notes[1] == "head protos: pattern '../**/*.proto' escapes the repository: refused"


def test_the_package_imports_no_runtime_pipeline_or_github(tmp_path: Path) -> None:
    code = (
        "import sys, bot.verify.proto\n"
        "bad = [m for m in sys.modules if m.startswith(('bot.runtimes', 'bot.pipeline', 'bot.github'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )


def test_renamed_fields_break_only_json_callers(tmp_path: Path) -> None:
    """FIELD_SAME_NAME and FIELD_SAME_JSON_NAME are WIRE_JSON rules, not WIRE: names are not on the wire."""
    base = 'message Quote { int64 amount = 1; int64 tax = 2 [json_name = "tax"]; }\n'
    head = 'message Quote { int64 total = 1; int64 tax = 2 [json_name = "vat"]; }\n'
    check = run(tmp_path / "w", base, head)
    renamed = one(check, "proto_field_renamed", "/shop.pricing.v1.Quote/amount")
    assert (renamed.baseline, renamed.sandbox, renamed.breaking) == (
        "field 1 int64 amount",
        "field 1 int64 total",
        False,
    )
    assert not one(check, "proto_field_json_name_changed", "/shop.pricing.v1.Quote/tax").breaking
    strict = run(tmp_path / "j", base, head, wire_json=True)
    assert one(strict, "proto_field_renamed", "/shop.pricing.v1.Quote/amount").breaking
    assert one(strict, "proto_field_json_name_changed", "/shop.pricing.v1.Quote/tax").breaking
