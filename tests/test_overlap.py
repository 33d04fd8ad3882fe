"""The baseline starts while the changed services build (issue #13, item 4), with real processes: both
stages' spans overlap in the Evidence; a build that fails while the baseline starts is the change's
`fail` once the baseline is up, and everything is torn down; a baseline that fails while a build runs
is an infrastructure error that wins over the build's failure, and the build's processes are gone;
`LOOPGATE_OVERLAP=off` keeps the older order.

Each side waits for the other through a gate file, not a sleep: the baseline's services start only once
the build has returned (test 1), the baseline's service fails only once the build's process runs
(test 2).
"""

from __future__ import annotations

import threading
from pathlib import Path

import psutil

from bot.config import RuntimeSettings, Service
from bot.evidence import ErrorKind, Evidence, Stage, Verdict
from bot.pipeline import Pipeline, VerifyRequest
from bot.runtimes.local import LocalRuntime
from bot.runtimes.protocol import Baseline, BuildOutcome, Sandbox
from tests.conftest import processes_under
from tests.gitrepo import GitRepo

SERVER = """\
import os
from http.server import HTTPServer, SimpleHTTPRequestHandler
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), SimpleHTTPRequestHandler).serve_forever()
"""
BUILD_MARK = "47.25"
"""The head's build sleeps this long: how the test finds its process from the host."""


def config(gate: Path, *, db_fails: bool) -> str:
    wait = f"while [ ! -e {gate} ]; do sleep 0.05; done"
    db = f"{wait}; exit 7" if db_fails else f"{wait}; exec python server.py"
    return f"""\
version: 1
services:
  api:
    paths: ["api/**"]
    local: {{run: "exec python server.py", cwd: api, build: "sh build.sh", env: {{PORT: "{{port}}"}},
             health: {{tcp: true}}}}
  db:
    paths: ["db/**"]
    local: {{run: "{db}", cwd: db, env: {{PORT: "{{port}}"}}, health: {{tcp: true}}, ready_timeout: 60}}
verify:
  suites:
    - {{name: smoke, run: "true"}}
"""


def repo_with(path: Path, gate: Path, *, db_fails: bool, head_build: str) -> GitRepo:
    files = {
        ".loopgate.yml": config(gate, db_fails=db_fails),
        "api/server.py": SERVER,
        "api/build.sh": "exit 0\n",
        "db/server.py": SERVER,
    }
    repo = GitRepo.init(path, files)
    repo.branch("agent/change", {"api/build.sh": head_build})
    return repo


def gated(tmp_path: Path) -> tuple[Path, RuntimeSettings]:
    """The gate's path and settings that let confined code read it (its `/tmp` is private)."""
    gates = tmp_path / "gates"
    gates.mkdir()
    return gates / "open", RuntimeSettings(state_dir=tmp_path / "state", confine_expose=[gates])


def stage(evidence: Evidence, name: str) -> Stage:
    [found] = [s for s in evidence.stages if s.name == name]
    return found


def ends(s: Stage) -> float:
    return s.started_at.timestamp() + s.duration_ms / 1000


class GateAfterBuild(LocalRuntime):
    """The real runtime; once the candidate's build has returned, the gate opens the baseline's start."""

    gate: Path

    def build(self, sandbox: Sandbox, service: str, spec: Service) -> BuildOutcome:
        try:
            return super().build(sandbox, service, spec)
        finally:
            self.gate.touch()


def test_a_build_that_fails_while_the_baseline_starts_fails_the_change_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    gate, settings = gated(tmp_path)
    state = settings.state_dir
    repo = repo_with(tmp_path / "repo", gate, db_fails=False, head_build="echo broken >&2; exit 3\n")
    runtime = GateAfterBuild(settings)
    runtime.gate = gate
    request = VerifyRequest(repo=repo.path, base_ref="main", head_ref="agent/change")
    evidence = Pipeline(runtime).verify(request)

    assert evidence.verdict is Verdict.FAIL, evidence.reasons
    api = evidence.service("api")
    assert api is not None and api.status == "build_failed"
    names = [s.name for s in evidence.stages]
    assert names[:4] == ["plan", "baseline", "build", "fork"], names  # in the order they started
    baseline, build = stage(evidence, "baseline"), stage(evidence, "build")
    assert (baseline.outcome, baseline.detail, build.outcome) == ("ok", "started", "failed")
    # The two spans overlap: the build began and ended while the baseline was still starting.
    assert baseline.started_at <= build.started_at and ends(build) <= ends(baseline)
    assert stage(evidence, "teardown").outcome == "ok"
    assert runtime.registry.env_ids() == [] and processes_under(state) == []


def test_a_baseline_that_fails_while_a_build_runs_is_an_infrastructure_error_and_stops_the_build(
    tmp_path: Path,
) -> None:
    gate, settings = gated(tmp_path)
    state = settings.state_dir
    repo = repo_with(tmp_path / "repo", gate, db_fails=True, head_build=f"sleep {BUILD_MARK}\n")
    stop = threading.Event()

    def open_once_the_build_runs() -> None:
        while not stop.is_set() and not gate.exists():
            if _build_processes():
                gate.touch()
            stop.wait(0.05)

    watcher = threading.Thread(target=open_once_the_build_runs)
    watcher.start()
    try:
        runtime = LocalRuntime(settings)
        evidence = Pipeline(runtime).verify(
            VerifyRequest(repo=repo.path, base_ref="main", head_ref="agent/change")
        )
    finally:
        stop.set()
        watcher.join()

    assert gate.exists()  # the baseline failed only once the build was running
    # Both sides failed: the baseline's failure wins, nobody's change is blamed.
    assert evidence.verdict is Verdict.ERROR and evidence.error_kind is ErrorKind.INFRASTRUCTURE
    assert evidence.reasons[0].startswith("baseline db "), evidence.reasons
    baseline, build = stage(evidence, "baseline"), stage(evidence, "build")
    assert baseline.outcome == "error" and build.outcome in ("failed", "error")
    assert baseline.started_at <= build.started_at and build.started_at.timestamp() < ends(baseline)
    assert _build_processes() == []
    assert runtime.registry.env_ids() == [] and processes_under(state) == []


def _build_processes() -> list[int]:
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if BUILD_MARK in " ".join(process.info["cmdline"] or []):
                found.append(process.pid)
        except psutil.Error:
            continue
    return found


def test_overlap_off_keeps_the_older_order(
    shop_repo: GitRepo, shop_baseline: Baseline, state_dir: Path
) -> None:
    """`LOOPGATE_OVERLAP=off`: the baseline stage has ended before the build stage begins."""
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir, overlap="off"))
    request = VerifyRequest(repo=shop_repo.path, base_ref="main", head_ref="agent/refactor-orders")
    evidence = Pipeline(runtime).verify(request)
    assert evidence.verdict is Verdict.PASS, evidence.reasons
    baseline, build = stage(evidence, "baseline"), stage(evidence, "build")
    assert baseline.detail == "reused a running baseline"
    assert ends(baseline) <= build.started_at.timestamp()
