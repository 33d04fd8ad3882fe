"""Shared by the command modules: the consoles, common options, progress, summaries and signals."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console
from rich.status import Status
from rich.table import Table

from bot.config import RuntimeSettings
from bot.evidence import Evidence
from bot.report import UNCONFINED_NOTICE, render_comment, render_html, render_json
from bot.report.display import suite_source

console = Console(highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "shop"

RepoOption = Annotated[Path, typer.Option("--repo", help="Path to the git repository.")]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="Use this config instead of .loopgate.yml at the base commit.")
]


def _fail(message: str, code: int) -> typer.Exit:
    errors.print(f"loopgate: {message}", markup=False)
    return typer.Exit(code)


def _settings() -> RuntimeSettings:
    return RuntimeSettings()


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (CI cancelling a job) and SIGINT take the same path as Ctrl-C, so teardown still runs.

    SIGINT explicitly too: a shell starts a background job with SIGINT ignored, and Python then leaves
    it ignored, so `kill -INT` of a backgrounded `loopgate verify` would do nothing."""

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class StageProgress:
    """Rich spinner on a terminal, one plain line per stage otherwise (CI logs, agents). Stages may run
    at once (the baseline starts while the builds run): one spinner names every running stage."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.status: Status | None = None
        self.lock = threading.Lock()

    def __call__(self, name: str, event: str) -> None:
        with self.lock:
            if event == "started":
                self.started[name] = time.monotonic()
            else:
                elapsed = int((time.monotonic() - self.started.pop(name, time.monotonic())) * 1000)
                mark = {"ok": "✓", "skipped": "-", "failed": "✗"}.get(event, "!")
                console.print(f"{mark} {name:<9} {event:<9} {elapsed:>6} ms", markup=False)
            if not console.is_terminal:
                return
            running = " · ".join(f"{stage} …" for stage in self.started)
            if running and self.status is None:
                self.status = console.status(running)
                self.status.start()
            elif running and self.status is not None:
                self.status.update(running)
            elif self.status is not None:
                self.status.stop()
                self.status = None


def _print_unconfined(confined: bool) -> None:
    if not confined:
        console.print(UNCONFINED_NOTICE, style="bold yellow", markup=False)


def _print_summary(evidence: Evidence) -> None:
    _print_unconfined(evidence.confined)
    if not console.is_terminal:
        _print_plain(evidence)
        return
    services = Table(title="services", show_edge=False)
    for column in ("service", "forked", "status", "ready ms", "tagged requests", "reason"):
        services.add_column(column)
    for s in evidence.services:
        ready = str(s.ready_ms) if s.ready_ms is not None else "-"
        services.add_row(
            s.name, "yes" if s.forked else "no", s.status, ready, str(s.tagged_requests), s.reason
        )
    if evidence.services:
        console.print(services)
    if evidence.suites:
        suites = Table(title="suites", show_edge=False)
        for column in ("suite", "source", "status", "passed", "failed", "ms"):
            suites.add_column(column)
        for r in evidence.suites:
            failed = r.counts.failed + r.counts.errors
            suites.add_row(r.name, r.source, r.status, str(r.counts.passed), str(failed), str(r.duration_ms))
        console.print(suites)
    _print_failures_and_reasons(evidence)


def _print_plain(evidence: Evidence) -> None:
    """Logs and agents read lines, not boxes: one line per service, suite and failure."""
    for s in evidence.services:
        ready = f" ready {s.ready_ms} ms," if s.ready_ms is not None else ""
        line = f"service {s.name}: {'forked' if s.forked else 'baseline'} ({s.status},{ready}"
        console.print(f"{line} {s.tagged_requests} tagged requests) {s.reason}", markup=False)
    for r in evidence.suites:
        failed = r.counts.failed + r.counts.errors
        counts = f"{r.counts.passed} passed, {failed} failed, {r.duration_ms} ms"
        console.print(
            f"suite {r.name}, {suite_source(r.source)}: {r.status}, {counts}",
            markup=False,
        )
    _print_failures_and_reasons(evidence)


def _print_failures_and_reasons(evidence: Evidence) -> None:
    for r in evidence.suites:
        for failure in r.failures[:10]:
            where = f" ({failure.file}:{failure.line})" if failure.file else ""
            first = failure.message.splitlines()[0] if failure.message else ""
            console.print(f"  ✗ {r.name}: {failure.test}{where}: {first}", markup=False)
    for reason in evidence.reasons:
        console.print(f"- {reason}", markup=False)
    for note in evidence.notes:
        console.print(f"note: {note}", markup=False)


def _write_outputs(
    evidence: Evidence, json_out: Path | None, markdown: Path | None, html: Path | None
) -> None:
    for path, render in ((json_out, render_json), (markdown, render_comment), (html, render_html)):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(render(evidence), encoding="utf-8")


def _baggage(key: str) -> str:
    return f"loopgate-sandbox={key}"


def examples_run_on_this_python() -> None:
    """The bundled example shop runs a plain `python` found on PATH, as a team's services would; its
    packages are in loopgate's own environment, so for `demo` and `zoo` that interpreter comes first
    (a repository of the user's gets the user's PATH untouched)."""
    own = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", os.defpath)
    if path.split(os.pathsep)[0] != own:
        os.environ["PATH"] = own + os.pathsep + path
