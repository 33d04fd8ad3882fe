"""What the Action prints to the step's log: stage lines while it runs, then each suite's log in a
collapsed group, an annotation per failing test (capped) and one for the verdict.

Text from the run (logs, test names, messages, reasons) goes through `Console.text` or into a command's
escaped message, never straight to the log: see `action.commands`.
"""

from __future__ import annotations

import time

from action.commands import Console
from bot.evidence import Evidence, Verdict
from bot.report.display import clip, suite_source

MAX_STEP_ERRORS = 10
"""GitHub shows at most 10 error annotations per step; the last is kept for the verdict."""
MESSAGE_CHARS = 2_000
TITLE_CHARS = 255


class StageLines:
    """A `StageListener` printing one plain line per stage, as `loopgate verify` does in CI logs."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.started: dict[str, float] = {}

    def __call__(self, name: str, event: str) -> None:
        if event == "started":
            self.started[name] = time.monotonic()
            return
        elapsed = int((time.monotonic() - self.started.pop(name, time.monotonic())) * 1000)
        mark = {"ok": "✓", "skipped": "-", "failed": "✗"}.get(event, "!")
        self.console.stream.write(f"{mark} {name:<9} {event:<9} {elapsed:>6} ms\n")
        self.console.stream.flush()


def print_run(console: Console, evidence: Evidence) -> None:
    """Services, reasons and notes as plain lines; each suite's log tail folded into a group."""
    lines = [
        f"service {s.name}: {'forked' if s.forked else 'baseline'} ({s.status}, {s.tagged_requests}"
        f" tagged requests) {s.reason}"
        for s in evidence.services
    ]
    lines += [f"- {reason}" for reason in evidence.reasons]
    lines += [f"note: {note}" for note in evidence.notes]
    if lines:
        console.text("\n".join(lines))
    for suite in evidence.suites:
        failed = suite.counts.failed + suite.counts.errors
        counts = f"{suite.counts.passed} passed, {failed} failed"
        title = f"suite {suite.name}, {suite_source(suite.source)}: {suite.status}, {counts}"
        with console.group(title):
            console.text(suite.log_tail or "(no output)")


def annotate_failures(console: Console, evidence: Evidence) -> None:
    """One `::error` per failing test, on its file and line when the JUnit report names them."""
    failures = [(suite.name, failure) for suite in evidence.suites for failure in suite.failures]
    room = MAX_STEP_ERRORS - 1
    for suite_name, failure in failures[:room]:
        console.error(
            clip(failure.message or "failed", MESSAGE_CHARS),
            file=failure.file,
            line=failure.line if failure.file else None,
            title=clip(f"{suite_name}: {failure.test}", TITLE_CHARS),
        )
    if len(failures) > room:
        console.emit(f"{len(failures) - room} more failing tests are listed in the step summary")


def annotate_verdict(console: Console, evidence: Evidence, fails_step: bool) -> None:
    verdict = evidence.verdict
    if verdict is None:
        return
    title = f"loopgate: {verdict.value}"
    reasons = clip("\n".join(evidence.reasons) or verdict.value, MESSAGE_CHARS)
    if fails_step:
        console.error(reasons, title=title)
    elif verdict is Verdict.PASS:
        console.notice(reasons, title=title)
    else:
        console.warning(reasons, title=title)
