"""The shop's defect zoo (`examples/shop/changes/zoo.yml`): every change applies, the changed services'
own mocked unit tests stay green, and the real services tell the defects from the good changes.

The end-to-end half needs no loopgate: the four services run as real uvicorn processes wired directly
to each other through `LOOPGATE_*_URL` (orders on a temp SQLite file, payments on a temp PostgreSQL
database). One unpatched baseline set serves every change that does not touch a service; each change
starts its patched services plus fresh copies of their callers, since a direct wiring cannot reroute
the callers. A change to payments gets a copy of the baseline's database made after the baseline
wrote to it, as a loopgate fork does. Everything runs at once, in one fixture, and the tests read its
results; every process and database is stopped or dropped here, also when a test fails.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
import yaml
from psycopg import sql

from tests.conftest import stop_process

SHOP = Path(__file__).resolve().parents[1] / "examples" / "shop"
CHANGES = SHOP / "changes"
MANIFEST = CHANGES / "zoo.yml"
CONFIG = yaml.safe_load((SHOP / ".loopgate.yml").read_text())
SERVICES = tuple(CONFIG["services"])
SUITE = CONFIG["verify"]["suites"][0]
# Who calls whom: a service changed behind a direct wiring needs fresh callers pointed at it.
CALLERS = {"gateway": (), "orders": ("gateway",), "inventory": ("orders", "gateway"), "payments": ("orders",)}
FIELDS = {"name", "patch", "kind", "service", "expected", "expect_finding", "description"}
POSTGRES_URL = os.environ.get("LOOPGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
READY_TIMEOUT_S = 60
COMMAND_TIMEOUT_S = 120
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false"]


@dataclass(frozen=True)
class Change:
    name: str
    patch: str
    kind: str
    services: tuple[str, ...]
    expected: str
    expect_finding: str
    description: str


def _load_manifest() -> tuple[list[dict[str, Any]], list[Change]]:
    raw = yaml.safe_load(MANIFEST.read_text())["changes"]
    changes = [
        Change(
            name=str(entry.get("name")),
            patch=str(entry.get("patch")),
            kind=str(entry.get("kind")),
            services=tuple(s.strip() for s in str(entry.get("service", "")).split(",") if s.strip()),
            expected=str(entry.get("expected")),
            expect_finding=str(entry.get("expect_finding") or ""),
            description=str(entry.get("description") or ""),
        )
        for entry in raw
    ]
    return raw, changes


RAW, ZOO = _load_manifest()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOPGATE_", "PYTEST_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # leave no __pycache__ behind
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `python` is ours
    env["LOOPGATE_TEST_POSTGRES_URL"] = POSTGRES_URL  # payments' unit tests make their own database
    env.update(extra)
    return env


def _touched_services(patch: Path) -> set[str]:
    """The services whose `paths` (`services/<name>/**`) hold a file the patch changes."""
    prefixes = {name: svc["paths"][0].removesuffix("**") for name, svc in CONFIG["services"].items()}
    files = re.findall(r"^diff --git a/(\S+) b/", patch.read_text(), flags=re.M)
    return {name for name, prefix in prefixes.items() for path in files if path.startswith(prefix)}


def _e2e_test_names() -> set[str]:
    return {
        m
        for f in (SHOP / "e2e").glob("test_*.py")
        for m in re.findall(r"^def (test_\w+)\(", f.read_text(), re.M)
    }


def _scratch_copy(root: Path, name: str, patch: str | None) -> tuple[Path, str]:
    """A fresh git copy of the shop, with `patch` checked and applied; returns (copy, problem or "")."""
    repo = root / name
    shutil.copytree(
        SHOP, repo, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.db", "changes")
    )
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "shop"]):
        subprocess.run([*GIT, *args], cwd=repo, check=True, capture_output=True)
    if patch is None:
        return repo, ""
    for args in (["apply", "--check"], ["apply"]):
        done = subprocess.run([*GIT, *args, str(CHANGES / patch)], cwd=repo, capture_output=True, text=True)
        if done.returncode != 0:
            return repo, f"git {' '.join(args)} {patch}: {done.stderr.strip()}"
    return repo, ""


_GIVEN: set[int] = set()
_GIVEN_LOCK = threading.Lock()


def _free_port() -> int:
    """A free port never handed out before in this session: the zoo starts dozens of services at
    once, and the kernel may offer a port again the moment the probe socket closes, before the
    service that was given it has bound it."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        with _GIVEN_LOCK:
            if port not in _GIVEN:
                _GIVEN.add(port)
                return port


def _database_url(name: str) -> str:
    parts = urlsplit(POSTGRES_URL)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


class Databases:
    """Temp PostgreSQL databases on the test server, all dropped by `drop_all`."""

    def __init__(self) -> None:
        self.prefix = f"lg_zoo_{uuid.uuid4().hex[:8]}"
        self.names: list[str] = []

    def _admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)

    def create(self, suffix: str, template: str | None = None) -> str:
        name = f"{self.prefix}_{re.sub(r'[^a-z0-9]', '_', suffix)}"
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        with self._admin() as admin:
            admin.execute(query)
        self.names.append(name)
        return name

    def drop_all(self) -> None:
        with self._admin() as admin:
            for name in self.names:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@dataclass
class Services:
    """Service processes started from one copy of the shop; `urls` says where every service is."""

    urls: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    started_at: float = 0.0
    ready_s: float = 0.0

    def wait_ready(self) -> None:
        """Until every process answers /healthz 200; RuntimeError when one exits or time runs out."""
        pending = set(self.procs)
        with httpx.Client(timeout=2.0) as client:
            while pending:
                for name in sorted(pending):
                    if self.procs[name].poll() is not None:
                        log = self.logs[name].read_text(errors="replace")[-2000:]
                        raise RuntimeError(f"{name} exited with {self.procs[name].returncode}: {log}")
                    try:
                        if client.get(f"{self.urls[name]}/healthz").status_code == 200:
                            pending.discard(name)
                    except httpx.TransportError:
                        pass
                if pending and time.monotonic() - self.started_at > READY_TIMEOUT_S:
                    raise RuntimeError(f"not healthy within {READY_TIMEOUT_S} s: {sorted(pending)}")
                time.sleep(0.1)
        self.ready_s = time.monotonic() - self.started_at


def _ports(names: tuple[str, ...], urls: dict[str, str]) -> dict[str, str]:
    """`urls` with a fresh local address for each of `names`."""
    return urls | {name: f"http://127.0.0.1:{_free_port()}" for name in names}


def _spawn(
    stack: ExitStack,
    repo: Path,
    names: tuple[str, ...],
    urls: dict[str, str],
    state: dict[str, str],
    logs: Path,
) -> Services:
    """Start `names` from `repo` as .loopgate.yml says, on the ports of `urls`, wired to `urls`."""
    wiring = {f"LOOPGATE_{name.upper()}_URL": url for name, url in urls.items()}
    started = Services(urls, started_at=time.monotonic())
    for name in names:
        local = CONFIG["services"][name]["local"]
        port = urlsplit(urls[name]).port
        started.logs[name] = logs / f"{name}-{port}.log"
        log = stack.enter_context(started.logs[name].open("wb"))
        started.procs[name] = subprocess.Popen(
            shlex.split(local["run"].format(port=port)),
            cwd=repo / local["cwd"],
            env=_env(**wiring, **({"LOOPGATE_STATE": state[name]} if name in state else {})),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        stack.callback(stop_process, started.procs[name])
    return started


@dataclass
class SuiteRun:
    returncode: int
    failed: list[str]
    passed: int
    duration_s: float
    output: str


def _run_suite(repo: Path, gateway_url: str, junit: Path, key: str) -> SuiteRun:
    t0 = time.monotonic()
    env = _env(LOOPGATE_GATEWAY_URL=gateway_url, LOOPGATE_JUNIT_XML=str(junit))
    env["LOOPGATE_BAGGAGE"] = f"loopgate-sandbox={key}"  # as loopgate sends it; direct wiring ignores it
    done = subprocess.run(
        ["sh", "-c", SUITE["run"]],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUITE["timeout"],
    )
    failed, passed = [], 0
    if junit.is_file():
        for case in ET.parse(junit).iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(case.get("name", ""))
            elif case.find("skipped") is None:
                passed += 1
    return SuiteRun(
        done.returncode, failed, passed, time.monotonic() - t0, done.stdout[-4000:] + done.stderr[-2000:]
    )


@dataclass
class Outcome:
    applied: str = "not tried"  # "" when the patch applied cleanly
    units: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    suite: SuiteRun | None = None
    error: str = ""


@dataclass
class Zoo:
    baseline: SuiteRun
    outcomes: dict[str, Outcome]
    timings: dict[str, float]


def _callers_of(changed: tuple[str, ...]) -> tuple[str, ...]:
    needed, todo = set(changed), list(changed)
    while todo:
        for caller in CALLERS[todo.pop()]:
            if caller not in needed:
                needed.add(caller)
                todo.append(caller)
    return tuple(name for name in SERVICES if name in needed)


def _unit_tests(stack: ExitStack, repo: Path, service: str) -> subprocess.Popen[str]:
    """`python -m pytest services/<service>/tests` in `repo`, niced: it soaks up the CPU the services
    and suites leave idle (most of a suite's time is spent waiting on the services)."""
    command = [sys.executable, "-m", "pytest", f"services/{service}/tests", "-q", "-p", "no:cacheprovider"]
    proc = subprocess.Popen(
        ["nice", "-n", "15", *command] if shutil.which("nice") else command,
        cwd=repo,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    stack.callback(stop_process, proc)
    return proc


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zoo]:
    """Every change's copy, unit tests, services and suite, run at once; the tests read the outcomes.

    The critical path is the slowest suite (timeout-retry waits out its timeouts): services and suites
    run at normal priority, the unit tests (off that path) niced, all at the same time.
    """
    tmp = tmp_path_factory.mktemp("zoo")
    logs = tmp / "logs"
    logs.mkdir()
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    outcomes = {change.name: Outcome() for change in ZOO}
    databases = Databases()
    with ExitStack() as stack, ThreadPoolExecutor(max_workers=len(ZOO) + 2) as pool:
        stack.callback(databases.drop_all)
        base_copy = pool.submit(_scratch_copy, tmp, "base", None)
        copies = {c.name: pool.submit(_scratch_copy, tmp, c.name, c.patch) for c in ZOO}

        # The shared baseline, and every change's services that need no copy of its database.
        base_db = databases.create("base")
        base_state = {"orders": str(tmp / "base-orders.db"), "payments": _database_url(base_db)}
        baseline = _spawn(stack, base_copy.result()[0], SERVICES, _ports(SERVICES, {}), base_state, logs)
        repos: dict[str, Path] = {}
        for change in ZOO:
            repos[change.name], outcomes[change.name].applied = copies[change.name].result()
        timings["copies"] = time.monotonic() - t0
        ready = [c for c in ZOO if not outcomes[c.name].applied]
        forks: dict[str, Services] = {}
        units = {(c.name, svc): _unit_tests(stack, repos[c.name], svc) for c in ready for svc in c.services}

        def spawn(change: Change, payments_db: str | None = None) -> None:
            names = _callers_of(change.services)
            state = {"orders": str(tmp / f"{change.name}-orders.db")}
            if payments_db is not None:
                state["payments"] = _database_url(payments_db)
            forks[change.name] = _spawn(
                stack, repos[change.name], names, _ports(names, baseline.urls), state, logs
            )

        for change in ready:
            if "payments" not in change.services:
                spawn(change)
        # A fork of payments gets a copy of the baseline's ledger made after the baseline wrote to it.
        baseline.wait_ready()
        timings["baseline ready"] = time.monotonic() - t0
        paid = httpx.post(
            f"{baseline.urls['payments']}/charges",
            json={"amount_cents": 900, "card": "4242-4242-4242-4242"},
            timeout=10,
        )
        assert paid.status_code == 201, paid.text
        for change in ready:
            if "payments" in change.services:
                spawn(change, databases.create(change.name, template=base_db))

        def verify(change: Change) -> None:
            outcome = outcomes[change.name]
            try:
                forks[change.name].wait_ready()
                gateway = forks[change.name].urls["gateway"]
                outcome.suite = _run_suite(
                    repos[change.name], gateway, tmp / f"{change.name}.xml", change.name
                )
                timings[change.name] = time.monotonic() - t0
            except Exception as exc:
                outcome.error = f"{type(exc).__name__}: {exc}"

        control = pool.submit(
            _run_suite, base_copy.result()[0], baseline.urls["gateway"], tmp / "base.xml", "base"
        )
        verified = [pool.submit(verify, change) for change in ready]
        for future in verified:
            future.result()
        baseline_run = control.result()
        for (name, service), proc in units.items():
            out, _ = proc.communicate(timeout=COMMAND_TIMEOUT_S)
            outcomes[name].units[service] = subprocess.CompletedProcess(proc.args, proc.returncode, out)
    timings["all"] = time.monotonic() - t0  # every process stopped, every database dropped
    print("\nzoo timings (s):", {k: round(v, 1) for k, v in timings.items()})
    for change in ZOO:
        if (run := outcomes[change.name].suite) is not None:
            print(f"  {change.name}: exit {run.returncode} in {run.duration_s:.1f} s, failed {run.failed}")
    yield Zoo(baseline_run, outcomes, timings)


# ---------------------------------------------------------------------------------------------------


def test_manifest_is_valid() -> None:
    assert len(ZOO) >= 9
    for entry in RAW:
        assert set(entry) == FIELDS, f"{entry.get('name')}: fields {sorted(set(entry) ^ FIELDS)}"
    names = [c.name for c in ZOO]
    assert len(names) == len(set(names)), "names are unique"
    assert {"refactor-orders", "contract-break", "serialisation", "timeout-retry", "schema-change"} <= set(
        names
    )
    assert {"error-shape", "two-hop", "propagation-break", "additive-field"} <= set(names)
    listed = {c.patch for c in ZOO}
    assert listed == {p.name for p in CHANGES.glob("*.patch")}, (
        "every patch is listed, every listed patch exists"
    )
    tests = _e2e_test_names()
    for c in ZOO:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", c.name), c.name
        assert c.patch == f"{c.name}.patch", c.name
        assert c.kind in {"defect", "good"}, c.name
        verdicts = {"pass"} if c.kind == "good" else {"fail", "inconclusive"}
        assert c.expected in verdicts, f"{c.name}: a {c.kind} change cannot be expected to {c.expected}"
        assert c.services and set(c.services) <= set(SERVICES), c.name
        assert set(c.services) == _touched_services(CHANGES / c.patch), (
            f"{c.name}: service lists what it changes"
        )
        assert c.expect_finding.strip() and c.description.strip(), c.name
        if c.expected == "fail":
            assert c.expect_finding in tests, f"{c.name}: {c.expect_finding} is no e2e test"
    propagation = next(c for c in ZOO if c.name == "propagation-break")
    assert (propagation.expected, propagation.expect_finding) == ("inconclusive", "gateway drops baggage")
    assert set(propagation.services) == {"inventory", "gateway"}


@pytest.mark.parametrize("change", ZOO, ids=lambda c: c.name)
def test_patch_applies_to_a_fresh_copy(zoo: Zoo, change: Change) -> None:
    assert zoo.outcomes[change.name].applied == ""


@pytest.mark.parametrize("change", ZOO, ids=lambda c: c.name)
def test_changed_services_own_unit_tests_pass(zoo: Zoo, change: Change) -> None:
    """The mocks-only CI is green for every change: the defects hide from it."""
    units = zoo.outcomes[change.name].units
    assert set(units) == set(change.services)
    for service, result in units.items():
        assert result.returncode == 0, f"{service}:\n{result.stdout[-3000:]}"
        assert " passed" in result.stdout, f"{service}: no test ran\n{result.stdout}"


def test_e2e_suite_passes_on_the_unpatched_baseline(zoo: Zoo) -> None:
    run = zoo.baseline
    assert run.returncode == 0 and not run.failed and run.passed >= 5, run.output


@pytest.mark.parametrize("change", ZOO, ids=lambda c: c.name)
def test_real_services_tell_defects_from_good_changes(zoo: Zoo, change: Change) -> None:
    outcome = zoo.outcomes[change.name]
    assert not outcome.error, outcome.error
    run = outcome.suite
    assert run is not None
    if change.expected == "fail":
        assert run.returncode != 0, f"the defect went through:\n{run.output}"
        assert change.expect_finding in run.failed, f"failed: {run.failed}\n{run.output}"
    else:
        # Good changes pass; propagation-break passes too when wired directly: only loopgate's
        # routing (the sandbox tag riding on baggage) shows that nothing reached the inventory fork.
        assert run.returncode == 0 and not run.failed, run.output
