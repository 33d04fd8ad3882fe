"""The Action's inputs, read from `INPUT_<NAME>` variables as GitHub hands them to Docker and JavaScript
actions (`action.yml` maps them explicitly for the composite), so `python -m action` runs and is tested
without a runner. Every value is checked here; a bad one is an `InputError` and exit 2.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from bot.config import CONFIG_FILE
from bot.evidence import Verdict

Choice = TypeVar("Choice", bound=StrEnum)


class InputError(Exception):
    """The workflow gave the Action something it cannot use; the message says which input and why."""


class FailOn(StrEnum):
    """Which verdicts fail the step (the check run and the PR gate are the same whatever is chosen)."""

    FAIL = "fail"
    """Any verdict but pass."""
    ERROR = "error"
    """Only fail and error: an inconclusive run passes the step."""
    NEVER = "never"

    def fails(self, verdict: Verdict | None) -> bool:
        if verdict is None or self is FailOn.NEVER:
            return False
        if self is FailOn.ERROR:
            return verdict in (Verdict.FAIL, Verdict.ERROR)
        return verdict is not Verdict.PASS


class RuntimeName(StrEnum):
    LOCAL = "local"
    KUBERNETES = "kubernetes"


@dataclass(frozen=True)
class Inputs:
    config: str = CONFIG_FILE
    """Path of the config in the repository, read at the trusted base commit, never from the checkout."""
    base: str | None = None
    """None: the repository's default branch."""
    runtime: RuntimeName = RuntimeName.LOCAL
    kubeconfig: str | None = None
    github_token: str | None = None
    open_pr: bool | None = None
    """None: `agents.open_pr` of the config decides."""
    fail_on: FailOn = FailOn.FAIL


def _get(env: Mapping[str, str], name: str) -> str:
    """GitHub's own naming: `INPUT_` + the name upper-cased, dashes kept (`INPUT_FAIL-ON`)."""
    return env.get(f"INPUT_{name.upper()}", "").strip()


def _choice(env: Mapping[str, str], name: str, kind: type[Choice], default: Choice) -> Choice:
    raw = _get(env, name)
    if not raw:
        return default
    try:
        return kind(raw.lower())
    except ValueError:
        allowed = " | ".join(member.value for member in kind)
        raise InputError(f"input {name}: {raw!r} is not one of {allowed}") from None


def _boolean(env: Mapping[str, str], name: str) -> bool | None:
    raw = _get(env, name).lower()
    if not raw:
        return None
    if raw in ("true", "false"):
        return raw == "true"
    raise InputError(f"input {name}: {_get(env, name)!r} is not true or false (or empty for the config's)")


def _branch(env: Mapping[str, str], name: str) -> str | None:
    """A branch name git accepts, so it cannot be read as an option or a revision expression."""
    raw = _get(env, name)
    if not raw:
        return None
    raw = raw.removeprefix("refs/heads/")
    if not valid_branch(raw):
        raise InputError(f"input {name}: {raw!r} is not a valid branch name")
    return raw


def valid_branch(name: str) -> bool:
    """Does git accept `name` as a branch? Then it is no option (`-x`) and no revision expression."""
    if not name or name.startswith("-") or len(name) > 255:
        return False
    done = subprocess.run(["git", "check-ref-format", f"refs/heads/{name}"], capture_output=True, check=False)
    return done.returncode == 0


def _config_path(env: Mapping[str, str]) -> str:
    raw = _get(env, "config") or CONFIG_FILE
    parts = raw.split("/")
    if raw.startswith("/") or ".." in parts or "\\" in raw or "\0" in raw or raw.startswith("-"):
        raise InputError(f"input config: {raw!r} must be a path inside the repository, relative to its root")
    return "/".join(part for part in parts if part not in ("", "."))


def read_inputs(env: Mapping[str, str]) -> Inputs:
    return Inputs(
        config=_config_path(env),
        base=_branch(env, "base"),
        runtime=_choice(env, "runtime", RuntimeName, RuntimeName.LOCAL),
        kubeconfig=_get(env, "kubeconfig") or None,
        github_token=_get(env, "github-token") or None,
        open_pr=_boolean(env, "open-pr"),
        fail_on=_choice(env, "fail-on", FailOn, FailOn.FAIL),
    )
