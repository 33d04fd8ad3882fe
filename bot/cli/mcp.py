"""`loopgate mcp`: the agent's loop as an MCP server on stdio (the official `mcp` SDK).

Tools take typed inputs and return structured results; a failure is a tool error whose text is the
one-line cause (a config error names file:line), never a crash of the server. Long steps report
progress stage by stage. Stdout is the protocol alone: the wire is a private duplicate of fd 1, and fd 1
itself (what libraries, `print` and every child process write to) points at stderr while serving; fd 0
is /dev/null for the same reason.

What the server starts ends with it, or with `sandbox_delete`: a verify's baseline and forks die with
the server; only sandboxes the agent created (and the baseline they run on) stay, until
`sandbox_delete`, `loopgate sandbox delete` or `loopgate env down`.
"""

import contextlib
import io
import json
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
from pydantic import Field

from bot.cli import sandbox as sandboxes
from bot.cli.output import _settings
from bot.cli.root import app
from bot.config import LoopgateError
from bot.evidence import Evidence, Verdict
from bot.pipeline import Pipeline, StageListener, VerifyRequest
from bot.runtimes.choice import Runtimes
from bot.runtimes.local import LocalRuntime
from bot.runtimes.protocol import SuiteRequest
from bot.verify import blame, judge_suite

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

_T = TypeVar("_T")

INSTRUCTIONS = """\
loopgate proves a change against the real neighbouring services before review. The loop:
sandbox_create from your working tree (worktree=<repo path>) -> call the system with the routing key
(header `baggage: loopgate-sandbox=<key>`, entry URLs in `env`) -> run_suite -> read failures ->
fix the files -> sandbox_update (only what changed restarts; the key stays) -> run_suite again ->
verify (worktree) for the final Evidence -> sandbox_delete -> commit and push."""

Key = Annotated[str, Field(pattern=r"^[a-z0-9]{6,16}$", description="The sandbox's routing key.")]


KEEP_EVIDENCE = 500
"""Runs whose Evidence the `evidence` tool can still read; older ones are removed as new ones come."""


class ToolFailure(Exception):
    """Shown to the agent as the tool error's text."""


def _evidence_dir() -> Path:
    return _settings().state_dir / "evidence"


def _store(evidence: Evidence) -> None:
    directory = _evidence_dir()
    directory.mkdir(parents=True, exist_ok=True)
    temp = directory / f"{evidence.run_id}.json.tmp"
    temp.write_text(evidence.model_dump_json(indent=2), encoding="utf-8")
    temp.replace(directory / f"{evidence.run_id}.json")
    stored = sorted(directory.glob("*.json"), key=lambda path: path.stat().st_mtime, reverse=True)
    for old in stored[KEEP_EVIDENCE:]:
        old.unlink(missing_ok=True)


def _summary(evidence: Evidence) -> dict[str, Any]:
    return {
        "run_id": evidence.run_id,
        "verdict": evidence.verdict.value if evidence.verdict else None,
        "reasons": evidence.reasons,
        "forks": [s.name for s in evidence.forks],
    }


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser().absolute() if value else None


def _why_not_kept(evidence: Evidence) -> str:
    if evidence.verdict is Verdict.PASS:
        return "no service is affected by the change: there is nothing to fork"
    lines = list(evidence.reasons[:3]) or ["the sandbox could not be made"]
    for service in evidence.services:
        if service.status in ("build_failed", "start_failed") and service.log_tail:
            last = [line for line in service.log_tail.splitlines() if line.strip()][-5:]
            lines.append(f"{service.name} log: " + " | ".join(last))
    return "; ".join(lines) + f" (run {evidence.run_id}: call `evidence` for all of it)"


def build_server() -> "MCPServer[Any]":
    """The MCPServer with every tool; imported lazily so the CLI starts without the SDK's import cost."""
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server: MCPServer[Any] = MCPServer(name="loopgate", instructions=INSTRUCTIONS, log_level="WARNING")

    async def blocking(ctx: Context | None, work: Callable[[StageListener], _T]) -> _T:
        """Run `work` in a worker thread; its stages become progress notifications; a LoopgateError
        or ToolFailure becomes a tool error with its one line, anything else one line naming the bug."""
        count = 0

        def listener(stage: str, event: str) -> None:
            nonlocal count
            count += 1
            if ctx is not None:
                # A client gone mid-call must not fail the step itself.
                with contextlib.suppress(Exception):
                    anyio.from_thread.run(ctx.report_progress, count, None, f"{stage}: {event}")

        try:
            return await anyio.to_thread.run_sync(lambda: work(listener))
        except (LoopgateError, ToolFailure) as exc:
            raise ToolError(str(exc)) from None
        except Exception as exc:
            raise ToolError(f"internal error: {type(exc).__name__}: {exc}") from None

    @server.tool(
        description="Verify a change end to end: head (a ref) or worktree (a working tree's files,"
        " uncommitted too) against base. Returns the Evidence; `evidence` reads it again by run_id."
    )
    async def verify(
        ctx: Context,
        repo: str = ".",
        base: str = "main",
        head: str | None = None,
        worktree: str | None = None,
        config: str | None = None,
    ) -> dict[str, Any]:
        def work(listener: StageListener) -> dict[str, Any]:
            top_repo, head_ref, top = sandboxes.resolve_head(Path(repo), head, _path(worktree))
            runtimes = Runtimes(_settings())
            request = VerifyRequest(
                repo=top_repo, base_ref=base, head_ref=head_ref, config_file=_path(config), trigger="mcp"
            )
            evidence = Pipeline(runtimes, listener=listener).verify(request)
            if top is not None:
                evidence.head.ref = f"worktree {top}"
            _store(evidence)
            if evidence.verdict is Verdict.ERROR:
                kind = evidence.error_kind.value if evidence.error_kind else "error"
                reason = evidence.reasons[0] if evidence.reasons else "error"
                raise ToolFailure(f"error ({kind}): {reason} (run {evidence.run_id})")
            return evidence.model_dump(mode="json")

        return await blocking(ctx, work)

    @server.tool(
        description="Fork the services a working tree (or a ref) changed beside the shared baseline"
        " and route the routing key to them. The sandbox stays until sandbox_delete."
    )
    async def sandbox_create(
        ctx: Context,
        repo: str = ".",
        base: str = "main",
        head: str | None = None,
        worktree: str | None = None,
        config: str | None = None,
    ) -> dict[str, Any]:
        def work(listener: StageListener) -> dict[str, Any]:
            created = sandboxes.create(Path(repo), base, head, _path(worktree), _path(config), listener)
            _store(created.evidence)
            if created.sandbox is None:
                raise ToolFailure(_why_not_kept(created.evidence))
            key = created.sandbox.routing_key
            return {
                "routing_key": key,
                "baggage": f"loopgate-sandbox={key}",
                "header": f"x-loopgate-sandbox: {key}",
                "env": created.env(),
                "forks": {s.name: s.reason for s in created.evidence.forks},
                "merge_sha": created.evidence.merge_sha,
                "run_id": created.evidence.run_id,
                "confined": created.evidence.confined,
            }

        return await blocking(ctx, work)

    @server.tool(
        description="Move a sandbox to the working tree (or ref) it follows, or to the one given:"
        " only services whose files changed restart; the key, routes and data copies stay."
    )
    async def sandbox_update(
        ctx: Context, key: Key, worktree: str | None = None, head: str | None = None
    ) -> dict[str, Any]:
        def work(listener: StageListener) -> dict[str, Any]:
            return sandboxes.update(key, head, _path(worktree), listener).as_dict()

        return await blocking(ctx, work)

    @server.tool(description="Delete a sandbox: its routes, forks, data copies and files.")
    async def sandbox_delete(ctx: Context, key: Key) -> dict[str, Any]:
        def work(_listener: StageListener) -> dict[str, Any]:
            sandboxes.delete(key)
            return {"deleted": key}

        return await blocking(ctx, work)

    @server.tool(description="The sandboxes on this machine, their forks and what they follow.")
    async def sandbox_list(ctx: Context) -> dict[str, Any]:
        def work(_listener: StageListener) -> dict[str, Any]:
            local = LocalRuntime(_settings())
            return {"sandboxes": [sandboxes.describe(local, r) for r in local.sandboxes()]}

        return await blocking(ctx, work)

    @server.tool(
        description="Run a configured suite (by name) or a shell command against a live sandbox;"
        " judged as verify judges suites (a gating failure is rerun on the baseline to tell a"
        " pre-existing one). A command runs in the sandbox's checkout with LOOPGATE_* set."
    )
    async def run_suite(
        ctx: Context,
        key: Key,
        suite: str | None = None,
        command: str | None = None,
        source: Literal["base", "head"] = "base",
        timeout: Annotated[float, Field(gt=0, le=3600)] = 300,
        against_baseline: bool = True,
    ) -> dict[str, Any]:
        def work(listener: StageListener) -> dict[str, Any]:
            if (suite is None) == (command is None):
                raise ToolFailure("give either suite (a configured suite's name) or command")
            local = sandboxes.runtime()
            sandbox = sandboxes.load(local, key)
            if suite is not None:
                found = [s for s in sandbox.config.verify.suites if s.name == suite]
                if not found:
                    names = ", ".join(s.name for s in sandbox.config.verify.suites) or "none"
                    raise ToolFailure(f"no suite {suite!r} in the config (configured: {names})")
                spec = found[0]
                request = SuiteRequest(spec.name, spec.run, min(spec.timeout, timeout), source)
                gating = spec.gating and source == "base"
            else:
                assert command is not None
                request, gating = SuiteRequest("command", command, timeout, "head"), True
            listener(request.name, "started")
            judged = judge_suite(request.name, request.source, gating, local.run_suite(sandbox, request))
            if against_baseline and gating and judged.status in ("failed", "errored"):
                listener(f"{request.name} on the baseline", "started")
                again = local.run_suite(sandbox, replace(request, target="baseline"))
                judged = blame(judged, judge_suite(request.name, request.source, gating, again))
            listener(request.name, judged.status)
            return judged.model_dump(mode="json")

        return await blocking(ctx, work)

    @server.tool(
        description="A run's Evidence as verify or sandbox_create stored it, or one section of it"
        " (e.g. suites, services, diff, reasons)."
    )
    async def evidence(
        ctx: Context, run_id: Annotated[str, Field(pattern=r"^[a-z0-9]{8,32}$")], section: str | None = None
    ) -> dict[str, Any]:
        def work(_listener: StageListener) -> dict[str, Any]:
            path = _evidence_dir() / f"{run_id}.json"
            try:
                data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise ToolFailure(f"no evidence for run {run_id!r} on this machine") from None
            if section is None:
                return data
            if section not in data:
                raise ToolFailure(f"no section {section!r} (sections: {', '.join(sorted(data))})")
            return {section: data[section]}

        return await blocking(ctx, work)

    @server.tool(description="Baselines running on this machine, their health, entry URLs and sandboxes.")
    async def env_status(ctx: Context) -> dict[str, Any]:
        def work(_listener: StageListener) -> dict[str, Any]:
            local = LocalRuntime(_settings())
            envs = []
            for record, _healthy in local.baselines():
                envs.append(
                    {
                        "env_id": record.env_id,
                        "health": local.env_health(record),
                        "repo": record.repo,
                        "base_sha": record.base_sha,
                        "kept": record.owner is None,
                        "entry_urls": {
                            n: f"http://127.0.0.1:{p}" for n, p in sorted(record.listeners.items())
                        },
                        "sandboxes": [s.routing_key for s in local.registry.sandboxes(record.env_id)],
                    }
                )
            return {"baselines": envs, "broken": local.env_problems()}

        return await blocking(ctx, work)

    return server


def _claim_stdio() -> tuple[io.TextIOWrapper, io.TextIOWrapper]:
    """The wire on private descriptors (not inherited by children); fd 0 from /dev/null and fd 1 to
    stderr for everything else, `sys.stdout` too."""
    wire_in, wire_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    reader = io.TextIOWrapper(os.fdopen(wire_in, "rb"), encoding="utf-8", errors="replace")
    writer = io.TextIOWrapper(os.fdopen(wire_out, "wb"), encoding="utf-8", write_through=True)
    return reader, writer


async def _serve(reader: io.TextIOWrapper, writer: io.TextIOWrapper) -> None:
    from mcp.server.stdio import stdio_server

    server = build_server()
    lowlevel = server._lowlevel_server
    async with stdio_server(stdin=anyio.wrap_file(reader), stdout=anyio.wrap_file(writer)) as (read, write):
        await lowlevel.run(read, write, lowlevel.create_initialization_options())


@app.command("mcp")
def mcp_command() -> None:
    """Serve the agent's loop over MCP on stdio: verify, sandboxes that follow a working tree, suites,
    evidence (docs/agents.md registers it in Claude Code, Cursor, VS Code, Codex)."""
    reader, writer = _claim_stdio()
    anyio.run(_serve, reader, writer)
