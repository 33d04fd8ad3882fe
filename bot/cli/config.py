"""`loopgate config check`: validate `.loopgate.yml` without running anything, and say what a change
would fork and why (the pipeline's own plan, so the answer is the one `verify` would act on)."""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path
from typing import Annotated

import typer

from bot.cli.output import ConfigOption, RepoOption, _fail, _settings, console
from bot.cli.root import config_app
from bot.config import CONFIG_FILE, LoopgateError
from bot.config.globs import matches
from bot.config.loader import ConfigFile, read_config, read_limited
from bot.config.schema import Config, Service, Suite
from bot.pipeline.plan import Plan, check_against_tree, make_plan
from bot.runtimes.git import Git
from bot.runtimes.local.confine import Confinement

DiffOption = Annotated[
    str | None,
    typer.Option(
        "--diff", metavar="BASE..HEAD", help="Also say which services this change would fork, and why."
    ),
]


@config_app.command("check")
def check(repo: RepoOption = Path("."), config: ConfigOption = None, diff: DiffOption = None) -> None:
    """Validate the config (errors name file:line; exit 2) and print each service with its globs,
    runtime sections, health, environment and start order."""
    try:
        if diff is not None:
            base, head = _refs(diff)
            plan = make_plan(repo, base, head, config)
            source = str(config) if config is not None else f"{CONFIG_FILE} at {base} ({plan.base_sha[:12]})"
            _print_config(plan.config, source)
            for note in plan.notes:
                console.print(f"note: {note}", markup=False)
            _print_plan(plan, base, head)
            return
        path = config if config is not None else repo / CONFIG_FILE
        loaded = read_config(read_limited(path), source=str(path))
        _print_config(loaded.config, str(path))
        for line in _against_head(repo, loaded):
            console.print(line, markup=False)
    except LoopgateError as exc:
        raise _fail(str(exc), 2 if exc.kind == "config" else 3) from None


def _refs(diff: str) -> tuple[str, str]:
    base, sep, head = diff.partition("..")
    if not sep or not base or not head or head.startswith("."):
        raise _fail(f"--diff takes BASE..HEAD (two refs), not {diff!r}", 2)
    return base, head


def _against_head(repo: Path, loaded: ConfigFile) -> list[str]:
    """The checks `verify` makes against the base commit's files, here against HEAD's, when there is one."""
    git = Git(repo)
    try:
        git.check_repository()
        sha = git.resolve("HEAD")
        top = git.run("rev-parse", "--show-toplevel").stdout.strip()
    except LoopgateError:
        return ["not checked against any commit's files (no git repository with a HEAD here)"]
    if Path(top).resolve() != repo.resolve():
        # Globs and cwd are relative to the repository's root; a folder inside another repository
        # (an example, a monorepo part) would be checked against the wrong tree.
        return [f"not checked against any commit's files ({repo} is not the root of its repository, {top})"]
    notes = check_against_tree(loaded, git.tree(sha))
    return [f"every service's globs match files at HEAD ({sha[:12]})", *(f"note: {n}" for n in notes)]


def _print_config(config: Config, source: str) -> None:
    runtime = config.runtime.kind
    console.print(f"{source}: valid (version {config.version}, runtime {runtime})", markup=False)
    console.print(f"services ({len(config.services)}):", markup=False)
    for name, service in sorted(config.services.items()):
        console.print(f"  {name}", markup=False)
        for line in _service_lines(service):
            console.print(f"    {line}", markup=False)
    order = _start_order(config)
    if order:
        console.print(f"baseline start order: {order}", markup=False)
    console.print(f"suites ({len(config.verify.suites)}):", markup=False)
    for suite in config.verify.suites:
        console.print(f"  {suite.name}", markup=False)
        for line in _suite_lines(suite):
            console.print(f"    {line}", markup=False)


def _service_lines(service: Service) -> list[str]:
    lines = [f"paths: {', '.join(service.paths)}"]
    if service.local is not None:
        local = service.local
        build = f"; build `{local.build}`" if local.build else ""
        lines.append(f"local: `{local.run}` in {local.cwd}{build}")
        lines += _toolchain(local.run)
        lines.append(f"health: {local.health_check.describe()} (within {local.ready_timeout:g}s)")
        if local.after:
            lines.append(f"after: {', '.join(local.after)}")
        lines += _env_lines(local.env, local.pass_env)
    if service.kubernetes is not None:
        kube = service.kubernetes
        image = kube.image or ""
        if kube.build is not None:
            image = f"built in the cluster from {kube.build.context}"
        lines.append(f"kubernetes: {kube.workload} in namespace {kube.namespace}, image {image}")
    if service.state is not None:
        state = service.state
        what = f"sqlite {state.sqlite}"
        if state.postgres is not None:
            what = f"postgres database {state.postgres.database}"
        lines.append(f"state: {what} (each fork gets its own copy)")
    return lines


def _suite_lines(suite: Suite) -> list[str]:
    lines = [f"{'gating' if suite.gating else 'not gating'}, timeout {suite.timeout:g}s"]
    if suite.run is not None:
        lines.append(f"local: `{suite.run}`")
        lines += _toolchain(suite.run)
    if suite.kubernetes is not None:
        lines.append(f"kubernetes: {suite.kubernetes.image} {' '.join(suite.kubernetes.command)}")
    if suite.paths:
        lines.append(f"paths: {', '.join(suite.paths)}")
    return lines + _env_lines(suite.env, suite.pass_env)


def _toolchain(command: str) -> list[str]:
    """Where the command's program is found on this PATH, and whether confined code can see it: a
    toolchain under loopgate's HOME (pyenv, nvm) is on PATH but hidden when confined."""
    try:
        words = shlex.split(command)
    except ValueError:
        return []
    program = next((w for w in words if not _is_assignment(w)), "")
    if not program or "/" in program or "{" in program:
        return []  # a file of the repository, or nothing to look up
    found = shutil.which(program, path=os.environ.get("PATH", os.defpath))
    if found is None:
        return [] if program in _SHELL_WORDS else [f"toolchain: {program} is not on PATH"]
    hidden = _hidden_from_confined(Path(found))
    if hidden is not None:
        return [
            f"toolchain: {program} → {found}, under {hidden}, which confinement hides: expose it with"
            " LOOPGATE_CONFINE_EXPOSE or install it elsewhere (docs/config.md, Environment)"
        ]
    return [f"toolchain: {program} → {found}"]


_SHELL_WORDS = {"cd", "exec", "export", "set", ".", "source", "true", "false", "test", "[", "if", "env"}


def _is_assignment(word: str) -> bool:
    name, sep, _ = word.partition("=")
    return bool(sep) and name.isidentifier()


def _hidden_from_confined(path: Path) -> Path | None:
    """The hidden directory `path` (or what it links to) lies under, unless it is exposed again."""
    settings = _settings()
    if settings.confine != "on":
        return None
    confinement = Confinement.create(
        enabled=True,
        state_dir=settings.state_dir,
        hide=settings.secret_paths(),
        expose=settings.confine_expose,
    )
    for candidate in (Path(os.path.abspath(path)), path.resolve()):
        hidden = next((h for h in confinement.hidden if h == candidate or h in candidate.parents), None)
        exposed = any(e == candidate or e in candidate.parents for e in confinement.readonly)
        if hidden is not None and not exposed:
            return hidden
    return None


def _env_lines(env: dict[str, str], pass_env: list[str]) -> list[str]:
    lines = [f"env: {name}={value}" for name, value in env.items()]
    if pass_env:
        lines.append(f"pass_env: {', '.join(pass_env)}")
    return lines


def _start_order(config: Config) -> str:
    """`names, greeter; then front (after names)`: who starts at once, who waits (empty: all at once)."""
    after = {n: s.local.after for n, s in sorted(config.services.items()) if s.local is not None}
    if not any(after.values()):
        return ""
    first = [name for name, needs in after.items() if not needs]
    later = [f"{name} (after {', '.join(needs)})" for name, needs in after.items() if needs]
    return f"{', '.join(first)} at once; then {', '.join(later)}, each once those it is after are healthy"


def _print_plan(plan: Plan, base: str, head: str) -> None:
    files = len(plan.changed_files)
    console.print(
        f"change {base}..{head} ({plan.base_sha[:12]}..{plan.head_sha[:12]}): "
        f"{files} changed file{'s' if files != 1 else ''}",
        markup=False,
    )
    for name, hits in sorted(plan.affected.items()):
        globs = plan.config.services[name].paths
        reasons = [f"{path} matches {next(g for g in globs if matches(path, [g]))}" for path in hits]
        console.print(f"  would fork {name}: {'; '.join(reasons)}", markup=False)
    unchanged = sorted(set(plan.config.services) - set(plan.affected))
    if unchanged:
        console.print(f"  baseline only: {', '.join(unchanged)}", markup=False)
    if not plan.affected:
        console.print("  no service affected: verify would pass without forking anything", markup=False)
    if plan.run_head_suites:
        console.print(
            f"  head's suites would also run (it changes {CONFIG_FILE} or a suite's files)", markup=False
        )
