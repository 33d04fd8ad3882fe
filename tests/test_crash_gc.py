"""A `kill -9` at any moment leaves nothing `loopgate gc` cannot find: real processes, real Envoy, real
PostgreSQL, each run stopped at a named point (`LOOPGATE_PAUSE_AT`) rather than after a guessed sleep."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Collection, Iterator
from pathlib import Path

import httpx
import pytest

from bot.config import RuntimeSettings
from bot.evidence import ErrorKind, Verdict
from bot.pipeline import make_plan
from bot.runtimes.local import LocalRuntime
from bot.runtimes.local import runtime as runtime_module
from bot.runtimes.local.ports import free_ports
from bot.runtimes.local.registry import env_id_for
from bot.runtimes.protocol import Source
from tests.conftest import LOOPGATE, processes_under, run_cli, stop_process
from tests.gitrepo import GitRepo

HTTP = "python -m http.server {port} --bind 127.0.0.1"
CONFIG = f"""\
version: 1
services:
  api:
    paths: ["api/**"]
    local: {{run: "{HTTP}", cwd: api, health: /}}
  notes:
    paths: ["notes/**"]
    local: {{run: "{HTTP}", cwd: notes, health: /}}
    state: {{postgres: {{database: notes}}}}
verify:
  suites:
    - {{name: smoke, run: "true"}}
"""
"""Two services, one with a PostgreSQL database: a baseline start makes every kind of thing gc owes."""


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    """A repository of its own per test, so each test has an env id of its own."""
    files = {".loopgate.yml": CONFIG, "api/index.html": "api\n", "notes/index.html": "notes\n"}
    made = GitRepo.init(tmp_path / "repo", files)
    made.branch("agent/both", {"api/index.html": "api 2\n", "notes/index.html": "notes 2\n"})
    return made


@pytest.fixture
def runtime(state_dir: Path) -> LocalRuntime:
    return LocalRuntime(RuntimeSettings(state_dir=state_dir))


def env_dir(state_dir: Path, repo: GitRepo) -> Path:
    return state_dir / "envs" / env_id_for(repo.path, repo.git("rev-parse", "main"))


def loopgate_databases(runtime: LocalRuntime) -> set[str]:
    site = runtime.postgres_site()
    if site.own_reason() is not None and site.cluster.running() is None:
        return set()  # loopgate's own cluster runs only while it holds a database
    with site.admin() as postgres:
        return set(postgres.loopgate_databases())


def start(args: list[str], pause_dir: Path, point: str, **popen: object) -> subprocess.Popen[str]:
    env = {**os.environ, "LOOPGATE_PAUSE_AT": point, "LOOPGATE_PAUSE_DIR": str(pause_dir)}
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [str(LOOPGATE), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **popen
    )


def wait_for(process: subprocess.Popen[str], marker: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if process.poll() is not None:
            raise AssertionError(f"loopgate ended before {marker.name}: {process.communicate()[0]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"loopgate never reached {marker.name}")
        time.sleep(0.02)


def kill_at(args: list[str], tmp_path: Path, point: str) -> None:
    process = start(args, tmp_path / "pause", point)
    try:
        wait_for(process, tmp_path / "pause" / f"{point}.reached")
        process.kill()
        process.wait(timeout=10)
    finally:
        stop_process(process)


def assert_nothing_left(state_dir: Path, repo: GitRepo, runtime: LocalRuntime, databases: set[str]) -> None:
    directory = env_dir(state_dir, repo)
    assert processes_under(directory) == []
    assert not directory.exists(), sorted(str(p) for p in directory.rglob("*"))[:20]
    assert len(repo.worktrees()) == 1, repo.worktrees()  # the repository itself, no other
    assert loopgate_databases(runtime) - databases == set()


def gc() -> str:
    done = subprocess.run([str(LOOPGATE), "gc"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def verify_args(repo: GitRepo, *extra: str) -> list[str]:
    return ["verify", "--repo", str(repo.path), "--head", "agent/both", *extra]


@pytest.mark.parametrize(
    "point", ["envoy-started", "database-created", "service-spawned", "fork-spawned", "suite-running"]
)
def test_kill_9_of_verify_at_each_stage_then_gc_leaves_nothing(
    state_dir: Path, repo: GitRepo, runtime: LocalRuntime, tmp_path: Path, point: str
) -> None:
    databases = loopgate_databases(runtime)
    kill_at(verify_args(repo), tmp_path, point)
    assert env_dir(state_dir, repo).exists()  # something was left for gc: the test tests something
    out = gc()
    assert f"baseline {env_dir(state_dir, repo).name}" in out, out
    assert_nothing_left(state_dir, repo, runtime, databases)


@pytest.mark.parametrize("point", ["envoy-spawned", "database-created", "service-spawned"])
def test_kill_9_of_env_up_while_the_baseline_starts_then_gc_leaves_nothing(
    state_dir: Path, repo: GitRepo, runtime: LocalRuntime, tmp_path: Path, point: str
) -> None:
    """`env up` keeps what it starts (no owner, nothing dies with it): only the `starting` state and the
    journal tell gc that it was never finished."""
    databases = loopgate_databases(runtime)
    kill_at(["env", "up", "--repo", str(repo.path)], tmp_path, point)
    assert processes_under(env_dir(state_dir, repo)), "the killed env up left no process to find"
    out = gc()
    assert "left starting by pid" in out, out
    assert_nothing_left(state_dir, repo, runtime, databases)


def test_a_half_started_env_is_broken_not_reused(
    state_dir: Path, repo: GitRepo, runtime: LocalRuntime, tmp_path: Path
) -> None:
    databases = loopgate_databases(runtime)
    kill_at(["env", "up", "--repo", str(repo.path)], tmp_path, "service-spawned")
    status = run_cli("env", "status")
    line = next(line for line in status.stdout.splitlines() if line.startswith(env_dir(state_dir, repo).name))
    assert "broken: left starting by pid" in line, status.stdout
    up = run_cli("env", "up", "--repo", str(repo.path))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "started at" in up.stdout and "already running" not in up.stdout, up.stdout
        url = next(line.split("=", 1)[1] for line in up.stdout.splitlines() if "LOOPGATE_API_URL=" in line)
        assert httpx.get(url, timeout=5).status_code == 200
    finally:
        down = run_cli("env", "down", "--repo", str(repo.path))
    assert down.returncode == 0, down.stderr
    assert_nothing_left(state_dir, repo, runtime, databases)


class _TakenFirst:
    """`free_ports` whose first `times` choices each start with a port someone else holds (for the
    first service by name), the rest real free ones."""

    def __init__(self, taken: int, times: int) -> None:
        self.taken, self.times, self.handed = taken, times, 0

    def __call__(self, count: int, avoid: Collection[int] = ()) -> list[int]:
        ports = free_ports(count, avoid)
        if self.times:
            self.times, self.handed = self.times - 1, self.handed + 1
            return [self.taken, *ports[1:]]
        return ports


@pytest.fixture
def held_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_port_taken_before_binding_is_retried_on_a_fresh_one(
    repo: GitRepo, runtime: LocalRuntime, held_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Choices: the listeners of api and notes, then their service ports. api's listener and api's
    # service port are both taken by the time they are bound.
    chooser = _TakenFirst(held_port, times=2)
    monkeypatch.setattr(runtime_module, "free_ports", chooser)
    plan = make_plan(repo.path, "main", "main")
    baseline = runtime.up_baseline(Source(repo.path, plan.base_sha), plan.config)
    try:
        assert chooser.handed == 2
        assert held_port not in [int(url.rsplit(":", 1)[1]) for url in baseline.entry_urls.values()]
        record = runtime.registry.load_env(baseline.env_id)
        assert record is not None and record.services["api"].port != held_port
        assert "Address already in use" in Path(record.services["api"].log).read_text()
        # Envoy routes api to where it runs now, not to the port it was first given.
        assert httpx.get(baseline.entry_urls["api"], timeout=5).text == "api\n"
        assert runtime.baseline_health(baseline) is None
    finally:
        runtime.down(baseline.env_id)


def test_sigint_to_a_background_verify_tears_down(
    state_dir: Path, repo: GitRepo, runtime: LocalRuntime, tmp_path: Path
) -> None:
    """A shell starts a background job with SIGINT ignored; loopgate restores it for its teardown."""
    databases = loopgate_databases(runtime)
    ignore = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731 - as `sh -c 'cmd &'` does
    process = start(verify_args(repo), tmp_path / "pause", "suite-running", preexec_fn=ignore)
    try:
        wait_for(process, tmp_path / "pause" / "suite-running.reached")
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        stop_process(process)
    assert process.returncode == 130, output
    assert "interrupted; the sandbox was torn down" in output
    assert_nothing_left(state_dir, repo, runtime, databases)


def test_a_corrupt_env_record_is_reported_and_gc_still_stops_its_processes(
    state_dir: Path, repo: GitRepo, runtime: LocalRuntime
) -> None:
    databases = loopgate_databases(runtime)
    up = run_cli("env", "up", "--repo", str(repo.path))
    assert up.returncode == 0, up.stdout + up.stderr
    directory = env_dir(state_dir, repo)
    assert processes_under(directory)
    (directory / "env.json").write_text('{"env_id": "cut short by a full dis')
    status = run_cli("env", "status")
    assert f"{directory.name} broken: record corrupt" in status.stdout, status.stdout
    out = gc()
    assert f"removed env {directory.name} (record corrupt" in out, out
    assert_nothing_left(state_dir, repo, runtime, databases)


def test_a_baseline_service_that_exits_puts_its_log_tail_in_the_evidence(
    state_dir: Path, tmp_path: Path, runtime: LocalRuntime
) -> None:
    crashing = CONFIG.replace(
        f'{{run: "{HTTP}", cwd: notes',
        "{run: \"echo 'notes: cannot read NOTES_KEY' >&2; exit 3 # {port}\", cwd: notes",
    )
    files = {".loopgate.yml": crashing, "api/index.html": "api\n", "notes/index.html": "notes\n"}
    repo = GitRepo.init(tmp_path / "repo", files)
    repo.branch("agent/both", {"api/index.html": "api 2\n"})
    databases = loopgate_databases(runtime)
    out = tmp_path / "evidence.json"
    done = run_cli(*verify_args(repo, "--json", str(out)))
    assert done.returncode == 3, done.stdout + done.stderr
    evidence = json.loads(out.read_text())
    assert evidence["verdict"] == Verdict.ERROR.value
    assert evidence["error_kind"] == ErrorKind.INFRASTRUCTURE.value
    assert evidence["reasons"][0].startswith("baseline notes exited with code 3"), evidence["reasons"]
    notes = next(s for s in evidence["services"] if s["name"] == "notes")
    assert "notes: cannot read NOTES_KEY" in notes["log_tail"]
    assert_nothing_left(state_dir, repo, runtime, databases)
