"""The polyglot example end to end: three frameworks, no health endpoint, their own environment, one
starting after a neighbour; real processes, confined as usual. And what its environment must never
hold: loopgate's settings and secrets, asked for by `pass_env` or not."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from bot.config.loader import read_config
from tests.conftest import ROOT, processes_under, run_cli
from tests.gitrepo import GitRepo

POLYGLOT = ROOT / "examples" / "polyglot"
CANARIES = {
    "LOOPGATE_WEBHOOK_SECRET": "canary-webhook-7f3a",
    "LOOPGATE_GITHUB_PRIVATE_KEY": "canary-key-91c2",
    "GITHUB_TOKEN": "canary-token-55d0",
    "INPUT_GITHUB-TOKEN": "canary-input-0b7e",
}
LEAK = """\
import os, sys
sys.stdout.write("ENVIRON<<\\n" + open("/proc/self/environ").read().replace("\\0", "\\n") + ">>ENVIRON\\n")
sys.stdout.flush()
sys.exit(1)
"""


@pytest.fixture(scope="module")
def polyglot(tmp_path_factory: pytest.TempPathFactory) -> GitRepo:
    path = tmp_path_factory.mktemp("polyglot") / "polyglot"
    shutil.copytree(POLYGLOT, path, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    repo = GitRepo.init(path)
    greeter = (path / "greeter" / "greeter.py").read_text()
    old = "    return f\"{os.environ['GREETING']}, {name}!\"\n"
    new = '    salutation = os.environ["GREETING"]\n    return f"{salutation}, {name}!"\n'
    refactored = greeter.replace(old, new)
    assert refactored != greeter, "the refactor no longer applies to greeter.py"
    repo.branch("agent/refactor", {"greeter/greeter.py": refactored})
    repo.branch("agent/leak", {"greeter/greeter.py": LEAK})
    return repo


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Its own state dir: what these runs leave running (nothing, asserted) is theirs alone."""
    return tmp_path_factory.mktemp("polyglot-state")


def verify(
    repo: GitRepo, head: str, out: Path, state: Path, **env: str
) -> tuple[int, dict[str, object], str]:
    done = run_cli(
        "verify",
        "--repo",
        str(repo.path),
        "--head",
        head,
        "--json",
        str(out),
        env={"LOOPGATE_STATE_DIR": str(state), **env},
    )
    evidence = json.loads(out.read_text())
    tails = "".join(f"\n--- {s['name']} ---\n{s.get('log_tail') or ''}" for s in evidence.get("services", []))
    return done.returncode, evidence, done.stdout + done.stderr + tails  # every log, should it fail


def test_its_config_needs_no_absolute_path_and_no_inlined_variable() -> None:
    config = read_config((POLYGLOT / ".loopgate.yml").read_text()).config
    commands = [s.local_spec.run for s in config.services.values()] + [
        s.run or "" for s in config.verify.suites
    ]
    assert not any("$" in command or command.startswith("/") for command in commands)
    assert all(s.local_spec.health_check.tcp for s in config.services.values())
    assert config.services["front"].local_spec.after == ["names"]


def test_a_change_verifies_end_to_end(state: Path, polyglot: GitRepo, tmp_path: Path) -> None:
    out = tmp_path / "pass.json"
    code, evidence, output = verify(polyglot, "agent/refactor", out, state, OTEL_SERVICE_NAME="pg")
    assert code == 0, output
    assert evidence["verdict"] == "pass" and evidence["confined"] is True
    services = {s["name"]: s for s in evidence["services"]}  # type: ignore[attr-defined]
    assert services["greeter"]["forked"] and services["greeter"]["tagged_requests"] > 0
    assert not services["front"]["forked"] and not services["names"]["forked"]
    suites = evidence["suites"]
    assert [(s["name"], s["status"], s["counts"]["passed"]) for s in suites] == [("e2e", "passed", 2)]  # type: ignore[attr-defined]
    assert processes_under(state) == []


def test_no_secret_of_loopgates_environment_reaches_a_service(
    state: Path, polyglot: GitRepo, tmp_path: Path
) -> None:
    """The fork prints its own /proc/self/environ and exits; the evidence carries its log."""
    code, evidence, output = verify(
        polyglot, "agent/leak", tmp_path / "leak.json", state, OTEL_SERVICE_NAME="polyglot-test", **CANARIES
    )
    assert code == 1, output
    greeter = next(s for s in evidence["services"] if s["name"] == "greeter")  # type: ignore[attr-defined]
    match = re.search(r"ENVIRON<<\n(.*)>>ENVIRON", greeter["log_tail"], re.DOTALL)
    assert match is not None, greeter["log_tail"]
    seen = dict(line.partition("=")[::2] for line in match.group(1).splitlines() if "=" in line)
    for name, canary in CANARIES.items():
        assert name not in seen and canary not in match.group(1) and canary not in json.dumps(evidence)
    assert not [name for name in seen if name.startswith("LOOPGATE_") and not name.endswith("_URL")
                and name != "LOOPGATE_SERVICE"]  # fmt: skip
    assert "LOOPGATE_STATE_DIR" not in seen
    assert seen["OTEL_SERVICE_NAME"] == "polyglot-test"  # pass_env: ["OTEL_*"]
    assert seen["GREETING"] == "Hello" and seen["PORT"].isdigit()  # env:, {port} filled in
    assert seen["LOOPGATE_SERVICE"] == "greeter" and seen["LOOPGATE_FRONT_URL"].startswith(
        "http://127.0.0.1:"
    )
    assert seen["PATH"] == os.environ["PATH"]  # the invoking PATH, nothing of loopgate's put first
    assert processes_under(state) == []


def test_a_pass_env_pattern_reaching_for_loopgates_settings_is_refused(
    state: Path, polyglot: GitRepo, tmp_path: Path
) -> None:
    hostile = tmp_path / "hostile.yml"
    text = (POLYGLOT / ".loopgate.yml").read_text()
    hostile.write_text(
        text.replace(
            'pass_env: ["OTEL_*"]\n      health', 'pass_env: ["OTEL_*", "LOOPGATE_*"]\n      health', 1
        )
    )
    out = tmp_path / "e.json"
    head = ("--head", "agent/refactor")
    done = run_cli(
        "verify", "--repo", str(polyglot.path), *head, "--config", str(hostile), "--json", str(out)
    )
    evidence = json.loads(out.read_text())
    assert done.returncode == 2 and evidence["verdict"] == "error" and evidence["error_kind"] == "config"
    reason = f"{hostile}:12 services.greeter.local.pass_env: 'LOOPGATE_*' could pass LOOPGATE_*"
    assert evidence["reasons"][0].startswith(reason), evidence["reasons"]
    check = run_cli("config", "check", "--config", str(hostile))
    assert check.returncode == 2 and "'LOOPGATE_*' could pass LOOPGATE_*" in check.stderr
