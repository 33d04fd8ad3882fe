"""Contract checks from a service's own API description (OpenAPI 3.0 and 3.1), pure: no I/O.

Two things come from the documents a forked service publishes:

- `compare_documents`: the base document (the baseline's, base code) against the head document (the
  fork's): what a caller relying on the base contract would trip over, by the usual rules (oasdiff's
  classification): a removed operation, a removed, renamed or moved parameter, a new required parameter
  or request field, an optional parameter or field becoming required, a removed success status or
  response field, a changed response field type or new null, a narrowed input type (number → integer, a
  new enum or pattern, a lower maxLength, an enum that lost values), a changed input default. New
  operations, new optional parameters and new response fields are reported, not breaking.
- `plan_probes`: concrete requests for every safe operation (GET, HEAD) of the *base* document, its path
  and query parameters filled from values seen in the suites' traffic and from the description
  (examples, enums, defaults); an operation without a known value for a required parameter is skipped
  rather than sent with an invented one that would only 404. The head document is only ever compared:
  it comes from the agent's code and never decides what is sent.

Both documents come from running code, the head one from the agent's branch: they are hostile input.
Size, nesting, node count, `$ref` chains and loops and the comparison work are bounded; what exceeds a
bound is a one-line note, never a hang or a crash.

The modules: `document` (parsing under limits, `$ref`s, operations), `views` (a schema as the rules see
it), `rules` (the schema rules), `compare` (operation by operation), `probes` (requests from the base
document).
"""

from __future__ import annotations

from bot.evidence import DiffResult
from bot.verify.openapi import compare as _compare
from bot.verify.openapi.document import (
    MAX_DOCUMENT_BYTES,
    MAX_NESTING,
    MAX_NODES,
    Document,
    NotADescription,
    Operation,
    operations,
    parse_document,
)
from bot.verify.openapi.probes import PlannedProbe, plan_probes
from bot.verify.openapi.rules import MAX_STEPS

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "MAX_NESTING",
    "MAX_NODES",
    "MAX_STEPS",
    "Document",
    "NotADescription",
    "Operation",
    "PlannedProbe",
    "compare_documents",
    "operations",
    "parse_document",
    "plan_probes",
]


def compare_documents(base: Document, head: Document, service: str) -> tuple[list[DiffResult], list[str]]:
    """`compare.compare_documents` within this package's MAX_STEPS, read at each call: when this was one
    module, setting `bot.verify.openapi.MAX_STEPS` bounded the comparison (the tests lower it), and it
    still does."""
    return _compare.compare_documents(base, head, service, max_steps=MAX_STEPS)
