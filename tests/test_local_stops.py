"""Stops are complete and bounded: a process group that ignores SIGTERM is killed, not waited for; a
torn-down sandbox and a stopped baseline leave nothing running and nothing on disk, whatever their
services do with SIGTERM; and every request a suite made is in what `observed_requests` reads right
after it (no settle time to guess).

Real processes and a real Envoy, as the runtime runs them; no assertion on time (bench/teardown.py
measures that)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bot.config import RuntimeSettings
from bot.pipeline import make_plan
from bot.runtimes.local import LocalRuntime
from bot.runtimes.local.processes import ProcessRef, spawn, stop_groups
from bot.runtimes.protocol import Baseline, Sandbox, Source
from tests.conftest import TINY_CONFIG, processes_under
from tests.gitrepo import GitRepo

pytestmark = pytest.mark.timeout(180)  # a hang fails in 3 min; a busy 2-core CI host is no hang

# `trap '' TERM` is inherited: the shell and the server it starts both ignore SIGTERM.
HOSTILE_RUN = "trap '' TERM; python -m http.server {port} --bind 127.0.0.1; sleep 60"
HOSTILE_CONFIG = TINY_CONFIG.replace("python -m http.server {port} --bind 127.0.0.1", HOSTILE_RUN)


def ignores_sigterm(pid: int) -> bool:
    """Whether the process has SIGTERM set to ignored (the kernel's own view: /proc/<pid>/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigIgn:"))
    return bool(mask & (1 << (signal.SIGTERM - 1)))


def wait_until_ignoring(pid: int) -> None:
    """Until the shell has run its `trap` (a SIGTERM before that would simply end it)."""
    deadline = time.monotonic() + 10
    while not ignores_sigterm(pid):
        assert time.monotonic() < deadline, f"pid {pid} never set SIGTERM to ignored"
        time.sleep(0.01)


def test_a_group_that_ignores_sigterm_is_killed_and_one_that_exits_is_not(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"]}
    hostile = spawn("trap '' TERM; sleep 60; sleep 60", cwd=tmp_path, env=env, log=tmp_path / "hostile.log")
    polite = spawn("sleep 60; sleep 60", cwd=tmp_path, env=env, log=tmp_path / "polite.log")
    refs = [ProcessRef.of(hostile.pid), ProcessRef.of(polite.pid)]
    wait_until_ignoring(hostile.pid)

    killed = stop_groups(refs)

    assert killed == [refs[0]]  # SIGKILL only where SIGTERM was ignored
    assert not any(ref.alive() for ref in refs)
    assert processes_under(tmp_path) == []


@dataclass
class Tiny:
    runtime: LocalRuntime
    baseline: Baseline
    sandbox: Sandbox
    state_dir: Path
    repo: GitRepo


@pytest.fixture
def tiny(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Tiny]:
    """A one-service system (`web`, a static server) with its baseline and a sandbox forking `web`,
    routed; its own state dir. `request.param`: the config text and whether to confine."""
    config_text, confine = request.param
    repo = GitRepo.init(tmp_path / "tiny", {".loopgate.yml": config_text, "web/index.html": "v1\n"})
    repo.branch("agent/x", {"web/index.html": "v2\n"})
    state_dir = tmp_path / "state"
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir, confine=confine))
    plan = make_plan(repo.path, "main", "agent/x")
    baseline = runtime.up_baseline(Source(repo.path, plan.base_sha), plan.config)
    try:
        sandbox = runtime.new_sandbox(baseline, plan.config, Source(repo.path, plan.merge_sha))
        assert runtime.fork(sandbox, "web", plan.config.services["web"]).status == "ready"
        runtime.route(sandbox)
        yield Tiny(runtime, baseline, sandbox, state_dir, repo)
    finally:
        runtime.down(baseline.env_id)


def tagged(sandbox: Sandbox) -> dict[str, str]:
    return {"baggage": f"loopgate-sandbox={sandbox.routing_key}"}


@pytest.mark.parametrize("tiny", [(HOSTILE_CONFIG, "off")], indirect=True)
def test_services_that_ignore_sigterm_are_killed_and_nothing_is_left(tiny: Tiny) -> None:
    """Unconfined, so SIGTERM reaches the services themselves (confined, it ends their bubblewrap and
    the whole PID namespace with it)."""
    runtime, sandbox = tiny.runtime, tiny.sandbox
    url = tiny.baseline.entry_urls["web"]
    with httpx.Client() as client:  # a kept-alive connection from Envoy to the fork, as a suite leaves
        assert client.get(url, headers=tagged(sandbox)).text == "v2\n"
        assert client.get(url).text == "v1\n"
    env = runtime.registry.load_env(tiny.baseline.env_id)
    record = runtime.registry.load_sandbox(tiny.baseline.env_id, sandbox.routing_key)
    assert env is not None and record is not None
    fork = record.forks["web"].process
    services = [service.process for service in env.services.values()]
    assert all(ignores_sigterm(ref.pid) for ref in [fork, *services])
    sandbox_dir = runtime.registry.sandbox_dir(tiny.baseline.env_id, sandbox.routing_key)

    runtime.teardown(sandbox)

    assert not fork.alive()
    assert processes_under(sandbox_dir) == [] and not sandbox_dir.exists()
    assert runtime.baseline_health(tiny.baseline) is None  # the baseline is untouched
    assert httpx.get(url, headers=tagged(sandbox)).text == "v1\n"

    runtime.down(tiny.baseline.env_id)

    assert not any(ref.alive() for ref in services)
    assert processes_under(tiny.state_dir) == []
    assert not runtime.registry.env_dir(tiny.baseline.env_id).exists()
    assert len(tiny.repo.worktrees()) == 1, tiny.repo.worktrees()


@pytest.mark.parametrize("tiny", [(TINY_CONFIG, "on")], indirect=True)
def test_observed_requests_right_after_a_burst_include_every_one(tiny: Tiny) -> None:
    """What a suite does: many requests, then `observed_requests` at once. Each one is there, by its
    own path, however soon after its answer the log is read."""
    runtime, sandbox = tiny.runtime, tiny.sandbox
    url = tiny.baseline.entry_urls["web"]
    for round_ in range(3):
        paths = [f"/index.html?round={round_}&n={n}" for n in range(40)]
        with httpx.Client() as client:
            for path in paths:
                assert client.get(url + path, headers=tagged(sandbox)).status_code == 200

        observed = runtime.observed_requests(sandbox)

        seen = {r.path for r in observed if r.routing_key == sandbox.routing_key}
        assert set(paths) <= seen, sorted(set(paths) - seen)
        assert all(r.target == sandbox.routing_key for r in observed if r.path in paths)
