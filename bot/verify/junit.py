"""JUnit XML, as pytest, JUnit 5, Go's gotestsum and most runners write it, read with junitparser."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from junitparser import Error, Failure, JUnitXml, Skipped, TestSuite
from junitparser.junitparser import JUnitXmlError

from bot.evidence import Counts, TestFailure

# Where a traceback's failing frame is: pytest ends with "path.py:12: AssertionError", Java and
# others name "(File.java:12)". The last match is the frame closest to the assertion.
_LOCATION = re.compile(
    r"(?m)^(?P<file>[\w./\\-]+\.\w+):(?P<line>\d+): |\((?P<jfile>[\w.-]+\.\w+):(?P<jline>\d+)\)"
)
MAX_FAILURES = 200
MAX_MESSAGE = 2_000


@dataclass
class JUnitReport:
    counts: Counts
    failures: list[TestFailure] = field(default_factory=list)


def parse_junit(path: Path) -> JUnitReport:
    """Counts and failures; raises ValueError with a one-line cause when the file is not JUnit XML."""
    try:
        xml = JUnitXml.fromfile(str(path))
    except (JUnitXmlError, OSError, SyntaxError) as exc:
        raise ValueError(f"{path.name}: not a JUnit XML report ({exc})") from None
    suites = [xml] if isinstance(xml, TestSuite) else list(xml)
    counts = Counts()
    failures: list[TestFailure] = []
    for suite in suites:
        for case in suite:
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


def _failure(classname: str | None, name: str | None, problem: Failure | Error) -> TestFailure:
    text = problem.text or ""
    last_line = text.strip().splitlines()[-1] if text.strip() else ""
    message = problem.message or last_line or "(no message)"
    file, line = None, None
    for match in _LOCATION.finditer(text):
        file = match.group("file") or match.group("jfile")
        line = int(match.group("line") or match.group("jline"))
    test = f"{classname}::{name}" if classname else (name or "(unnamed)")
    return TestFailure(test=test, message=str(message)[:MAX_MESSAGE], file=file, line=line)
