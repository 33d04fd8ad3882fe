"""protoc, from grpcio-tools, run on a staged tree: `.proto` files in, a `FileDescriptorSet` out.

It runs as a child process, not in this one: protoc prints its errors on the C++ side's stderr, which
only a child's pipe captures, and a child can be timed out and can crash on a pathological input without
taking the worker with it. The child is a bare interpreter (`-I -S`: no site, no environment) that
loads grpc_tools' compiler module and nothing else: `python -m grpc_tools.protoc` spends about 80 ms
importing what its entry point needs to find one directory, this about 30 ms in all. Like that entry
point, it adds grpc_tools' include directory last, so the well-known types
(`google/protobuf/timestamp.proto`, ...) resolve from the bundled copies while the repository's files
win.

Errors come back as one line in protoc's own `file:line:column: message` form, the staged virtual name
mapped back to the repository path, never a traceback.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from bot.verify.proto import limits

_LOCATED = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<column>\d+): (?P<message>.*)$")


class CompileError(Exception):
    """protoc refused the files: one line, `repo/path.proto:line:column: message`."""


_LAUNCH = (
    "import sys; sys.path.insert(0, sys.argv[1]); from grpc_tools import _protoc_compiler; "
    "sys.exit(_protoc_compiler.run_main([a.encode() for a in ['protoc', *sys.argv[3:], '-I' + sys.argv[2]]]))"
)
"""argv: where grpc_tools lives, its include directory, then protoc's own arguments."""


@functools.cache
def _grpc_tools() -> tuple[str, str]:
    """The directory holding the grpc_tools package and its bundled include directory."""
    spec = importlib.util.find_spec("grpc_tools")
    if spec is None or not spec.submodule_search_locations:
        raise CompileError("protoc could not start: grpcio-tools is not installed")
    package = Path(next(iter(spec.submodule_search_locations)))
    return str(package.parent), str(package / "_proto")


def compile_protos(
    include: Path, inputs: Sequence[str], repo_paths: Mapping[str, str], timeout: float | None = None
) -> bytes:
    """The serialized FileDescriptorSet (with imports, so every referenced type is in it) of `inputs`,
    virtual names under `include`. Raises CompileError."""
    if not inputs:
        return b""
    with tempfile.TemporaryDirectory(prefix="loopgate-protoc-") as scratch:
        out = Path(scratch) / "set.binpb"
        args = [
            sys.executable,
            "-I",
            "-S",
            "-c",
            _LAUNCH,
            *_grpc_tools(),
            f"--proto_path={include}",
            f"--descriptor_set_out={out}",
            "--include_imports",
            *inputs,
        ]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        try:
            done = subprocess.run(
                args,
                cwd=include,
                env=env,
                capture_output=True,
                timeout=limits.PROTOC_TIMEOUT_S if timeout is None else timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise CompileError(f"protoc did not finish within {limits.PROTOC_TIMEOUT_S:g} s") from None
        except OSError as exc:
            raise CompileError(f"protoc could not start: {exc.strerror or exc}") from None
        if done.returncode != 0:
            stderr = done.stderr.decode("utf-8", "replace")
            for prefix in {f"{include}/", f"{include.resolve()}/"}:  # inputs come back as disk paths
                stderr = stderr.replace(prefix, "")
            raise CompileError(_first_error(stderr, repo_paths, done.returncode))
        try:
            return out.read_bytes()
        except OSError:
            raise CompileError("protoc wrote no descriptor set") from None


def read_descriptor_set(path: Path) -> bytes:
    """A prebuilt descriptor set's bytes, within MAX_DESCRIPTOR_SET_BYTES. Raises CompileError."""
    try:
        with path.open("rb") as handle:
            data = handle.read(limits.MAX_DESCRIPTOR_SET_BYTES + 1)
    except OSError as exc:
        raise CompileError(f"{path.name}: unreadable ({exc.strerror or exc})") from None
    if len(data) > limits.MAX_DESCRIPTOR_SET_BYTES:
        raise CompileError(f"{path.name}: over {limits.MAX_DESCRIPTOR_SET_BYTES:,} bytes: refused")
    return data


def _first_error(stderr: str, repo_paths: Mapping[str, str], code: int) -> str:
    """protoc's first error with a file:line (else its first line), in repository terms, with a count of
    the rest; warnings are skipped. A missing import prints `x.proto: File not found.` before the
    importer's `a.proto:3:1: Import "x.proto" was not found`: the second one says where."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "warning:" not in line.lower()]
    if not errors:
        return f"protoc failed (exit {code}) without a message"
    located = next((m for m in map(_LOCATED.match, errors) if m), None)
    first = errors[0]
    if located:
        name = repo_paths.get(located["file"], located["file"])
        first = f"{name}:{located['line']}:{located['column']}: {located['message']}"
    else:
        for virtual, rel in repo_paths.items():
            if first.startswith(virtual + ":"):
                first = rel + first[len(virtual) :]
                break
    more = len(errors) - 1
    text = first if len(first) <= limits.MAX_TEXT * 2 else first[: limits.MAX_TEXT * 2 - 1] + "…"
    return f"{text} (and {more} more)" if more else text
