"""Shared fixtures: one state dir and one shop baseline for the whole test run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from bot.config import RuntimeSettings
from bot.pipeline import make_plan
from bot.runtimes.local import LocalRuntime
from bot.runtimes.local.pgcluster import OwnCluster
from bot.runtimes.protocol import Baseline, Source
from tests.gitrepo import GitRepo

ROOT = Path(__file__).resolve().parents[1]
SHOP = ROOT / "examples" / "shop"
LOOPGATE = Path(sys.executable).parent / "loopgate"
# Tests run as in the activated venv: services find `python` (the example shop's `run:` is a plain
# `python -m uvicorn`) on PATH as a team's find their toolchain, and loopgate no longer puts its own
# interpreter first (docs/config.md, "Environment").
os.environ["PATH"] = f"{LOOPGATE.parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
TINY_CONFIG = """\
version: 1
services:
  web:
    paths: ["web/**"]
    local: {run: "python -m http.server {port} --bind 127.0.0.1", cwd: web, health: /}
verify:
  suites:
    - {name: smoke, run: "true"}
"""
"""One static web service and a suite that passes: the smallest system a run can verify."""


@pytest.fixture(scope="session", autouse=True)
def postgres_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One loopgate-own PostgreSQL cluster for the whole run (where the server trusts loopback logins,
    loopgate runs its own): every test and every `loopgate` child shares it, so initdb happens once;
    it is stopped at the end whatever the tests left in it."""
    path = tmp_path_factory.mktemp("loopgate-postgres")
    previous = os.environ.get("LOOPGATE_POSTGRES_DIR")
    os.environ["LOOPGATE_POSTGRES_DIR"] = str(path)
    yield path
    OwnCluster(path, state_dir=path).stop()
    if previous is None:
        os.environ.pop("LOOPGATE_POSTGRES_DIR", None)
    else:
        os.environ["LOOPGATE_POSTGRES_DIR"] = previous


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("loopgate-state")
    previous = os.environ.get("LOOPGATE_STATE_DIR")
    os.environ["LOOPGATE_STATE_DIR"] = str(path)
    yield path
    LocalRuntime(RuntimeSettings(state_dir=path)).gc()
    for env_id in LocalRuntime(RuntimeSettings(state_dir=path)).registry.env_ids():
        LocalRuntime(RuntimeSettings(state_dir=path)).down(env_id)
    if previous is None:
        os.environ.pop("LOOPGATE_STATE_DIR", None)
    else:
        os.environ["LOOPGATE_STATE_DIR"] = previous


def stop_process(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    """Terminate, then kill after 5 s: a test never leaves its own children behind."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def processes_under(path: Path) -> list[str]:
    """Processes loopgate started for this state dir: their cwd or command line lies inside it."""
    found = []
    root = str(path)
    for process in psutil.process_iter(["pid", "cmdline", "cwd"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or [])
            if root in cmdline or (process.info["cwd"] or "").startswith(root):
                found.append(f"{process.pid} {cmdline[:120]}")
        except psutil.Error:
            continue
    return found


BRANCH_FILES: dict[str, dict[str, str]] = {
    "agent/docs-only": {"README.md": "# shop\n\nBetter docs, no code.\n"},
}


def make_shop(path: Path, changes: list[str], *, controls: bool = True) -> GitRepo:
    """The example shop as a git repository on `main`, each named change on `agent/<name>`.

    `controls=False` switches the controls off in the team's config (`verify.diff.control`): for tests
    of what the App, the Action or the MCP server do with a verdict, which the suite alone decides for
    the changes they push; the controls' own checks are tested where they decide (test_control_diff,
    the zoo), and without them each run starts a third of the forks."""
    ignore = shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.db", "changes")
    shutil.copytree(SHOP, path, ignore=ignore)
    if not controls:
        config = path / ".loopgate.yml"
        text = config.read_text()
        assert text.count("\nverify:\n") == 1, "the shop's config has no verify section to add to"
        config.write_text(text.replace("\nverify:\n", "\nverify:\n  diff: {control: false}\n"))
    repo = GitRepo.init(path)
    for change in changes:
        repo.branch(f"agent/{change}", patch=SHOP / "changes" / f"{change}.patch")
    return repo


@pytest.fixture(scope="session")
def shop_repo(tmp_path_factory: pytest.TempPathFactory) -> GitRepo:
    """The example shop on `main`, with one branch per agent change the tests need."""
    path = tmp_path_factory.mktemp("shop") / "shop"
    repo = make_shop(path, sorted(p.stem for p in (SHOP / "changes").glob("*.patch")))
    for branch, files in BRANCH_FILES.items():
        repo.branch(branch, files)
    orders = (path / "services/orders/orders_app.py").read_text()
    inventory = (path / "services/inventory/inventory_app.py").read_text()
    repo.branch("agent/orders-note", {"services/orders/orders_app.py": orders + "\n# a harmless note\n"})
    repo.branch("agent/inventory-note", {"services/inventory/inventory_app.py": inventory + "\n# a note\n"})
    payments = (path / "services/payments/payments_app.py").read_text()
    repo.branch(
        "agent/orders-and-payments-note",
        {
            "services/orders/orders_app.py": orders + "\n# a note\n",
            "services/payments/payments_app.py": payments + "\n# a note\n",
        },
    )
    repo.branch(
        "agent/orders-crash",
        {
            "services/orders/orders_app.py": orders
            + '\nraise RuntimeError("orders: cannot read ORDERS_SECRET")\n'
        },
    )
    return repo


@pytest.fixture(scope="session")
def shop_baseline(state_dir: Path, shop_repo: GitRepo) -> Iterator[Baseline]:
    """One baseline for the run, kept as `loopgate env up` keeps it; every verify reuses it."""
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir), persistent=True)
    plan = make_plan(shop_repo.path, "main", "main")
    baseline = runtime.up_baseline(Source(shop_repo.path, plan.base_sha), plan.config)
    yield baseline
    runtime.down(baseline.env_id)


def run_cli(
    *args: str, timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LOOPGATE), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@contextmanager
def scratch_database(prefix: str = "loopgate_test") -> Iterator[str]:
    """A fresh database on the real PostgreSQL server (`make test` starts one where none runs),
    dropped afterwards; its URL."""
    import uuid

    import psycopg

    server = os.environ.get("LOOPGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(server, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {server} is unreachable ({exc}); `make test` starts it")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_database() -> Iterator[str]:
    with scratch_database() as url:
        yield url


LONGEST_FIRST = (
    "test_zoo_patches.py",
    "test_action.py",
    "test_app_events.py",
    "test_kube_pipeline.py",
    "test_app_flow.py",
    "test_app_gating.py",
)
"""The files that take a minute or more: `make test` hands whole files to two workers in collection
order, and one of these started last would leave a worker running alone at the end."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


_FILE_SECONDS: Counter[str] = Counter()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Each file's time, setup and teardown included (module fixtures are most of some files')."""
    _FILE_SECONDS[report.nodeid.split("::", 1)[0]] += report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The slowest files, so LONGEST_FIRST can be kept to what takes longest (`--dist loadfile`)."""
    if not _FILE_SECONDS:
        return
    terminalreporter.section("slowest files")
    for path, seconds in _FILE_SECONDS.most_common(12):
        first = " (in LONGEST_FIRST)" if Path(path).name in LONGEST_FIRST else ""
        terminalreporter.write_line(f"{seconds:8.1f}s {path}{first}")


# The App tests' `fake` and `server` fixtures (each test module brings its own `shop`).
pytest_plugins = ["tests.app_harness"]
