"""gRPC status codes as findings name them, and which of them count as the server's own failure.

Every gRPC answer carries HTTP 200; what a caller branches on is the `grpc-status` trailer. Findings
name the code (`NOT_FOUND`, not `5`): a reader knows the names from every gRPC library.

The gRPC analogue of a 5xx is taken from the HTTP mapping `google.rpc.Code` documents for each code:
UNKNOWN, INTERNAL and DATA_LOSS (500), UNIMPLEMENTED (501), UNAVAILABLE (503) and DEADLINE_EXCEEDED
(504) are the server failing, not the caller asking wrongly. They are `SERVER_ERRORS`: one the candidate
answers and its controls never did is a `server_errors` finding (breaking), and one the candidate no
longer answers is no defect of it.
"""

from __future__ import annotations

from typing import Final

__all__ = ["NAMES", "OK", "SERVER_ERRORS", "name"]

OK: Final = 0
NAMES: Final = {
    0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
    6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
    10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
    15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}  # fmt: skip
SERVER_ERRORS: Final = frozenset({2, 4, 12, 13, 14, 15})
"""UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS: 5xx in google.rpc.Code."""


def name(code: int) -> str:
    """`NOT_FOUND`; a code outside the 17 the protocol defines is `code 42` (a caller sees it too)."""
    return NAMES.get(code, f"code {code}")
