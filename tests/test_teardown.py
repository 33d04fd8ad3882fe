"""Nothing is left behind: not after an exception, not after Ctrl-C; `gc` reclaims what a killed run left."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from bot.config import RuntimeSettings
from bot.evidence import ErrorKind, Verdict
from bot.pipeline import Pipeline, VerifyRequest
from bot.runtimes.local import LocalRuntime
from bot.runtimes.local.envoy import DataPlane
from bot.runtimes.protocol import Baseline, Sandbox, SuiteOutcome, SuiteRequest
from tests.conftest import LOOPGATE, processes_under
from tests.gitrepo import GitRepo
from tests.test_verify_cli import config_with_suite


class ExplodingRuntime(LocalRuntime):
    """The real runtime, with a bug injected in the middle of the run."""

    def run_suite(self, sandbox: Sandbox, suite: SuiteRequest) -> SuiteOutcome:
        raise RuntimeError("injected failure mid-run")


def sandboxes_dir(state_dir: Path, baseline: Baseline) -> Path:
    return state_dir / "envs" / baseline.env_id / "sandboxes"


def assert_clean(state_dir: Path, baseline: Baseline, repo: GitRepo) -> None:
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir))
    assert runtime.registry.sandboxes(baseline.env_id) == []
    assert processes_under(sandboxes_dir(state_dir, baseline)) == []
    assert len(repo.worktrees()) == 2, repo.worktrees()
    spec = DataPlane(runtime.registry.env_dir(baseline.env_id) / "envoy").current_spec()
    assert spec is not None and dict(spec.forks) == {}
    assert runtime.baseline_health(baseline) is None  # the shared baseline is untouched


def test_exception_mid_run_still_tears_down(
    state_dir: Path, shop_repo: GitRepo, shop_baseline: Baseline
) -> None:
    pipeline = Pipeline(ExplodingRuntime(RuntimeSettings(state_dir=state_dir)))
    evidence = pipeline.verify(
        VerifyRequest(repo=shop_repo.path, base_ref="main", head_ref="agent/orders-note")
    )
    # Not the change's fault: an infrastructure error (exit 3), with what went wrong, never a traceback.
    assert evidence.verdict is Verdict.ERROR and evidence.error_kind is ErrorKind.INFRASTRUCTURE
    assert evidence.reasons == ["internal error: RuntimeError: injected failure mid-run"]
    assert_clean(state_dir, shop_baseline, shop_repo)


def start_slow_verify(repo: GitRepo, tmp_path: Path) -> subprocess.Popen[str]:
    override = config_with_suite(tmp_path, "sleep 60", timeout=120)
    return subprocess.Popen(
        [
            str(LOOPGATE),
            "verify",
            "--repo",
            str(repo.path),
            "--head",
            "agent/orders-note",
            "--config",
            str(override),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_until_the_suite_runs(state_dir: Path, baseline: Baseline, timeout: float = 60) -> None:
    """The sandbox is routed and its suite's `sleep 60` is a live process (seen from the host, whatever
    namespace it runs in): a signal now lands mid-suite, not before it."""
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = runtime.registry.sandboxes(baseline.env_id)
        if records and records[0].routed and _suite_sleeping():
            return
        time.sleep(0.1)
    raise AssertionError("the run's suite never started")


def _suite_sleeping() -> bool:
    for process in psutil.process_iter(["cmdline"]):
        try:
            if (process.info["cmdline"] or [])[:2] == ["sleep", "60"]:
                return True
        except psutil.Error:
            continue
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_tears_down_and_exits_130(
    state_dir: Path, shop_repo: GitRepo, shop_baseline: Baseline, tmp_path: Path, sig: signal.Signals
) -> None:
    process = start_slow_verify(shop_repo, tmp_path)
    try:
        wait_until_the_suite_runs(state_dir, shop_baseline)
        process.send_signal(sig)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, output
    assert "interrupted; the sandbox was torn down" in output
    assert_clean(state_dir, shop_baseline, shop_repo)
    assert not [p for p in processes_under(state_dir) if "sleep 60" in p]


def test_gc_reclaims_what_a_killed_run_left_and_nothing_else(
    state_dir: Path, shop_repo: GitRepo, shop_baseline: Baseline, tmp_path: Path
) -> None:
    process = start_slow_verify(shop_repo, tmp_path)
    try:
        wait_until_the_suite_runs(state_dir, shop_baseline)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir))
    records = runtime.registry.sandboxes(shop_baseline.env_id)
    left = [r for r in records if r.control_of is None]
    assert len(left) == 1
    # Its two controls (verify.diff.control) are records of their own, each naming its candidate.
    assert sorted(r.control_of for r in records if r.control_of is not None) == [left[0].routing_key] * 2
    # Its confined forks and suite died with it (bubblewrap's --die-with-parent); gc still owes the
    # records, the worktree and the files.
    deadline = time.monotonic() + 10
    while processes_under(sandboxes_dir(state_dir, shop_baseline)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_under(sandboxes_dir(state_dir, shop_baseline)) == []

    done = subprocess.run([str(LOOPGATE), "gc"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"removed sandbox {left[0].routing_key} (owner pid {process.pid} is gone)" in done.stdout
    assert_clean(state_dir, shop_baseline, shop_repo)
    assert not [p for p in processes_under(state_dir) if "sleep 60" in p], (
        "the killed run's suite survived gc"
    )

    again = subprocess.run([str(LOOPGATE), "gc"], capture_output=True, text=True, timeout=60)
    assert again.stdout.strip() == "0 removed"  # the kept baseline has a living owner: not collected
