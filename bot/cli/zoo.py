"""`loopgate zoo`: every example change through mocks-only CI and through loopgate."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from bot.cli.output import (
    EXAMPLES,
    _fail,
    _settings,
    _terminate_as_interrupt,
    console,
    examples_run_on_this_python,
)
from bot.cli.root import app
from bot.config import LoopgateError
from bot.runtimes.local import LocalRuntime
from bot.zoo import ZooResult, ZooRow, run_zoo


def _zoo_markdown(result: ZooResult) -> str:
    counts = result.counts()
    lines = [
        "# Defect zoo",
        "",
        "Each example change is checked three ways: by the changed services' own unit tests, which mock",
        "their neighbours (what an agent's CI runs); by the team's suite against the real services wired",
        "directly (a suite-only verify: `suite_only` in the manifest); and by loopgate.",
        "",
        "| change | kind | expected | mocks-only CI | suite only | loopgate | finding that decided it |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result.rows:
        finding = row.finding.replace("|", "\\|")
        lines.append(
            f"| {row.name} | {row.kind} | {row.expected} | {row.mocks_only} | {row.suite_only}"
            f" | {row.verdict} | {finding} |"
        )
    lines += [
        "",
        f"Defects caught by loopgate: {counts['defects_caught']}/{counts['defects_total']}; by mocks-only CI:"
        f" {counts['mocks_only_caught']}/{counts['defects_total']}; by the suite alone:"
        f" {counts['suite_only_caught']}/{counts['defects_total']}. Good changes passed:"
        f" {counts['good_passed']}/{counts['good_total']}.",
        "",
    ]
    return "\n".join(lines)


@app.command()
def zoo(
    manifest: Annotated[Path, typer.Option(help="The zoo manifest.")] = EXAMPLES / "changes" / "zoo.yml",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write rows and counts as JSON.")] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Write the table as Markdown.")] = None,
) -> None:
    """Run every example change through mocks-only CI and through loopgate; compare."""

    def show(row: ZooRow) -> None:
        mark = "✓" if row.ok else "✗"
        console.print(
            f"{mark} {row.name:<20} {row.kind:<6} expected {row.expected:<12} mocks-only {row.mocks_only:<6}"
            f" loopgate {row.verdict:<12} {row.finding}",
            markup=False,
        )

    examples_run_on_this_python()
    try:
        with _terminate_as_interrupt():
            result = run_zoo(EXAMPLES, manifest, LocalRuntime(_settings()), progress=show)
    except LoopgateError as exc:
        raise _fail(str(exc), 2 if exc.kind == "config" else 3) from None
    except KeyboardInterrupt:
        raise _fail("interrupted; sandboxes and the baseline were torn down", 130) from None
    counts = result.counts()
    if json_out is not None:
        rows = [{**asdict(row), "ok": row.ok} for row in result.rows]
        json_out.write_text(json.dumps({"rows": rows, **counts}, indent=2) + "\n", encoding="utf-8")
    if markdown is not None:
        markdown.write_text(_zoo_markdown(result), encoding="utf-8")
    console.print(
        f"defects caught {counts['defects_caught']}/{counts['defects_total']},"
        f" mocks-only caught {counts['mocks_only_caught']}/{counts['defects_total']},"
        f" good passed {counts['good_passed']}/{counts['good_total']}",
        markup=False,
    )
    raise typer.Exit(0 if result.ok else 1)
