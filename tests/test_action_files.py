"""action.yml and the reusable workflow: valid by GitHub's published schemas, no expression in any
script, and every input reaching `python -m action` under the name it reads."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from action.inputs import read_inputs
from bot.config.schema import DEFAULT_AGENT_BRANCHES
from tests.conftest import ROOT

ACTION = ROOT / "action.yml"
WORKFLOW = ROOT / ".github" / "workflows" / "loopgate.yml"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def check_schema(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", schema, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("schema", "path"), [("vendor.github-actions", ACTION), ("vendor.github-workflows", WORKFLOW)]
)
def test_files_pass_githubs_schemas(schema: str, path: Path) -> None:
    done = check_schema(schema, path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_catches_a_broken_action(tmp_path: Path) -> None:
    """The check above can fail: a composite `run` step without `shell` is refused."""
    data = load(ACTION)
    del data["runs"]["steps"][-1]["shell"]
    broken = tmp_path / "action.yml"
    broken.write_text(yaml.safe_dump(data))
    assert check_schema("vendor.github-actions", broken).returncode != 0


def scripts(data: dict[str, Any]) -> list[str]:
    steps = list(data.get("runs", {}).get("steps", []))
    for job in data.get("jobs", {}).values():
        steps += job.get("steps", [])
    return [step["run"] for step in steps if "run" in step]


@pytest.mark.parametrize("path", [ACTION, WORKFLOW])
def test_no_script_interpolates_an_expression(path: Path) -> None:
    """`${{ }}` in `run:` is pasted into the script before bash reads it: a branch name becomes code."""
    for script in scripts(load(path)):
        assert "${{" not in script, script


def verify_step(action: dict[str, Any]) -> dict[str, Any]:
    (step,) = [s for s in action["runs"]["steps"] if "-m action" in s.get("run", "")]
    return step


def test_every_input_reaches_the_entry_point_as_github_names_it() -> None:
    action = load(ACTION)
    env = verify_step(action)["env"]
    for name in action["inputs"]:
        assert env[f"INPUT_{name.upper()}"] == f"${{{{ inputs.{name} }}}}", name
    # The entry point reads those very names: each input's effect is visible when set through them.
    parsed = read_inputs(
        {
            "INPUT_CONFIG": "ci/loopgate.yml",
            "INPUT_BASE": "release",
            "INPUT_KUBECONFIG": "apiVersion: v1",
            "INPUT_GITHUB-TOKEN": "t",
            "INPUT_OPEN-PR": "false",
            "INPUT_FAIL-ON": "never",
            "INPUT_RUNTIME": "kubernetes",
        }
    )
    assert (parsed.config, parsed.base, parsed.kubeconfig, parsed.github_token) == (
        "ci/loopgate.yml",
        "release",
        "apiVersion: v1",
        "t",
    )
    assert (parsed.open_pr, parsed.fail_on.value, parsed.runtime.value) == (False, "never", "kubernetes")
    assert set(action["inputs"]) == {
        "config",
        "base",
        "runtime",
        "kubeconfig",
        "github-token",
        "open-pr",
        "fail-on",
    }
    assert set(action["outputs"]) == {"verdict", "run-id", "evidence-path", "report-path", "pr-number"}
    assert action["inputs"]["github-token"]["default"] == "${{ github.token }}"
    assert action["inputs"]["fail-on"]["default"] == "fail"


def test_the_entry_point_runs_isolated_from_the_workspace() -> None:
    """The workspace holds the agent's code: `python -m action` there would import its `action/`."""
    assert " -I -m action" in verify_step(load(ACTION))["run"]


def test_the_reusable_workflow_wraps_the_action_with_least_permissions() -> None:
    workflow, action = load(WORKFLOW), load(ACTION)
    call = workflow[True]["workflow_call"]  # YAML 1.1 reads the key `on` as true
    assert set(call["inputs"]) - {"runs-on"} == set(action["inputs"]) - {"kubeconfig", "github-token"}
    assert set(call["secrets"]) == {"kubeconfig", "github-token"}
    expected = {"checks": "write", "pull-requests": "write", "contents": "read"}
    assert workflow["permissions"] == expected
    (job,) = workflow["jobs"].values()
    assert job["permissions"] == expected
    checkout, gate = job["steps"][0], job["steps"][1]
    assert checkout["uses"].startswith("actions/checkout@")
    assert checkout["with"] == {"fetch-depth": 0, "persist-credentials": False}
    assert gate["uses"].startswith("loopgate/loopgate@")
    assert set(gate["with"]) == set(action["inputs"])


def doc_workflows() -> list[str]:
    text = (ROOT / "docs" / "github-action.md").read_text()
    return [block for block in re.findall(r"```yaml\n(.*?)```", text, re.S) if "\non:\n" in block]


def test_the_documented_callers_are_valid_workflows_on_agent_branches(tmp_path: Path) -> None:
    callers = doc_workflows()
    assert len(callers) == 2
    for index, block in enumerate(callers):
        path = tmp_path / f"caller-{index}.yml"
        path.write_text(block)
        done = check_schema("vendor.github-workflows", path)
        assert done.returncode == 0, done.stdout + done.stderr
        branches = yaml.safe_load(block)[True]["push"]["branches"]
        assert set(branches) == set(DEFAULT_AGENT_BRANCHES)
