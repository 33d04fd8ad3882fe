"""Base-vs-head `.proto` changes, judged by the usual wire-compatibility rules (issue #14, item 3).

A gRPC service's own unit tests are built from the same edited `.proto` as the service, so a renumbered
field, a changed type, a removed field or a field moved into a oneof passes them and breaks every caller
built from the old file. `check_protos` compiles the configured `.proto` files of the base and the head
checkouts with protoc (grpcio-tools; prebuilt `FileDescriptorSet`s are accepted too) and compares the
descriptors the way `buf breaking` classifies changes in its WIRE (and, on request, WIRE_JSON)
category. The result has the shape of the OpenAPI comparison's: `DiffResult`s, one per `.proto` file with
changes (request `proto shop/pricing/v1/pricing.proto`), whose findings point at the element by full name
(`/shop.pricing.v1.Quote/amount`, `/shop.pricing.v1.Pricing/GetQuote`), and one-line notes.

The head checkout is the agent's: it is hostile input. Imports that leave the repository, symlinks out of
the checkout, oversized or deeply nested files and too many files are refused with a one-line cause
before protoc runs, and protoc only ever sees a private copy of the files that passed (`limits` holds the
bounds). A head that does not compile is a finding with protoc's `file:line:column: message`, never a
traceback.

Modules: `limits` (the bounds), `source` (gathering and staging a checkout's files), `protoc` (running
the compiler), `index` (a descriptor set as typed views), `rules` (the comparison), `check` (both sides,
grouped into DiffResults). Pure judging: nothing here knows a runtime, the pipeline or GitHub.
"""

from __future__ import annotations

from bot.verify.proto.check import ProtoCheck, check_protos, load_side
from bot.verify.proto.index import NotADescriptorSet, Schema, parse
from bot.verify.proto.limits import (
    MAX_DESCRIPTOR_SET_BYTES,
    MAX_FILE_BYTES,
    MAX_FILES,
    MAX_FINDINGS,
    MAX_NESTING,
    MAX_TOTAL_BYTES,
    MAX_WALK_ENTRIES,
    PROTOC_TIMEOUT_S,
)
from bot.verify.proto.rules import Change, Changes, compare

__all__ = [
    "MAX_DESCRIPTOR_SET_BYTES",
    "MAX_FILES",
    "MAX_FILE_BYTES",
    "MAX_FINDINGS",
    "MAX_NESTING",
    "MAX_TOTAL_BYTES",
    "MAX_WALK_ENTRIES",
    "PROTOC_TIMEOUT_S",
    "Change",
    "Changes",
    "NotADescriptorSet",
    "ProtoCheck",
    "Schema",
    "check_protos",
    "compare",
    "load_side",
    "parse",
]
