"""JUnit XML, as pytest, JUnit 5, Go's gotestsum and most runners write it, read with junitparser.

The file comes out of a suite run against the agent's code (a head suite *is* the agent's code), so
it is parsed as hostile input. defusedxml parses it with DTDs forbidden, since no JUnit report needs
one: no entity is expanded (billion laughs) and no external entity is read (`file:///…` would end up
in the PR comment), whichever XML library junitparser would pick on its own; the file's size is
bounded before it is read. Bytes that are not UTF-8 are read with replacement characters rather
than rejected, so a runner that writes Latin-1 test names still reports its failures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

from defusedxml.ElementTree import fromstring
from junitparser import Error, Failure, Skipped, TestCase

from bot.evidence import Counts, TestFailure

# Where a traceback's failing frame is: pytest ends with "path.py:12: AssertionError", Java and
# others name "(File.java:12)". The last match is the frame closest to the assertion.
_LOCATION = re.compile(
    r"(?m)^(?P<file>[\w./\\-]+\.\w+):(?P<line>\d+): |\((?P<jfile>[\w.-]+\.\w+):(?P<jline>\d+)\)"
)
MAX_FAILURES = 200
MAX_MESSAGE = 2_000
MAX_BYTES = 64 * 1024 * 1024
"""Far above any real report; a bigger file is a runaway log, not a test result."""


@dataclass
class JUnitReport:
    counts: Counts
    failures: list[TestFailure] = field(default_factory=list)


def parse_junit(report: Path | bytes, name: str = "junit.xml") -> JUnitReport:
    """Counts and failures of a report file or of its bytes (as a runtime carried them back from a
    suite); raises ValueError with a one-line cause when it is not JUnit XML."""
    if isinstance(report, Path):
        name = report.name
    try:
        root = _parse(_read(report) if isinstance(report, Path) else _bounded(report))
    except (OSError, ParseError, ValueError) as exc:
        raise ValueError(f"{name}: not a JUnit XML report ({exc})") from None
    if root.tag not in ("testsuites", "testsuite"):
        raise ValueError(f"{name}: not a JUnit XML report (its root is <{root.tag}>)")
    counts = Counts()
    failures: list[TestFailure] = []
    # Every testcase at any depth: runners nest testsuites (JUnit 5 per class, Go per package).
    for case in (_case(element) for element in root.iter("testcase")):
        counts.tests += 1
        results = list(case.result)
        problem = next((r for r in results if isinstance(r, Failure | Error)), None)
        if problem is None:
            if any(isinstance(r, Skipped) for r in results):
                counts.skipped += 1
            else:
                counts.passed += 1
            continue
        if isinstance(problem, Error):
            counts.errors += 1
        else:
            counts.failed += 1
        if len(failures) < MAX_FAILURES:
            failures.append(_failure(case.classname, case.name, problem))
    return JUnitReport(counts=counts, failures=failures)


def _case(element: Element) -> TestCase:
    case: TestCase = TestCase.fromelem(element)  # type: ignore[no-untyped-call]  # junitparser's is untyped
    return case


def _read(path: Path) -> bytes:
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ValueError(f"{size:,} bytes, over the {MAX_BYTES:,}-byte limit")
    return path.read_bytes()


def _bounded(data: bytes) -> bytes:
    if len(data) > MAX_BYTES:
        raise ValueError(f"{len(data):,} bytes, over the {MAX_BYTES:,}-byte limit")
    return data


def _parse(data: bytes) -> Element:
    """The root element, parsed with no DTD allowed; non-UTF-8 bytes are replaced, not fatal."""
    try:
        return fromstring(data, forbid_dtd=True)
    except ParseError:
        repaired = _replacing_invalid_utf8(data)
        if repaired is None:
            raise
        return fromstring(repaired, forbid_dtd=True)


def _replacing_invalid_utf8(data: bytes) -> bytes | None:
    """`data` with its invalid UTF-8 replaced by U+FFFD, or None when it is valid (nothing to repair)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace").encode("utf-8")
    return None


def _failure(classname: str | None, name: str | None, problem: Failure | Error) -> TestFailure:
    text = problem.text or ""
    last_line = text.strip().splitlines()[-1].strip() if text.strip() else ""
    message = problem.message or last_line or "(no message)"
    file, line = None, None
    for match in _LOCATION.finditer(text):
        file = match.group("file") or match.group("jfile")
        line = int(match.group("line") or match.group("jline"))
    test = f"{classname}::{name}" if classname else (name or "(unnamed)")
    return TestFailure(test=test[:MAX_MESSAGE], message=str(message)[:MAX_MESSAGE], file=file, line=line)
