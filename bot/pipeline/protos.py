"""The proto contract check of each forked gRPC service (issue #14 item 3), run beside the OpenAPI one.

A gRPC service's unit tests are built from the same edited `.proto` as the service, so they pass a
renumbered field that breaks every caller built from the old file. For every forked service with
`grpc.protos`, the protos of the base commit (what callers were built from) and of the merge of head
into base (what the fork runs) are compared by `bot.verify.proto`; its findings go to `Evidence.diff`,
where a breaking one fails the verdict by the usual rules, and its notes to `Evidence.notes`.

Neither side needs a running process, so both are read straight from git, not from a checkout the
runtime made: only the files protoc could read (`.proto` files under the import paths, and whatever the
configured globs name) are written to a private temporary directory. The head tree is the agent's: each
file is read with a size bound, symlinks are not followed, and a tree with more such files than
`MAX_TREE_FILES` is refused with a one-line cause before anything is read.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from bot.config.globs import matches
from bot.config.grpc import Grpc
from bot.config.schema import Config
from bot.evidence import DiffResult, Evidence, Finding
from bot.runtimes.git import Git
from bot.verify.proto import MAX_DESCRIPTOR_SET_BYTES, MAX_FILE_BYTES, ProtoCheck, check_protos
from bot.verify.proto.source import DESCRIPTOR_SET_SUFFIXES

__all__ = ["MAX_TREE_FILES", "add_proto_findings", "check_forked_protos"]

MAX_TREE_FILES = 2_000
"""Candidate files one side may hold under the import paths; each is one bounded `git cat-file`."""
_REGULAR = ("100644", "100755")


def add_proto_findings(evidence: Evidence, plan_config: Config, repo: Path, base: str, head: str) -> None:
    """Run the check for the Evidence's forked services and record what it found."""
    forked = [s.name for s in evidence.forks]
    result = check_forked_protos(Git(repo), plan_config, forked, base, head)
    evidence.diff += result.diff
    evidence.notes += result.notes


def check_forked_protos(git: Git, config: Config, forked: Sequence[str], base: str, head: str) -> ProtoCheck:
    """Every forked service with `grpc.protos`, base commit `base` against commit `head` (the merge)."""
    services = [(name, spec.grpc) for name in forked if (spec := config.services.get(name)) and spec.grpc]
    if not services:
        return ProtoCheck()
    diff: list[DiffResult] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="loopgate-protos-") as tmp:
        tree_of = {sha: git.tree(sha) for sha in {base, head}}
        for index, (name, grpc) in enumerate(services):
            sides = []
            for side, sha in (("base", base), ("head", head)):
                root = Path(tmp) / f"{index}-{side}"
                sides.append(materialise(git, sha, tree_of[sha], grpc, root))
            base_root, head_root = sides
            if isinstance(base_root, str):
                notes.append(f"{name}: base protos not compared: {base_root}")
                continue
            if isinstance(head_root, str):
                notes.append(f"{name}: head protos: {head_root}")
                finding = Finding(kind="proto_refused", pointer="", sandbox=head_root, breaking=True)
                diff.append(DiffResult(request="proto (head tree)", service=name, findings=[finding]))
                continue
            checked = check_protos(
                base_root,
                head_root,
                grpc.protos,
                grpc.import_paths,
                service=name,
                wire_json=grpc.breaking == "wire_json",
            )
            diff += checked.diff
            notes += [f"{name}: {note}" for note in checked.notes]
    return ProtoCheck(diff, notes)


def _wanted(path: str, grpc: Grpc) -> bool:
    """Whether protoc could need `path`: a `.proto` under an import path, or a file the globs name."""
    if matches(path, grpc.protos):
        return True
    if not path.endswith(".proto"):
        return False
    for directory in grpc.import_paths:
        prefix = directory.strip("/")
        if prefix in ("", ".") or path.startswith(prefix + "/"):
            return True
    return False


def materialise(git: Git, sha: str, tree: dict[str, str], grpc: Grpc, root: Path) -> Path | str:
    """The files of commit `sha` that the check may read, under `root`; or why not (one line).

    A file is read at most one byte past its bound, so one that is too big still reaches the check,
    which refuses it by name; symlinks are left out (the check would refuse any leading out)."""
    wanted = sorted(p for p, mode in tree.items() if mode in _REGULAR and _wanted(p, grpc))
    if len(wanted) > MAX_TREE_FILES:
        return f"more than {MAX_TREE_FILES} candidate proto files under {', '.join(grpc.import_paths)}"
    root.mkdir(parents=True)
    for path in wanted:
        parts = PurePosixPath(path).parts
        if ".." in parts or path.startswith("/"):
            continue  # git never stores such a path; nothing outside `root` is ever written
        limit = MAX_DESCRIPTOR_SET_BYTES if path.endswith(DESCRIPTOR_SET_SUFFIXES) else MAX_FILE_BYTES
        data = git.show_bytes(sha, path, limit)
        if data is None:
            continue
        target = root.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root
