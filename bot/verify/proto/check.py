"""One service's protos, base checkout against head checkout: staged, compiled, compared, grouped.

Each side is staged and compiled on its own (`source`, `protoc`), parsed into a `Schema` (`index`) and
compared by `rules`. What a side's trouble means depends on the side: the base is the trusted, running
contract, so a base that does not compile or is refused leaves nothing to compare against (a note); a
head that does not compile, or is refused, while the base is fine is the agent's change breaking the
contract, so it is a breaking finding (`proto_compile_error`, `proto_refused`) as well as a note. When
both sides fail, the problem predates the change: notes only.
"""

from __future__ import annotations

import re
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bot.evidence import DiffResult, Finding
from bot.verify.proto import index, limits, protoc, rules, source

WKT_PREFIX = "google/protobuf/"
_FILE_IN_CAUSE = re.compile(r"^([^:\s]+\.(?:proto|binpb|pb))\b")


@dataclass(frozen=True)
class ProtoCheck:
    """The findings, one DiffResult per `.proto` file with changes, and one-line notes."""

    diff: list[DiffResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Side:
    schema: index.Schema
    ours: set[str]  # the descriptor files that come from the checkout (not grpc_tools' well-known types)
    repo_paths: dict[str, str]


@dataclass(frozen=True)
class _Trouble:
    kind: str  # proto_refused | proto_compile_error
    cause: str


def check_protos(
    base_root: Path,
    head_root: Path,
    files: Sequence[str],
    import_paths: Sequence[str],
    *,
    service: str,
    wire_json: bool = False,
) -> ProtoCheck:
    """Compares the protos `files` names (repository paths or globs with `**`; `.binpb`/`.pb` entries
    are prebuilt FileDescriptorSets) in the base checkout against the head checkout. `import_paths` are
    protoc's `-I` directories, relative to each root (default: the root). With `wire_json`, changes that
    break only the JSON mapping (buf's WIRE_JSON) are breaking too; otherwise they are reported, not
    breaking (buf's WIRE)."""
    base = load_side(base_root, files, import_paths)
    head = load_side(head_root, files, import_paths)
    notes: list[str] = []
    if isinstance(base, _Trouble):
        notes.append(f"base protos not compared: {base.cause}")
    if isinstance(head, _Trouble):
        notes.append(f"head protos: {head.cause}")
        if not isinstance(base, _Trouble):
            finding = Finding(kind=head.kind, pointer="", baseline=None, sandbox=head.cause, breaking=True)
            request = f"proto {_file_in(head.cause)}"
            return ProtoCheck([DiffResult(request=request, service=service, findings=[finding])], notes)
    if isinstance(base, _Trouble) or isinstance(head, _Trouble):
        return ProtoCheck([], notes)
    if not base.ours and not head.ours:
        return ProtoCheck([], [f"no .proto files matched {', '.join(files) or '(nothing configured)'}"])
    changes = rules.compare(base.schema, head.schema, base.ours, head.ours)
    if changes.dropped:
        notes.append(f"{changes.dropped} more proto changes not listed (over {limits.MAX_FINDINGS})")
    return ProtoCheck(_group(changes.items, base, head, service, wire_json), notes)


def load_side(root: Path, files: Sequence[str], import_paths: Sequence[str]) -> _Side | _Trouble:
    """One checkout's protos as a Schema, or why not (one line)."""
    with tempfile.TemporaryDirectory(prefix="loopgate-proto-") as scratch:
        try:
            staged = source.stage(root, files, import_paths, Path(scratch))
        except source.Refused as exc:
            return _Trouble("proto_refused", str(exc))
        try:
            data = protoc.compile_protos(staged.directory, staged.inputs, staged.repo_paths)
            schema = index.parse(data) if data else index.Schema()
            ours = set(staged.repo_paths) & set(schema.files)
            for path in staged.descriptor_sets:
                try:
                    extra = index.parse(protoc.read_descriptor_set(path))
                except index.NotADescriptorSet as exc:
                    return _Trouble("proto_refused", f"{path.relative_to(root.resolve())}: {exc}")
                fresh = extra.files.keys() - schema.files.keys()
                ours |= {name for name in fresh if not name.startswith(WKT_PREFIX)}
                schema.merge(extra)
        except protoc.CompileError as exc:
            return _Trouble("proto_compile_error", str(exc))
        except index.NotADescriptorSet as exc:
            return _Trouble("proto_compile_error", f"protoc's output: {exc}")
    return _Side(schema, ours, staged.repo_paths)


def _group(
    changes: Sequence[rules.Change], base: _Side, head: _Side, service: str, wire_json: bool
) -> list[DiffResult]:
    """One DiffResult per file (`proto shop/pricing/v1/pricing.proto`, the repository path), breaking
    findings first."""
    by_file: dict[str, list[Finding]] = defaultdict(list)
    for change in changes:
        label = head.repo_paths.get(change.file) or base.repo_paths.get(change.file) or change.file
        breaking = change.category == "wire" or (wire_json and change.category == "json")
        by_file[label].append(
            Finding(
                kind=change.kind,
                pointer=change.pointer,
                baseline=change.baseline,
                sandbox=change.sandbox,
                breaking=breaking,
            )
        )
    return [
        DiffResult(
            request=f"proto {label}",
            service=service,
            findings=sorted(findings, key=lambda f: (not f.breaking, f.pointer, f.kind)),
        )
        for label, findings in sorted(by_file.items())
    ]


def _file_in(cause: str) -> str:
    match = _FILE_IN_CAUSE.match(cause)
    return match.group(1) if match else "(protos)"
