"""The Actions environment: which repository, commit and branch the workflow runs for, and where.

GitHub describes the triggering event twice, in `GITHUB_*` variables and in the event payload at
`GITHUB_EVENT_PATH`; the payload is preferred where it is more exact (a push's `after`, a pull request's
head). Everything here is checked before any of it reaches git or GitHub.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from action.inputs import InputError, valid_branch

SHA = re.compile(r"[0-9a-f]{40}")
REPOSITORY = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
MAX_EVENT_BYTES = 25 * 1024 * 1024
"""GitHub caps webhook payloads at 25 MB; a bigger event file is not one GitHub wrote."""


@dataclass(frozen=True)
class ActionsContext:
    repository: str
    event_name: str
    head_sha: str
    branch: str | None
    """None when the event is not about a branch (a tag push): nothing to gate."""
    default_branch: str | None
    """From the payload when it says; otherwise GitHub is asked."""
    deleted: bool
    api_url: str
    server_url: str
    run_id: str
    workspace: Path

    @property
    def run_url(self) -> str:
        """The workflow run's page: the check run's details link and the evidence's html link."""
        return f"{self.server_url}/{self.repository}/actions/runs/{self.run_id}"


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise InputError(f"{name} is not set: run the Action in a GitHub Actions job")
    return value


def _event(env: Mapping[str, str]) -> dict[str, Any]:
    path = Path(_required(env, "GITHUB_EVENT_PATH"))
    try:
        if path.stat().st_size > MAX_EVENT_BYTES:
            raise InputError(f"the event file {path} is larger than GitHub's 25 MB payload limit")
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise InputError(f"the event file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"the event file {path} is not readable JSON: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise InputError(f"the event file {path} does not hold a JSON object")
    return data


def _text(data: Mapping[str, Any], *keys: str) -> str | None:
    node: Any = data
    for key in keys:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node if isinstance(node, str) and node else None


def _branch_of(ref: str | None) -> str | None:
    return ref.removeprefix("refs/heads/") if ref and ref.startswith("refs/heads/") else None


def read_context(env: Mapping[str, str]) -> ActionsContext:
    event_name = _required(env, "GITHUB_EVENT_NAME")
    event = _event(env)
    repository = _required(env, "GITHUB_REPOSITORY")
    if not REPOSITORY.fullmatch(repository):
        raise InputError(f"GITHUB_REPOSITORY {repository!r} is not owner/name")
    if event_name == "pull_request" or event_name == "pull_request_target":
        branch = _text(event, "pull_request", "head", "ref")
        head = _text(event, "pull_request", "head", "sha")
    elif event_name == "push":
        branch = _branch_of(_text(event, "ref"))
        head = _text(event, "after")
    else:
        branch = _branch_of(env.get("GITHUB_REF"))
        head = None
    head = head or env.get("GITHUB_SHA", "")
    if not SHA.fullmatch(head):
        raise InputError(f"the {event_name} event names no commit: {head[:60]!r} is not a full SHA")
    default_branch = _text(event, "repository", "default_branch")
    for what, name in (("branch", branch), ("default branch", default_branch)):
        if name is not None and not valid_branch(name):
            raise InputError(f"the {event_name} event's {what} {name[:100]!r} is not a valid branch name")
    run_id = env.get("GITHUB_RUN_ID", "").strip()
    workspace = Path(_required(env, "GITHUB_WORKSPACE"))
    if not workspace.is_dir():
        raise InputError(f"GITHUB_WORKSPACE {workspace} is not a directory: check out the repository first")
    return ActionsContext(
        repository=repository,
        event_name=event_name,
        head_sha=head,
        branch=branch,
        default_branch=default_branch,
        deleted=event.get("deleted") is True,
        api_url=(env.get("GITHUB_API_URL") or "https://api.github.com").rstrip("/"),
        server_url=(env.get("GITHUB_SERVER_URL") or "https://github.com").rstrip("/"),
        run_id=run_id if run_id.isdigit() else "0",
        workspace=workspace,
    )
