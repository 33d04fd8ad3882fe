"""The Evidence record and the verdict rules."""

from bot.evidence.model import (
    SCHEMA_VERSION,
    Counts,
    DiffResult,
    ErrorKind,
    Evidence,
    Finding,
    GitRef,
    Links,
    Propagation,
    ServiceResult,
    Stage,
    SuiteResult,
    TestFailure,
    Verdict,
    utcnow,
)
from bot.evidence.verdict import CHECK_CONCLUSIONS, decide, exit_code

__all__ = [
    "CHECK_CONCLUSIONS",
    "SCHEMA_VERSION",
    "Counts",
    "DiffResult",
    "ErrorKind",
    "Evidence",
    "Finding",
    "GitRef",
    "Links",
    "Propagation",
    "ServiceResult",
    "Stage",
    "SuiteResult",
    "TestFailure",
    "Verdict",
    "decide",
    "exit_code",
    "utcnow",
]
