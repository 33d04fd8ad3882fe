"""`loopgate verify` and `loopgate demo`: one verification, of a repository or of an example change."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from bot.cli.output import (
    EXAMPLES,
    ConfigOption,
    RepoOption,
    StageProgress,
    _baggage,
    _fail,
    _print_summary,
    _print_unconfined,
    _settings,
    _terminate_as_interrupt,
    _write_outputs,
    console,
    errors,
    examples_run_on_this_python,
)
from bot.cli.root import app
from bot.config import LoopgateError
from bot.evidence import Evidence, exit_code
from bot.pipeline import Pipeline, VerifyRequest
from bot.runtimes.choice import Runtimes
from bot.zoo import Manifest, build_repo, load_manifest


def _run_verify(
    request: VerifyRequest, json_out: Path | None, markdown: Path | None, html: Path | None
) -> int:
    # `--keep` leaves what it starts running after this process: it must not die with it.
    runtimes = Runtimes(_settings(), persistent=request.keep, on_made=lambda r: _print_unconfined(r.confined))
    pipeline = Pipeline(runtimes, listener=StageProgress())

    early: list[Evidence] = []

    def report(evidence: Evidence) -> None:
        _print_summary(evidence)
        _write_outputs(evidence, json_out, markdown, html)
        verdict = evidence.verdict.value if evidence.verdict else "error"
        console.print(f"verdict: {verdict}", markup=False)

    def report_before_teardown(evidence: Evidence) -> None:
        report(evidence)
        early.append(evidence)
        console.print("tearing the sandbox down before exiting …", markup=False)

    try:
        with _terminate_as_interrupt():
            evidence = pipeline.verify(replace(request, on_verdict=report_before_teardown))
    except KeyboardInterrupt:
        errors.print("loopgate: interrupted; the sandbox was torn down")
        return 130
    if not early:
        report(evidence)  # kept, or ended before a verdict: nothing was reported yet
    else:
        _write_outputs(evidence, json_out, markdown, html)  # again, now with teardown's own outcome
        for note in evidence.notes:
            if note.startswith("teardown: "):
                errors.print(f"loopgate: {note}")
    if pipeline.kept is not None:
        sandbox = pipeline.kept.sandbox
        console.print(
            f"kept sandbox {sandbox.routing_key}: send `baggage: {_baggage(sandbox.routing_key)}` to",
            markup=False,
        )
        for name, url in sorted(sandbox.baseline.entry_urls.items()):
            console.print(f"  {name}: {url}", markup=False)
        console.print(f"delete it with: loopgate sandbox delete {sandbox.routing_key}", markup=False)
    return exit_code(evidence)


@app.command()
def verify(
    repo: RepoOption = Path("."),
    base: Annotated[str, typer.Option(help="Base ref: what the baseline runs.")] = "main",
    head: Annotated[str, typer.Option(help="Head ref: the agent's change.")] = "HEAD",
    config: ConfigOption = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the Evidence JSON here.")] = None,
    markdown: Annotated[
        Path | None, typer.Option("--markdown", help="Write the Markdown report here.")
    ] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Write the HTML report here.")] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Leave the sandbox up afterwards.")] = False,
) -> None:
    """Verify HEAD against BASE: fork the changed services, run the suites, decide."""
    request = VerifyRequest(repo=repo, base_ref=base, head_ref=head, config_file=config, keep=keep)
    raise typer.Exit(_run_verify(request, json_out, markdown, html))


def make_demo_repo(target: Path, change: str, example: Path = EXAMPLES) -> str:
    """A throwaway repository: the example shop on `main` (or the change's own base), the change on
    `agent/<change>`, as the zoo builds it. The base ref to verify against."""
    manifest = load_manifest(EXAMPLES / "changes" / "zoo.yml")
    entry = next((e for e in manifest.changes if e.name == change), None)
    if entry is None:
        names = ", ".join(sorted(e.name for e in manifest.changes))
        raise LoopgateError(f"unknown change {change!r}; choose one of: {names}")
    problem = build_repo(example, target, Manifest(changes=[entry]), EXAMPLES / "changes")[change]
    if problem is not None:
        raise LoopgateError(problem)
    return entry.base_ref


@app.command()
def demo(
    change: Annotated[str, typer.Option(help="Which example change the agent pushes.")] = "refactor-orders",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the Evidence JSON here.")] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown")] = None,
    html: Annotated[Path | None, typer.Option("--html")] = None,
) -> None:
    """Verify an example agent change to the example shop, end to end, on this machine."""
    examples_run_on_this_python()
    workdir = Path(tempfile.mkdtemp(prefix="loopgate-demo-"))
    try:
        repo = workdir / "shop"
        try:
            base = make_demo_repo(repo, change)
        except LoopgateError as exc:
            raise _fail(str(exc), 2) from None
        console.print(f"demo repository {repo}: agent/{change} → {base}", markup=False)
        request = VerifyRequest(repo=repo, base_ref=base, head_ref=f"agent/{change}", trigger="demo")
        code = _run_verify(request, json_out, markdown, html)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    raise typer.Exit(code)
