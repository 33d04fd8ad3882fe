"""`loopgate verify` and `loopgate demo`: one verification, of a repository or of an example change."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
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
from bot.evidence import exit_code
from bot.pipeline import Pipeline, VerifyRequest
from bot.runtimes.choice import Runtimes


def _run_verify(
    request: VerifyRequest, json_out: Path | None, markdown: Path | None, html: Path | None
) -> int:
    # `--keep` leaves what it starts running after this process: it must not die with it.
    runtimes = Runtimes(_settings(), persistent=request.keep, on_made=lambda r: _print_unconfined(r.confined))
    pipeline = Pipeline(runtimes, listener=StageProgress())
    try:
        with _terminate_as_interrupt():
            evidence = pipeline.verify(request)
    except KeyboardInterrupt:
        errors.print("loopgate: interrupted; the sandbox was torn down")
        return 130
    _print_summary(evidence)
    _write_outputs(evidence, json_out, markdown, html)
    if pipeline.kept is not None:
        sandbox = pipeline.kept.sandbox
        console.print(
            f"kept sandbox {sandbox.routing_key}: send `baggage: {_baggage(sandbox.routing_key)}` to",
            markup=False,
        )
        for name, url in sorted(sandbox.baseline.entry_urls.items()):
            console.print(f"  {name}: {url}", markup=False)
        console.print(f"delete it with: loopgate sandbox delete {sandbox.routing_key}", markup=False)
    verdict = evidence.verdict.value if evidence.verdict else "error"
    console.print(f"verdict: {verdict}", markup=False)
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


def _changes() -> list[str]:
    return sorted(p.stem for p in (EXAMPLES / "changes").glob("*.patch"))


def make_demo_repo(target: Path, change: str) -> None:
    """A throwaway repository: the example shop on `main`, the change applied on `agent/<change>`."""
    patch = EXAMPLES / "changes" / f"{change}.patch"
    if not patch.is_file():
        raise LoopgateError(f"unknown change {change!r}; choose one of: {', '.join(_changes())}")
    shutil.copytree(
        EXAMPLES,
        target,
        ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.db", "changes"),
    )

    def git(*args: str) -> None:
        subprocess.run(
            ["git", *args],
            cwd=target,
            check=True,
            capture_output=True,
            env={
                **os.environ,
                "GIT_AUTHOR_NAME": "shop team",
                "GIT_AUTHOR_EMAIL": "team@shop.example",
                "GIT_COMMITTER_NAME": "shop team",
                "GIT_COMMITTER_EMAIL": "team@shop.example",
            },
        )

    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-q", "-m", "shop: baseline")
    git("checkout", "-q", "-b", f"agent/{change}")
    git("apply", "--index", str(patch))
    git("commit", "-q", "-m", f"agent: {change}")
    git("checkout", "-q", "main")


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
            make_demo_repo(repo, change)
        except LoopgateError as exc:
            raise _fail(str(exc), 2) from None
        console.print(f"demo repository {repo}: agent/{change} → main", markup=False)
        request = VerifyRequest(repo=repo, base_ref="main", head_ref=f"agent/{change}", trigger="demo")
        code = _run_verify(request, json_out, markdown, html)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    raise typer.Exit(code)
