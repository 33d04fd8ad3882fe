"""The `loopgate` command. Errors become exit codes here, at the edge, and nowhere else."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.status import Status
from rich.table import Table

from bot.config import AppSettings, LoopgateError, RuntimeSettings
from bot.evidence import Evidence, Verdict, exit_code
from bot.pipeline import Pipeline, VerifyRequest, make_plan
from bot.report import UNCONFINED_NOTICE, render_comment, render_html, render_json
from bot.runtimes.local import LocalRuntime
from bot.runtimes.local.allowlist import env_var_name
from bot.runtimes.protocol import Source
from bot.zoo import ZooResult, ZooRow, run_zoo

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Prove agent changes in sandboxes.")
env_app = typer.Typer(no_args_is_help=True, help="The shared baseline: start, stop, inspect.")
sandbox_app = typer.Typer(no_args_is_help=True, help="Sandboxes for the inner loop: forks you can call.")
app.add_typer(env_app, name="env")
app.add_typer(sandbox_app, name="sandbox")

console = Console(highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "shop"

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
    """Rich spinner on a terminal, one plain line per stage otherwise (CI logs, agents)."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.status: Status | None = None

    def __call__(self, name: str, event: str) -> None:
        if event == "started":
            self.started[name] = time.monotonic()
            if console.is_terminal:
                self.status = console.status(f"{name} …")
                self.status.start()
            return
        if self.status is not None:
            self.status.stop()
            self.status = None
        elapsed = int((time.monotonic() - self.started.pop(name, time.monotonic())) * 1000)
        mark = {"ok": "✓", "skipped": "-", "failed": "✗"}.get(event, "!")
        console.print(f"{mark} {name:<9} {event:<9} {elapsed:>6} ms", markup=False)


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
            f"suite {r.name} ({r.source}): {r.status}, {counts}",
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


def _run_verify(
    request: VerifyRequest, json_out: Path | None, markdown: Path | None, html: Path | None
) -> int:
    # `--keep` leaves what it starts running after this process: it must not die with it.
    runtime = LocalRuntime(_settings(), persistent=request.keep)
    _print_unconfined(runtime.confined)
    pipeline = Pipeline(runtime, listener=StageProgress())
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


def _baggage(key: str) -> str:
    return f"loopgate-sandbox={key}"


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


def _zoo_markdown(result: ZooResult) -> str:
    counts = result.counts()
    lines = [
        "# Defect zoo",
        "",
        "Each example change is checked twice: by the changed services' own unit tests, which mock their",
        "neighbours (what an agent's CI runs), and by loopgate against the real services.",
        "",
        "| change | kind | expected | mocks-only CI | loopgate | finding that decided it |",
        "|---|---|---|---|---|---|",
    ]
    for row in result.rows:
        finding = row.finding.replace("|", "\\|")
        lines.append(
            f"| {row.name} | {row.kind} | {row.expected} | {row.mocks_only} | {row.verdict} | {finding} |"
        )
    lines += [
        "",
        f"Defects caught by loopgate: {counts['defects_caught']}/{counts['defects_total']}; by mocks-only CI:"
        f" {counts['mocks_only_caught']}/{counts['defects_total']}. Good changes passed:"
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


app_app = typer.Typer(no_args_is_help=True, help="The GitHub App: its manifest.")
app.add_typer(app_app, name="app")
MANIFEST_PACKAGE = "bot.manifest"
"""The top-level `app.yml`, shipped in the package (pyproject.toml maps it) so a wheel has it too."""


def app_manifest_data(url: str = "") -> dict[str, Any]:
    """The App manifest, its webhook and redirect URLs pointed at `url` when given."""
    import yaml

    text = resources.files(MANIFEST_PACKAGE).joinpath("app.yml").read_text(encoding="utf-8")
    manifest: dict[str, Any] = yaml.safe_load(text)
    if url:
        base = url.rstrip("/")
        manifest["hook_attributes"]["url"] = f"{base}/webhooks/github"
        manifest["redirect_url"] = f"{base}/"
    return manifest


@app_app.command("manifest")
def app_manifest(
    url: Annotated[str, typer.Option(help="Where this loopgate server is reachable from GitHub.")] = "",
) -> None:
    """Print the App manifest (JSON) for GitHub's manifest flow."""
    console.print(json.dumps(app_manifest_data(url), indent=2), markup=False)


def _app_settings() -> AppSettings:
    try:
        return AppSettings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "LOOPGATE_" + str(first["loc"][0]).upper()
        why = "is required" if first["type"] == "missing" else first["msg"]
        raise _fail(f"{name} {why}", 2) from None


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
) -> None:
    """Run the GitHub App: webhook server plus LOOPGATE_WORKERS worker loops."""
    import uvicorn

    from bot.github.client import GitHubApp
    from bot.pipeline import new_run_id
    from bot.server import Metrics, create_app
    from bot.server.webhooks import replay_unprocessed
    from bot.store import Store
    from bot.worker import Mirrors, RunEnvironment, WorkerPool, recover

    settings = _app_settings()
    try:
        private_key = settings.private_key()
    except (ValueError, OSError) as exc:
        raise _fail(str(exc), 2) from None
    try:
        store = Store.open(settings.database(), state_dir=settings.state_dir)
    except LoopgateError as exc:
        raise _fail(str(exc), 3) from None
    metrics = Metrics()
    github = GitHubApp(
        settings.github_app_id, private_key, settings.github_api_url, throttle=settings.github_throttle
    )
    runtime = LocalRuntime(settings)

    def observe(evidence: Evidence) -> None:
        for stage in evidence.stages:
            metrics.stage_seconds.labels(stage.name).observe(stage.duration_ms / 1000)

    env = RunEnvironment(
        settings,
        store,
        github,
        runtime,
        Mirrors(settings.git_cache_dir or settings.state_dir / "mirrors"),
        observe,
    )
    for run_id in recover(env):
        errors.print(f"loopgate: concluded run {run_id} left in flight by a previous process", markup=False)
    replay_unprocessed(store, new_run_id)
    pool = WorkerPool(env, settings.workers)
    pool.start()
    server = create_app(
        settings, store, github, workers_alive=pool.alive, new_run_id=new_run_id, metrics=metrics
    )
    try:
        # uvicorn re-raises SIGTERM after its graceful shutdown; as an interrupt it lets this block
        # stop the workers and the baselines this process started.
        with _terminate_as_interrupt(), contextlib.suppress(KeyboardInterrupt):
            uvicorn.run(server, host=host, port=port, log_level="warning")
    finally:
        pool.stop()
        for record, _ in runtime.baselines():
            if record.owner is not None and record.owner.pid == os.getpid():
                runtime.down(record.env_id)
        store.close()


@app.command()
def gc() -> None:
    """Remove sandboxes and baselines whose owning process is gone."""
    removed = LocalRuntime(_settings()).gc()
    for line in removed:
        console.print(f"removed {line}", markup=False)
    console.print(f"{len(removed)} removed", markup=False)


# -- env --------------------------------------------------------------------------------------------


@env_app.command("up")
def env_up(repo: RepoOption = Path("."), base: str = "main", config: ConfigOption = None) -> None:
    """Start (or find) the baseline for BASE and leave it running for later runs to share."""
    try:
        plan = make_plan(repo, base, base, config)
        with _terminate_as_interrupt():
            baseline = LocalRuntime(_settings(), persistent=True).up_baseline(
                Source(repo, plan.base_sha), plan.config
            )
    except LoopgateError as exc:
        raise _fail(str(exc), 2 if exc.kind == "config" else 3) from None
    except KeyboardInterrupt:
        raise _fail("interrupted; the baseline was stopped", 130) from None
    state = "already running" if baseline.reused else "started"
    console.print(f"baseline {baseline.env_id} {state} at {plan.base_sha[:12]}", markup=False)
    for name, url in sorted(baseline.entry_urls.items()):
        console.print(f"  {env_var_name(name)}={url}", markup=False)


@env_app.command("down")
def env_down(
    repo: RepoOption = Path("."),
    base: str = "main",
    all_envs: Annotated[bool, typer.Option("--all", help="Stop every baseline.")] = False,
) -> None:
    """Stop a baseline and every sandbox on it."""
    runtime = LocalRuntime(_settings())
    if all_envs:
        # Those with an unreadable record too: `down` stops what their journal says they ran.
        targets = [record.env_id for record, _ in runtime.baselines()] + sorted(runtime.env_problems())
    else:
        try:
            plan_base = make_plan(repo, base, base).base_sha
        except LoopgateError as exc:
            raise _fail(str(exc), 2) from None
        found = runtime.find_baseline(repo, plan_base)
        targets = [found.env_id] if found else []
    for env_id in targets:
        runtime.down(env_id)
        console.print(f"stopped {env_id}", markup=False)
    if not targets:
        console.print("no baseline running", markup=False)


@env_app.command("status")
def env_status() -> None:
    """List baselines, their health and sandboxes."""
    runtime = LocalRuntime(_settings())
    baselines = runtime.baselines()
    if not baselines:
        console.print("no baseline running", markup=False)
    if any(record.databases for record, _ in baselines):
        console.print(runtime.postgres_site().note(), markup=False)
    for env_id, why in sorted(runtime.env_problems().items()):
        console.print(f"{env_id} broken: record {why} (`loopgate gc` stops what it ran)", markup=False)
    for record, _healthy in baselines:
        owner = "kept (env up)" if record.owner is None else f"owned by pid {record.owner.pid}"
        health = runtime.env_health(record)
        console.print(
            f"{record.env_id} {health} {owner} repo={record.repo} base={record.base_sha[:12]}", markup=False
        )
        for name, port in sorted(record.listeners.items()):
            console.print(f"  {name}: http://127.0.0.1:{port}", markup=False)
        for sandbox in runtime.registry.sandboxes(record.env_id):
            console.print(
                f"  sandbox {sandbox.routing_key}: forks {', '.join(sandbox.forks) or '-'}", markup=False
            )


# -- sandbox ----------------------------------------------------------------------------------------


@sandbox_app.command("create")
def sandbox_create(
    repo: RepoOption = Path("."),
    base: str = "main",
    head: str = "HEAD",
    config: ConfigOption = None,
) -> None:
    """Fork what HEAD changed and route it; print the routing key and entry URLs."""
    runtime = LocalRuntime(_settings(), persistent=True)
    _print_unconfined(runtime.confined)
    pipeline = Pipeline(runtime, listener=StageProgress())
    request = VerifyRequest(repo=repo, base_ref=base, head_ref=head, config_file=config, sandbox_only=True)
    with _terminate_as_interrupt():
        evidence = pipeline.verify(request)
    if pipeline.kept is None:
        _print_summary(evidence)
        if evidence.verdict is Verdict.PASS:
            raise _fail("no service is affected by the change: there is nothing to fork", 0)
        raise typer.Exit(exit_code(evidence))
    key = pipeline.kept.sandbox.routing_key
    console.print(f"routing key: {key}", markup=False)
    console.print(f"LOOPGATE_ROUTING_KEY={key}", markup=False)
    console.print(f"LOOPGATE_BAGGAGE={_baggage(key)}", markup=False)
    for name, url in sorted(pipeline.kept.sandbox.baseline.entry_urls.items()):
        console.print(f"{env_var_name(name)}={url}", markup=False)
    console.print(f"forks: {', '.join(s.name for s in evidence.forks)}", markup=False)
    console.print(f"delete with: loopgate sandbox delete {key}", markup=False)


@sandbox_app.command("delete")
def sandbox_delete(key: str) -> None:
    """Tear a sandbox down: routes, forks, files."""
    runtime = LocalRuntime(_settings())
    sandbox = runtime.load_sandbox(key)
    if sandbox is None:
        raise _fail(f"no sandbox {key!r} (see `loopgate sandbox list`)", 2)
    runtime.teardown(sandbox)
    console.print(f"deleted {key}", markup=False)


@sandbox_app.command("list")
def sandbox_list() -> None:
    """Sandboxes on this machine."""
    records = LocalRuntime(_settings()).sandboxes()
    if not records:
        console.print("no sandboxes", markup=False)
    for record in records:
        owner = "kept" if record.owner is None else f"pid {record.owner.pid}"
        forks = ", ".join(f"{n}@{p.port}" for n, p in record.forks.items()) or "-"
        console.print(
            f"{record.routing_key} env={record.env_id} head={record.head_sha[:12]} {owner} forks: {forks}",
            markup=False,
        )


def main() -> None:  # pragma: no cover - console entry point
    try:
        app()
    except LoopgateError as exc:
        errors.print(f"loopgate: {exc}", markup=False)
        sys.exit(2 if exc.kind == "config" else 3)


if __name__ == "__main__":  # pragma: no cover
    main()
