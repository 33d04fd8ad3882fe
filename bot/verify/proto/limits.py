"""The bounds on the work one proto check may do, in one place so that the docs and the tests name them.

Both trees are read from checkouts, the head one written by the agent: a file count, per-file and total
sizes, a brace-nesting depth, a directory-walk budget, a protoc time limit and a finding cap keep a
hostile tree from turning the check into a hang, a memory blow-up or an unbounded report. What exceeds a
bound is refused with a one-line cause, never half-compared.
"""

from __future__ import annotations

from typing import Final

MAX_FILES: Final = 500  # .proto files staged for one side, the named ones and everything they import
MAX_FILE_BYTES: Final = 1024 * 1024  # one .proto file (the largest public APIs stay well under this)
MAX_TOTAL_BYTES: Final = 16 * 1024 * 1024  # all staged .proto files of one side together
MAX_NESTING: Final = 32  # `{` depth in one file: nested messages, oneofs, option literals
MAX_WALK_ENTRIES: Final = 50_000  # directory entries visited while expanding the configured globs
MAX_DESCRIPTOR_SET_BYTES: Final = 32 * 1024 * 1024  # a prebuilt FileDescriptorSet (`.binpb` / `.pb`)
PROTOC_TIMEOUT_S: Final = 60.0  # one protoc run
MAX_FINDINGS: Final = 500  # findings kept per side pair; the rest are counted in a note
MAX_TEXT: Final = 200  # any name or message taken from the head tree is clipped to this
