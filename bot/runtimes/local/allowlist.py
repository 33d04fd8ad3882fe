"""The environment handed to code from the agent's branch: an allow-list, never a copy of ours.

Services, builds and suites run code the agent wrote; nothing of loopgate's own environment (App key,
webhook secret, database URL, tokens) may reach them, so they get only what is listed here, and a HOME
of their own so that no user-level config or credential file is found either.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

PASSED_THROUGH = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM")


def env_var_name(service: str) -> str:
    """`LOOPGATE_<SERVICE>_URL`: upper-cased, non-alphanumerics become `_`."""
    return "LOOPGATE_" + "".join(c if c.isalnum() else "_" for c in service.upper()) + "_URL"


def child_env(home: Path, extra: Mapping[str, str]) -> dict[str, str]:
    # loopgate's interpreter comes first, so `python` in a run command has the packages loopgate has.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")])
    home.mkdir(parents=True, exist_ok=True)
    env = {name: os.environ[name] for name in PASSED_THROUGH if name in os.environ}
    env.update(
        PATH=path,
        HOME=str(home),
        TMPDIR=str(home),
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
    )
    env.update(extra)
    return env
