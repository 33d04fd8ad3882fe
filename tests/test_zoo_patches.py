"""The shop's defect zoo (`examples/shop/changes/zoo.yml`): every change applies, the changed services'
own mocked unit tests stay green, and the real services tell the defects from the good changes.

The end-to-end half needs no loopgate: the four services run as real uvicorn processes wired directly
to each other through `LOOPGATE_*_URL` (orders on a temp SQLite file, payments on a temp PostgreSQL
database). One unpatched baseline set serves every change that does not touch a service; the shop's
seed (`verify.seed`) writes its orders into it. Each change starts its patched services plus fresh
copies of their callers, since a direct wiring cannot reroute the callers. A change to orders or
payments gets a copy of the baseline's database made after the seed wrote to it, as a loopgate fork
does. A change with a `base_patch` is applied on top of its own base. The team's suite, run against
each change, must say what `suite_only` says; the defects it misses are shown to be real by direct
probes (`PROBES`). Everything runs at once, in one fixture, and the tests read its results; every
process and database is stopped or dropped here, also when a test fails.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import httpx
import psycopg
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import sql

from tests.conftest import stop_process

# One fixture starts the whole zoo (some seventy processes) and runs two dozen suites: minutes on a
# small shared machine, past the suite-wide per-test limit.
pytestmark = pytest.mark.timeout(900)
SHOP = Path(__file__).resolve().parents[1] / "examples" / "shop"
CHANGES = SHOP / "changes"
MANIFEST = CHANGES / "zoo.yml"
CONFIG = yaml.safe_load((SHOP / ".loopgate.yml").read_text())
SERVICES = tuple(CONFIG["services"])
SUITE = CONFIG["verify"]["suites"][0]
SEED = CONFIG["verify"]["seed"]
# Who calls whom: a service changed behind a direct wiring needs fresh callers pointed at it.
CALLERS = {
    "gateway": (),
    "orders": ("gateway",),
    "inventory": ("orders", "gateway"),
    "payments": ("orders",),
    "pricing": ("orders", "gateway"),
}
FIELDS = {"name", "patch", "kind", "service", "expected", "suite_only", "expect_finding", "description"}
OPTIONAL_FIELDS = {"base_patch"}
POSTGRES_URL = os.environ.get("LOOPGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
READY_TIMEOUT_S = 180
SUITES_AT_ONCE = 6
"""Suites running at once: each call has the storefront's 4 s budget, which two dozen suites sharing a
small machine's cores with the services they call would blow."""
COMMAND_TIMEOUT_S = 120
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false"]


@dataclass(frozen=True)
class Change:
    name: str
    patch: str
    kind: str
    services: tuple[str, ...]
    expected: str
    suite_only: str
    expect_finding: str
    description: str
    base_patch: str | None = None


def _load_manifest() -> tuple[list[dict[str, Any]], list[Change]]:
    raw = yaml.safe_load(MANIFEST.read_text())["changes"]
    changes = [
        Change(
            name=str(entry.get("name")),
            patch=str(entry.get("patch")),
            kind=str(entry.get("kind")),
            services=tuple(s.strip() for s in str(entry.get("service", "")).split(",") if s.strip()),
            expected=str(entry.get("expected")),
            suite_only=str(entry.get("suite_only")),
            expect_finding=str(entry.get("expect_finding") or ""),
            description=str(entry.get("description") or ""),
            base_patch=str(entry["base_patch"]) if entry.get("base_patch") else None,
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


def _tests_added_by(patch: str | None) -> set[str]:
    """The e2e tests a (base) patch adds."""
    if patch is None:
        return set()
    return set(re.findall(r"^\+def (test_\w+)\(", (CHANGES / patch).read_text(), re.M))


def _scratch_copy(root: Path, name: str, patches: tuple[str, ...]) -> tuple[Path, str]:
    """A fresh git copy of the shop with `patches` checked, applied and committed in turn (a change's
    base patch, then the change); returns (copy, problem or "")."""
    repo = root / name
    shutil.copytree(
        SHOP, repo, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.db", "changes")
    )
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "shop"]):
        subprocess.run([*GIT, *args], cwd=repo, check=True, capture_output=True)
    for patch in patches:
        for args in (["apply", "--check"], ["apply"]):
            done = subprocess.run(
                [*GIT, *args, str(CHANGES / patch)], cwd=repo, capture_output=True, text=True
            )
            if done.returncode != 0:
                return repo, f"git {' '.join(args)} {patch}: {done.stderr.strip()}"
        for args in (["add", "-A"], ["commit", "-qm", patch]):
            subprocess.run([*GIT, *args], cwd=repo, check=True, capture_output=True)
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


def _healthy(http: httpx.Client, name: str, url: str) -> bool:
    """`name`'s health check as .loopgate.yml states it: GET of its path, or (a gRPC service)
    grpc.health.v1 SERVING."""
    health = CONFIG["services"][name]["local"].get("health", "/healthz")
    if isinstance(health, dict) and "grpc" in health:
        request = health_pb2.HealthCheckRequest(service=str(health["grpc"]))
        with grpc.insecure_channel(url.removeprefix("http://")) as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(request, timeout=2)
            except grpc.RpcError:
                return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)
    try:
        return http.get(f"{url}{health}").status_code == 200
    except httpx.TransportError:
        return False


@dataclass
class Services:
    """Service processes started from one copy of the shop; `urls` says where every service is."""

    urls: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    started_at: float = 0.0
    ready_s: float = 0.0

    def wait_ready(self) -> None:
        """Until every process is healthy; RuntimeError when one exits or time runs out."""
        pending = set(self.procs)
        with httpx.Client(timeout=2.0) as client:
            while pending:
                for name in sorted(pending):
                    if self.procs[name].poll() is not None:
                        log = self.logs[name].read_text(errors="replace")[-2000:]
                        raise RuntimeError(f"{name} exited with {self.procs[name].returncode}: {log}")
                    if _healthy(client, name, self.urls[name]):
                        pending.discard(name)
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


def _run_seed(repo: Path, urls: dict[str, str]) -> list[str]:
    """The shop's seed (`verify.seed`) against `urls`, as loopgate runs it; the order ids it wrote."""
    wiring = {f"LOOPGATE_{name.upper()}_URL": url for name, url in urls.items()}
    done = subprocess.run(
        ["sh", "-c", SEED["run"]],
        cwd=repo,
        env=_env(**wiring),
        capture_output=True,
        text=True,
        timeout=SEED["timeout"],
    )
    assert done.returncode == 0, f"the seed failed: {done.stdout}{done.stderr}"
    seeded = re.findall(r"^seeded (ord_\w+)$", done.stdout, re.M)
    assert seeded, done.stdout
    return seeded


def _copy_sqlite(source: str, target: Path) -> str:
    """A consistent copy of a live SQLite database (the backup API, as a loopgate fork makes it)."""
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)
    return str(target)


# ---------------------------------------------------------------------------------------------------
# Direct probes: each shows one defect that the team's suite misses, wired directly (no loopgate).
# They run on every change whose suite passes, after its suite, and on the baseline: a defect's own
# probe must see it, and no probe may see anything on the baseline or on a good change.

GOOD_CARD = "4242-4242-4242-4242"


@dataclass
class Probed:
    """One wiring to probe: where its services answer, and what its own processes logged."""

    urls: dict[str, str]
    baseline: dict[str, str]
    logs: dict[str, Path]
    seeded: list[str]


def _read(http: httpx.Client, url: str, **params: Any) -> httpx.Response:
    """GET as orders does it (retried on 5xx and transport errors: uvicorn drops the connection after
    an unhandled exception): a probe is no victim of the defects it does not probe."""
    for attempt in range(3):
        try:
            response = http.get(url, params=params)
        except httpx.TransportError:
            if attempt == 2:
                raise
            continue
        if response.status_code < 500 or attempt == 2:
            return response
    raise AssertionError("unreachable")


def _server_errors_at_inventory(p: Probed, http: httpx.Client) -> bool:
    """retry-masked: the inventory process itself answered 5xx during the suite (run first, before the
    other probes' reads reach it)."""
    log = p.logs.get("inventory")
    return log is not None and re.search(r'" 5\d\d ', log.read_text(errors="replace")) is not None


def _stock_not_taken(p: Probed, http: httpx.Client) -> bool:
    """stock-not-reserved: a checkout leaves the item's `available` where it was."""
    item = f"{p.urls['inventory']}/items/sku-notebook"
    before = _read(http, item).json()["available"]
    placed = http.post(
        f"{p.urls['gateway']}/api/checkout", json={"sku": "sku-notebook", "qty": 1, "card": GOOD_CARD}
    )
    assert placed.status_code == 201, placed.text
    return bool(_read(http, item).json()["available"] == before)


def _price_differs(p: Probed, http: httpx.Client) -> bool:
    """price-includes-vat: the item's price_cents is not the baseline's."""
    prices = [
        _read(http, f"{urls['inventory']}/items/sku-tea-towel").json()["price_cents"]
        for urls in (p.urls, p.baseline)
    ]
    return prices[0] != prices[1]


def _limit_ignored(p: Probed, http: httpx.Client) -> bool:
    """renamed-query-param: GET /orders?limit=1 answers more than one order."""
    listed = _read(http, f"{p.urls['orders']}/orders", limit=1)
    assert listed.status_code == 200, listed.text
    return len(listed.json()["orders"]) > 1


def _page_default_changed(p: Probed, http: httpx.Client) -> bool:
    """page-size-default: GET /orders' page size (limit, or page_size) defaults to something else than 20."""
    spec = _read(http, f"{p.urls['orders']}/openapi.json").json()
    params = spec["paths"]["/orders"]["get"]["parameters"]
    return any(q["name"] in {"limit", "page_size"} and q["schema"].get("default") != 20 for q in params)


def _seeded_orders_unreadable(p: Probed, http: httpx.Client) -> bool:
    """old-orders-unreadable: reading an order the seed wrote before the change answers 5xx, or no
    answer at all (uvicorn may reset the connection of a request whose handler raised)."""

    def unreadable(order_id: str) -> bool:
        try:
            return _read(http, f"{p.urls['orders']}/orders/{order_id}").status_code >= 500
        except httpx.TransportError:
            return True

    return any(unreadable(order_id) for order_id in p.seeded)


def _status_differs_on_read(p: Probed, http: httpx.Client) -> bool:
    """order-status-on-read: an order reads back with another status than its checkout answered."""
    placed = http.post(
        f"{p.urls['gateway']}/api/checkout", json={"sku": "sku-tea-towel", "qty": 1, "card": GOOD_CARD}
    )
    assert placed.status_code == 201, placed.text
    read = _read(http, f"{p.urls['gateway']}/api/orders/{placed.json()['id']}")
    return bool(read.json()["status"] != placed.json()["status"])


def _volume_discount_lost(p: Probed, http: httpx.Client) -> bool:
    """quote-fields-renumbered: a checkout of ten units (a line that earns pricing's 10 % volume
    discount) is charged something other than the discounted total."""
    price = _read(http, f"{p.urls['inventory']}/items/sku-notebook").json()["price_cents"]
    placed = http.post(
        f"{p.urls['gateway']}/api/checkout", json={"sku": "sku-notebook", "qty": 10, "card": GOOD_CARD}
    )
    assert placed.status_code == 201, placed.text
    return bool(placed.json()["amount_cents"] != price * 10 - price * 10 // 10)


PROBES: dict[str, Callable[[Probed, httpx.Client], bool]] = {
    "retry-masked": _server_errors_at_inventory,
    "stock-not-reserved": _stock_not_taken,
    "price-includes-vat": _price_differs,
    "renamed-query-param": _limit_ignored,
    "page-size-default": _page_default_changed,
    "old-orders-unreadable": _seeded_orders_unreadable,
    "order-status-on-read": _status_differs_on_read,
    "quote-fields-renumbered": _volume_discount_lost,
}


def _probe(p: Probed) -> dict[str, bool | str]:
    """Every probe on one wiring: True when it sees its defect, or why it could not tell."""
    seen: dict[str, bool | str] = {}
    with httpx.Client(timeout=10) as http:
        for name, probe in PROBES.items():
            try:
                seen[name] = probe(p, http)
            except Exception as exc:
                seen[name] = f"{type(exc).__name__}: {exc}"
    return seen


@dataclass
class Outcome:
    applied: str = "not tried"  # "" when the patch applied cleanly
    units: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    suite: SuiteRun | None = None
    base_suite: SuiteRun | None = None  # a change with a base_patch: its base's suite on the baseline
    probes: dict[str, bool | str] = field(default_factory=dict)
    error: str = ""


@dataclass
class Zoo:
    baseline: SuiteRun
    baseline_probes: dict[str, bool | str]
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


# The services whose state a fork copies from the seeded baseline, as loopgate's forks do.
STATEFUL = ("orders", "payments")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zoo]:
    """Every change's copy, unit tests, services and suite, run at once; the tests read the outcomes.

    The critical path is the slowest suite (timeout-retry waits out its timeouts): services and suites
    run at normal priority, the unit tests (off that path) niced, all at the same time. Changes to a
    stateful service start once the seed has written into the baseline; the others at once.
    """
    tmp = tmp_path_factory.mktemp("zoo")
    logs = tmp / "logs"
    logs.mkdir()
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    outcomes = {change.name: Outcome() for change in ZOO}
    databases = Databases()
    bases = [c for c in ZOO if c.base_patch]
    with ExitStack() as stack, ThreadPoolExecutor(max_workers=len(ZOO) + len(bases) + 2) as pool:
        stack.callback(databases.drop_all)
        base_copy = pool.submit(_scratch_copy, tmp, "base", ())
        copies = {
            c.name: pool.submit(
                _scratch_copy, tmp, c.name, (*([c.base_patch] if c.base_patch else []), c.patch)
            )
            for c in ZOO
        }
        base_copies = {
            c.name: pool.submit(_scratch_copy, tmp, f"{c.name}-base", (c.base_patch,))
            for c in bases
            if c.base_patch
        }

        # The shared baseline, and every change's services that copy no state from it.
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

        def spawn(change: Change, copied: dict[str, str] | None = None) -> None:
            names = _callers_of(change.services)
            state = {"orders": str(tmp / f"{change.name}-orders.db"), **(copied or {})}
            forks[change.name] = _spawn(
                stack, repos[change.name], names, _ports(names, baseline.urls), state, logs
            )

        # The baseline, its seed, its suite and its probes first, then the changes' services (some sixty
        # processes), all started before any of their suites runs: on a small machine, a suite whose
        # calls compete with that many starting processes blows its 4 s budget per call.
        base_repo = base_copy.result()[0]
        baseline.wait_ready()
        timings["baseline ready"] = time.monotonic() - t0
        seeded = _run_seed(base_repo, baseline.urls)
        timings["seeded"] = time.monotonic() - t0
        baseline_run = _run_suite(base_repo, baseline.urls["gateway"], tmp / "base.xml", "base")
        baseline_probes = _probe(Probed(baseline.urls, baseline.urls, baseline.logs, seeded))
        timings["baseline verified"] = time.monotonic() - t0
        # A fork of a stateful service gets a copy of the baseline's data made after the seed wrote it.
        for change in ready:
            if not set(change.services) & set(STATEFUL):
                spawn(change)
            else:
                copied = {}
                if "orders" in change.services:
                    copied["orders"] = _copy_sqlite(base_state["orders"], tmp / f"{change.name}-orders.db")
                if "payments" in change.services:
                    copied["payments"] = _database_url(databases.create(change.name, template=base_db))
                spawn(change, copied)
        started = {name: pool.submit(fork.wait_ready) for name, fork in forks.items()}
        wait(started.values())
        timings["changes ready"] = time.monotonic() - t0

        suites = threading.BoundedSemaphore(SUITES_AT_ONCE)

        def suite(repo: Path, gateway_url: str, junit: Path, key: str) -> SuiteRun:
            with suites:
                return _run_suite(repo, gateway_url, junit, key)

        def verify(change: Change) -> None:
            outcome = outcomes[change.name]
            try:
                fork = forks[change.name]
                started[change.name].result()
                outcome.suite = suite(
                    repos[change.name], fork.urls["gateway"], tmp / f"{change.name}.xml", change.name
                )
                timings[change.name] = time.monotonic() - t0
                if change.suite_only == "pass":
                    outcome.probes = _probe(Probed(fork.urls, baseline.urls, fork.logs, seeded))
                if change.name in base_copies:
                    base_repo, problem = base_copies[change.name].result()
                    assert not problem, problem
                    junit = tmp / f"{change.name}-base.xml"
                    outcome.base_suite = suite(base_repo, baseline.urls["gateway"], junit, "base")
            except Exception as exc:
                outcome.error = f"{type(exc).__name__}: {exc}"

        verified = [pool.submit(verify, change) for change in ready]
        for future in verified:
            future.result()
        for (name, service), proc in units.items():
            out, _ = proc.communicate(timeout=COMMAND_TIMEOUT_S)
            outcomes[name].units[service] = subprocess.CompletedProcess(proc.args, proc.returncode, out)
        timings["unit tests"] = time.monotonic() - t0
    timings["all"] = time.monotonic() - t0  # every process stopped, every database dropped
    print("\nzoo timings (s):", {k: round(v, 1) for k, v in timings.items()})
    for change in ZOO:
        if (run := outcomes[change.name].suite) is not None:
            print(f"  {change.name}: exit {run.returncode} in {run.duration_s:.1f} s, failed {run.failed}")
    yield Zoo(baseline_run, baseline_probes, outcomes, timings)


# ---------------------------------------------------------------------------------------------------


def test_manifest_is_valid() -> None:
    assert len(ZOO) >= 19
    for entry in RAW:
        missing, unknown = FIELDS - set(entry), set(entry) - FIELDS - OPTIONAL_FIELDS
        assert not missing and not unknown, f"{entry.get('name')}: missing {missing}, unknown {unknown}"
    names = [c.name for c in ZOO]
    assert len(names) == len(set(names)), "names are unique"
    assert {"refactor-orders", "contract-break", "serialisation", "timeout-retry", "schema-change"} <= set(
        names
    )
    assert {"error-shape", "two-hop", "propagation-break", "additive-field"} <= set(names)
    assert set(PROBES) <= set(names)
    listed = {c.patch for c in ZOO} | {c.base_patch for c in ZOO if c.base_patch}
    assert listed == {p.name for p in CHANGES.glob("*.patch")}, (
        "every patch is listed (as a change's patch or base_patch), every listed patch exists"
    )
    tests = _e2e_test_names()
    for c in ZOO:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", c.name), c.name
        assert c.patch == f"{c.name}.patch", c.name
        assert c.base_patch is None or c.base_patch not in {x.patch for x in ZOO}, c.name
        assert c.kind in {"defect", "good"}, c.name
        verdicts = {"pass"} if c.kind == "good" else {"fail", "inconclusive"}
        assert c.expected in verdicts, f"{c.name}: a {c.kind} change cannot be expected to {c.expected}"
        assert c.suite_only in {"pass", "fail"}, c.name
        assert c.services and set(c.services) <= set(SERVICES), c.name
        assert set(c.services) == _touched_services(CHANGES / c.patch), (
            f"{c.name}: service lists what it changes"
        )
        assert c.expect_finding.strip() and c.description.strip(), c.name
        # The failing e2e test is the finding exactly when the suite alone catches a defect.
        names_a_test = c.expect_finding in tests | _tests_added_by(c.base_patch)
        catches = c.suite_only == "fail" and c.expected == "fail"
        assert names_a_test == catches, f"{c.name}: {c.expect_finding!r} (suite_only {c.suite_only})"
        if c.kind == "defect" and c.suite_only == "pass" and c.name != "propagation-break":
            assert c.name in PROBES, f"{c.name}: a defect the suite misses needs a probe that shows it"
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
def test_the_suite_alone_says_what_suite_only_says(zoo: Zoo, change: Change) -> None:
    outcome = zoo.outcomes[change.name]
    assert not outcome.error, outcome.error
    run = outcome.suite
    assert run is not None
    if change.suite_only == "pass":
        # Good changes pass; so do the defects the team's suite misses, and propagation-break: only
        # loopgate's routing (the sandbox tag riding on baggage) shows nothing reached the inventory fork.
        assert run.returncode == 0 and not run.failed, run.output
    elif change.kind == "defect":
        assert run.returncode != 0, f"the defect went through:\n{run.output}"
        assert change.expect_finding in run.failed, f"failed: {run.failed}\n{run.output}"
    else:
        # A good change on a red base: only the tests its base adds fail, and they fail on the base too.
        assert run.returncode != 0 and run.failed, run.output
        assert set(run.failed) <= _tests_added_by(change.base_patch), f"failed: {run.failed}\n{run.output}"
        base = outcome.base_suite
        assert base is not None and set(base.failed) == set(run.failed), base and base.output


def test_no_probe_sees_a_defect_on_the_baseline(zoo: Zoo) -> None:
    assert zoo.baseline_probes == dict.fromkeys(PROBES, False)


@pytest.mark.parametrize("change", [c for c in ZOO if c.suite_only == "pass"], ids=lambda c: c.name)
def test_defects_the_suite_misses_are_real(zoo: Zoo, change: Change) -> None:
    """Each defect the suite passes shows under its own probe; a good change shows under none."""
    outcome = zoo.outcomes[change.name]
    assert not outcome.error, outcome.error
    expected = dict.fromkeys(PROBES, False)
    if change.name in PROBES:
        expected[change.name] = True
    assert outcome.probes == expected
