"""`loopgate mcp` driven by the official SDK's stdio client, end to end on the example shop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from bot.config import RuntimeSettings
from bot.runtimes.local import LocalRuntime
from tests.conftest import LOOPGATE, SHOP, make_shop, processes_under
from tests.gitrepo import GitRepo

INVENTORY = "services/inventory/inventory_app.py"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, state_dir: Path) -> Iterator[GitRepo]:
    repo = make_shop(tmp_path_factory.mktemp("mcp-shop") / "shop", [])
    yield repo
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir))
    for record, _ in runtime.baselines():
        if Path(record.repo) == repo.path.resolve():
            runtime.down(record.env_id)


class Agent:
    """One MCP session; every call's progress messages are kept."""

    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self.progress: list[str] = []

    async def call(self, tool: str, **arguments: Any) -> tuple[bool, Any]:
        async def on_progress(_progress: float, _total: float | None, message: str | None) -> None:
            self.progress.append(message or "")

        result = await self.session.call_tool(tool, arguments, progress_callback=on_progress)
        if result.is_error:
            return True, " ".join(getattr(c, "text", "") for c in result.content)
        return False, result.structured_content


def _serve(capture: Path, state_dir: Path) -> StdioServerParameters:
    """`loopgate mcp` with its stdout also copied to `capture`, to check every byte of it."""
    return StdioServerParameters(
        command="sh",
        args=["-c", f'"{LOOPGATE}" mcp | tee "{capture}"'],
        env={k: v for k, v in os.environ.items() if k.startswith("LOOPGATE_") or k in ("PATH", "HOME")}
        | {"LOOPGATE_STATE_DIR": str(state_dir)},
    )


def test_the_agent_loop_over_mcp(shop: GitRepo, state_dir: Path, tmp_path: Path) -> None:
    shop.git("apply", str(SHOP / "changes" / "contract-break.patch"))  # the agent's uncommitted edit
    bad_config = tmp_path / "bad.yml"
    bad_config.write_text("version: 1\nservices:\n  web:\n    paths: []\n    nonsense: 1\n")
    capture = tmp_path / "stdout.jsonl"
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        async with stdio_client(_serve(capture, state_dir)) as (read, write), ClientSession(read, write) as s:
            await s.initialize()
            agent = Agent(s)
            repo = str(shop.path)

            failed, created = await agent.call("sandbox_create", repo=repo, worktree=repo)
            assert not failed, created
            key = created["routing_key"]
            assert list(created["forks"]) == ["inventory"]
            assert created["env"]["LOOPGATE_BAGGAGE"] == f"loopgate-sandbox={key}"
            assert {"plan: started", "fork: ok", "route: ok"} <= set(agent.progress)

            failed, suite = await agent.call("run_suite", key=key, suite="e2e")
            assert not failed and suite["status"] == "failed", suite
            names = [f["test"] for f in suite["failures"]]
            assert any("checkout_in_stock" in name for name in names), names
            assert suite["baseline_status"] == "passed" and not suite["pre_existing"]

            shop.git("checkout", "--", INVENTORY)  # the fix; the changed unit tests stay
            failed, updated = await agent.call("sandbox_update", key=key)
            assert not failed, updated
            assert updated["routing_key"] == key
            actions = {s["name"]: s["action"] for s in updated["services"]}
            assert actions == {
                "gateway": "baseline",
                "inventory": "reforked",
                "orders": "baseline",
                "payments": "baseline",
                "pricing": "baseline",
            }

            failed, suite = await agent.call("run_suite", key=key, suite="e2e")
            assert not failed and suite["status"] == "passed", suite
            failed, ran = await agent.call("run_suite", key=key, command='test -n "$LOOPGATE_ROUTING_KEY"')
            assert not failed and ran["status"] == "passed", ran

            failed, evidence = await agent.call("verify", repo=repo, worktree=repo)
            assert not failed, evidence
            assert evidence["verdict"] == "pass", evidence["reasons"]
            assert evidence["head"]["ref"] == f"worktree {shop.path}"
            assert [s["name"] for s in evidence["services"] if s["forked"]] == ["inventory"]
            failed, section = await agent.call("evidence", run_id=evidence["run_id"], section="verdict")
            assert not failed and section == {"verdict": "pass"}

            failed, listed = await agent.call("sandbox_list")
            assert [s["routing_key"] for s in listed["sandboxes"]] == [key]
            failed, status = await agent.call("env_status")
            assert not failed and any(key in env["sandboxes"] for env in status["baselines"])
            seen["envs"] = [env["env_id"] for env in status["baselines"]]

            # Hostile: errors are tool errors with their cause, and the server lives on.
            failed, text = await agent.call("sandbox_update", key="nosuchkey1")
            assert failed and "no sandbox 'nosuchkey1'" in text
            failed, text = await agent.call("run_suite", key="NOT A KEY", suite="e2e")
            assert failed and "key" in text
            failed, text = await agent.call("run_suite", key=key, suite="nope")
            assert failed and "no suite 'nope' in the config (configured: e2e)" in text
            failed, text = await agent.call("verify", repo=repo, worktree=repo, config=str(bad_config))
            assert failed and f"{bad_config}:" in text, text
            failed, text = await agent.call("verify", repo=str(tmp_path), head="HEAD")
            assert failed and "not a git repository" in text, text

            failed, deleted = await agent.call("sandbox_delete", key=key)
            assert not failed and deleted == {"deleted": key}
            failed, listed = await agent.call("sandbox_list")
            assert listed == {"sandboxes": []}
            seen["key"] = key

    anyio.run(scenario)
    # Every byte the server wrote to stdout is a JSON-RPC message.
    lines = capture.read_bytes().decode().splitlines()
    assert lines and all(json.loads(line)["jsonrpc"] == "2.0" for line in lines)
    # Nothing the server started is left but the baseline the sandbox ran on (kept, like `env up`).
    for env_id in seen["envs"]:
        assert processes_under(state_dir / "envs" / env_id / "sandboxes") == []
    servers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if (p.info["cmdline"] or [])[-2:] == [str(LOOPGATE), "mcp"]
    ]
    assert servers == []
    assert list((state_dir / "envs").glob(f"*/sandboxes/{seen['key']}")) == []
    shop.git("checkout", "--", ".")


def test_stdout_carries_only_the_protocol() -> None:
    """Whatever else the server process writes — print, a library, a child process — goes to stderr."""
    code = (
        "import os, subprocess, sys\n"
        "from bot.cli.mcp import _claim_stdio\n"
        "reader, writer = _claim_stdio()\n"
        "print('stray print')\n"
        "os.write(1, b'stray fd write\\n')\n"
        "subprocess.run(['echo', 'stray child'])\n"
        "subprocess.run(['cat'])\n"  # reads fd 0: must not eat the wire
        "writer.write(reader.readline())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input=b'{"jsonrpc": "2.0"}\n', capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == b'{"jsonrpc": "2.0"}\n'
    assert b"stray print" in done.stderr and b"stray child" in done.stderr
