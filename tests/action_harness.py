"""`python -m action` as a runner would start it: a simulated Actions environment around a real
checkout, real webhook payloads and the GitHub contract fake."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.github_fake import GitHubFake, webhooks
from tests.gitrepo import GitRepo

REPO = "acme/shop"
RUN_ID = "4242"
COMMAND = re.compile(r"^::([a-z-]+)(?: ([^:]*))?::(.*)$")


@dataclass
class ActionResult:
    code: int
    stdout: str
    stderr: str
    outputs: dict[str, str]
    summary: str

    def commands(self) -> list[tuple[str, dict[str, str], str]]:
        """Workflow commands the runner would act on: those outside `::stop-commands::` regions."""
        found: list[tuple[str, dict[str, str], str]] = []
        stopped: str | None = None
        for line in self.stdout.splitlines():
            if stopped is not None:
                if line == f"::{stopped}::":
                    stopped = None
                continue
            match = COMMAND.match(line)
            if match is None:
                continue
            name, props, message = match.groups()
            if name == "stop-commands":
                stopped = message
                continue
            properties = dict(p.split("=", 1) for p in props.split(",")) if props else {}
            found.append((name, properties, message))
        assert stopped is None, "a stop-commands region was never closed"
        return found

    def errors(self) -> list[tuple[dict[str, str], str]]:
        return [(props, message) for name, props, message in self.commands() if name == "error"]


def parse_outputs(text: str) -> dict[str, str]:
    """`$GITHUB_OUTPUT` as the runner reads it: `name=value` lines and `name<<DELIMITER` heredocs."""
    outputs: dict[str, str] = {}
    lines = iter(text.split("\n"))
    for line in lines:
        if "<<" in line:
            name, delimiter = line.split("<<", 1)
            value: list[str] = []
            for inner in lines:
                if inner == delimiter:
                    break
                value.append(inner)
            else:
                raise AssertionError(f"output {name} never ends")
            outputs[name] = "\n".join(value)
        elif "=" in line:
            name, value_text = line.split("=", 1)
            outputs[name] = value_text
    return outputs


def checkout(origin: GitRepo, branch: str, path: Path) -> Path:
    """What actions/checkout leaves: a shallow clone of the pushed branch, `origin` pointing home."""
    subprocess.run(
        [
            "git",
            "clone",
            "-q",
            "--no-tags",
            "--depth",
            "1",
            "--branch",
            branch,
            f"file://{origin.path}",
            str(path),
        ],
        check=True,
        capture_output=True,
    )
    return path


def push_event(origin: GitRepo, branch: str, fake: GitHubFake, sha: str | None = None) -> dict[str, Any]:
    """GitHub's published push example, for `branch` moving to `sha` (its head when not given)."""
    sha = sha or origin.git("rev-parse", branch)
    payload = webhooks.adapt(
        webhooks.load_payload("push", "payload"),
        repo_full_name=REPO,
        clone_url=f"file://{origin.path}",
        default_branch="main",
        api_url=fake.url,
        ref=f"refs/heads/{branch}",
        before="0" * 40,
        after=sha,
    )
    webhooks.validate_payload("push", None, payload)
    return payload


def run_action(
    tmp: Path,
    workspace: Path,
    event: dict[str, Any] | str | None,
    inputs: dict[str, str],
    *,
    fake: GitHubFake | None = None,
    sha: str | None = None,
    ref: str = "refs/heads/main",
    timeout: float = 400,
) -> ActionResult:
    """Start `python -m action` in `workspace` with what a runner sets; `event` may be raw text, or None
    for an event file that does not exist."""
    tmp.mkdir(parents=True, exist_ok=True)
    event_path, output, summary = tmp / "event.json", tmp / "output", tmp / "summary.md"
    if event is not None:
        event_path.write_text(event if isinstance(event, str) else json.dumps(event))
    output.write_text("")
    summary.write_text("")
    runner_temp = tmp / "runner-temp"
    runner_temp.mkdir(exist_ok=True)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GITHUB_", "INPUT_", "RUNNER_"))
    }
    env.update(
        {
            "GITHUB_ACTIONS": "true",
            "GITHUB_EVENT_NAME": "push",
            "GITHUB_EVENT_PATH": str(event_path),
            "GITHUB_SHA": sha or (event.get("after", "") if isinstance(event, dict) else "") or "0" * 40,
            "GITHUB_REF": ref,
            "GITHUB_REPOSITORY": REPO,
            "GITHUB_API_URL": fake.url if fake else "http://127.0.0.1:9",
            "GITHUB_SERVER_URL": "https://github.com",
            "GITHUB_RUN_ID": RUN_ID,
            "GITHUB_WORKSPACE": str(workspace),
            "GITHUB_OUTPUT": str(output),
            "GITHUB_STEP_SUMMARY": str(summary),
            "RUNNER_TEMP": str(runner_temp),
            **{f"INPUT_{name.upper()}": value for name, value in inputs.items()},
        }
    )
    done = subprocess.run(
        [sys.executable, "-I", "-m", "action"],  # as action.yml runs it
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return ActionResult(
        done.returncode, done.stdout, done.stderr, parse_outputs(output.read_text()), summary.read_text()
    )
