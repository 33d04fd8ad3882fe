"""The environment handed to code from the agent's branch: an allow-list, never a copy of ours.

Services, builds and suites run code the agent wrote; nothing of loopgate's own environment (App key,
webhook secret, database URL, tokens) may reach them, so they get only what is listed here, and a HOME
of their own so that no user-level config or credential file is found either.

What they get, later entries winning over earlier ones:

1. the allow-list: locale, TZ, TERM, and `PATH` as loopgate was started with it (the team's
   toolchain, as in their shell; loopgate's own interpreter is not put first);
2. what the section's `pass_env` names from that environment (never `LOOPGATE_*`, `GITHUB_*`,
   `ACTIONS_*`, `INPUT_*`, `KUBECONFIG`: the loader refuses such patterns, and they are dropped here too);
3. the section's `env:`, its `${NAME}`s expanded;
4. loopgate's own values: `LOOPGATE_*` (URLs, routing key, state, JUnit path), `HOME`, `TMPDIR`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from bot.config import Config, environ

PASSED_THROUGH = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM")


class Section(Protocol):
    """A service's `local:` section or a suite: both may ask for variables."""

    @property
    def env(self) -> dict[str, str]: ...

    @property
    def pass_env(self) -> list[str]: ...


def env_var_name(service: str) -> str:
    """`LOOPGATE_<SERVICE>_URL`: upper-cased, non-alphanumerics become `_`."""
    return environ.url_var(service)


def child_env(home: Path, extra: Mapping[str, str], section: Section | None = None) -> dict[str, str]:
    """The environment of a build, service or suite: `extra` is what loopgate gives it."""
    home.mkdir(parents=True, exist_ok=True)
    env = {name: os.environ[name] for name in PASSED_THROUGH if name in os.environ}
    env.update(
        PATH=os.environ.get("PATH", "/usr/bin:/bin"),
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
    )
    own = {"HOME": str(home), "TMPDIR": str(home), **extra}
    if section is not None:
        env.update(environ.passed(section.pass_env, os.environ))
        values = {**env, **own}
        env.update({name: environ.expand(value, values) for name, value in section.env.items()})
    env.update(own)
    # Whatever `extra` gives wins; nothing else of loopgate's own settings reaches the child.
    return {k: v for k, v in env.items() if k in own or not k.startswith(environ.OWN_PREFIX)}


def with_port(env: Mapping[str, str], names: Sequence[str], port: int) -> dict[str, str]:
    """`{port}` in the `env:` values `names` replaced by the port the service starts on (which may
    change between attempts, so it is not known when the environment is made)."""
    return {k: v.replace("{port}", str(port)) if k in names else v for k, v in env.items()}


def suite_section(config: Config, name: str) -> Section | None:
    """A suite's `env`/`pass_env` always come from the base commit's config: a suite only the head
    declares gets neither (its `pass_env` would let a branch read the invoking environment)."""
    return next((suite for suite in config.verify.suites if suite.name == name), None)
