"""The image, checked without a container engine: parsed (dockerfile-parse), linted (hadolint), and its
final stage read for what a deployment relies on."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser

from tests.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"
PINNED = re.compile(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?")


def instructions() -> list[dict[str, Any]]:
    parser = DockerfileParser(path=str(DOCKERFILE))
    found: list[dict[str, Any]] = parser.structure
    return found


def final_stage() -> list[dict[str, Any]]:
    found = instructions()
    last_from = max(i for i, item in enumerate(found) if item["instruction"] == "FROM")
    return found[last_from:]


def values(stage: list[dict[str, Any]], instruction: str) -> list[str]:
    return [str(item["value"]) for item in stage if item["instruction"] == instruction]


def test_hadolint_is_clean() -> None:
    done = subprocess.run([str(HADOLINT), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_would_catch_a_bad_image(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nUSER root\n")
    done = subprocess.run([str(HADOLINT), str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "DL3007" in done.stdout


def test_multi_stage_on_one_exactly_pinned_slim_python() -> None:
    bases = [value.split()[0] for value in values(instructions(), "FROM")]
    assert len(bases) >= 2
    for base in bases:
        assert PINNED.fullmatch(base), base
    assert len(set(bases)) == 1, "the virtualenv is built for the Python it runs on"


def test_final_stage_runs_as_an_unprivileged_numeric_user() -> None:
    users = values(final_stage(), "USER")
    assert users, "the final stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) > 0


def test_final_stage_serves_and_checks_its_health_without_curl() -> None:
    stage = final_stage()
    (command,) = values(stage, "CMD")
    assert json.loads(command)[:2] == ["loopgate", "serve"]
    (health,) = values(stage, "HEALTHCHECK")
    assert "/healthz" in health and "python" in health
    assert "curl" not in health and "wget" not in health
    port = json.loads(command)[json.loads(command).index("--port") + 1]
    assert f":{port}/healthz" in health and "0.0.0.0" in json.loads(command)


def test_final_stage_installs_only_runtime_tools() -> None:
    runs = " ".join(values(final_stage(), "RUN"))
    installs = re.findall(r"apt-get install ([^&;]+)", runs)
    packages = {word for line in installs for word in line.split() if not word.startswith("-")}
    assert {"bubblewrap", "git", "postgresql-client"} <= packages
    assert not packages & {"build-essential", "gcc", "python3-dev", "curl"}
    assert "pip install" not in runs, "Python packages are built in the build stage"
    copies = values(final_stage(), "COPY")
    assert any(copy.startswith("--from=build /opt/loopgate") for copy in copies)


def docker_ignores(path: str) -> bool:
    """Docker's rule (moby/patternmatcher): the last pattern matching the path or one of its parents
    decides; `*` stays within a segment, `**` crosses them, `!` re-includes."""
    ignored = False
    parts = path.split("/")
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!").strip("/")
        pieces = re.split(r"(\*\*/|\*\*|\*|\?)", pattern)
        wild = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
        regex = re.compile("".join(wild.get(piece, re.escape(piece)) for piece in pieces))
        if any(regex.fullmatch("/".join(parts[:depth])) for depth in range(1, len(parts) + 1)):
            ignored = not negate
    return ignored


@pytest.mark.parametrize(
    "path",
    [".git/config", ".venv/bin/python", "tests/test_action.py", ".env", "x.db", "bot/__pycache__/a.pyc"],
)
def test_dockerignore_keeps_the_context_to_the_sources(path: str) -> None:
    assert docker_ignores(path)


def test_dockerignore_keeps_what_the_image_copies() -> None:
    sources = [
        source
        for copy in values(instructions(), "COPY")
        if not copy.startswith("--from")
        for source in copy.split()[:-1]
    ]
    assert sources
    for source in sources:
        sample = f"{source}/__init__.py" if (ROOT / source).is_dir() else source
        assert not docker_ignores(sample), source
