"""The example shop: its unit tests, its two agent changes, and an end-to-end smoke with real processes.

Every process is started here and stopped here, also when a test fails. payments keeps its ledger in
PostgreSQL (LOOPGATE_TEST_POSTGRES_URL, default `postgresql://postgres@127.0.0.1:5432/postgres`): the
smoke makes its own temp database and drops it.
"""

from __future__ import annotations

import http.client
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
import httpx
import psycopg
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import sql

from tests.conftest import stop_process

SHOP = Path(__file__).resolve().parents[1] / "examples" / "shop"
SERVICES = ("gateway", "orders", "inventory", "payments", "pricing")
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
COMMAND_TIMEOUT_S = 90
POSTGRES_URL = os.environ.get("LOOPGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOPGATE_", "PYTEST_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # leave no __pycache__ in the shop folder
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `python` is ours
    env["LOOPGATE_TEST_POSTGRES_URL"] = POSTGRES_URL  # payments' unit tests make their own database
    env.update(extra)
    return env


def _pytest_in_parallel(runs: list[tuple[Path, str]]) -> dict[str, subprocess.CompletedProcess[str]]:
    """`python -m pytest <target>` from each (root, target), one process each, all at once."""
    procs = {
        f"{root.name}: {target}": subprocess.Popen(
            [sys.executable, "-m", "pytest", target, "-q", "-p", "no:cacheprovider"],
            cwd=root,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for root, target in runs
    }
    results = {}
    try:
        for target, proc in procs.items():
            out, _ = proc.communicate(timeout=COMMAND_TIMEOUT_S)
            results[target] = subprocess.CompletedProcess(proc.args, proc.returncode, out)
    finally:
        for proc in procs.values():
            stop_process(proc)
    return results


def _assert_all_passed(results: dict[str, subprocess.CompletedProcess[str]]) -> None:
    failed = {t: r.stdout[-3000:] for t, r in results.items() if r.returncode != 0}
    assert not failed, "\n\n".join(f"--- {t}\n{out}" for t, out in failed.items())
    for target, result in results.items():
        assert " passed" in result.stdout, f"{target}: no test ran\n{result.stdout}"


def _scratch_repo(tmp: Path, patch: str) -> Path:
    """A throwaway git copy of the shop with one change applied, as loopgate's demo makes it."""
    repo = tmp / Path(patch).stem
    shutil.copytree(SHOP, repo, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.db"))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    git += ["-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "shop"], cwd=repo, check=True)
    applied = subprocess.run(
        [*git, "apply", str(SHOP / "changes" / patch)], cwd=repo, capture_output=True, text=True
    )
    assert applied.returncode == 0, f"{patch} does not apply: {applied.stderr}"
    return repo


def test_each_service_unit_tests_pass() -> None:
    _assert_all_passed(_pytest_in_parallel([(SHOP, f"services/{name}/tests") for name in SERVICES]))


def test_agent_changes_apply_and_their_unit_tests_pass(tmp_path: Path) -> None:
    contract = _scratch_repo(tmp_path, "contract-break.patch")
    refactor = _scratch_repo(tmp_path, "refactor-orders.patch")
    # The contract break is real: inventory now says in_stock, orders still reads available ...
    assert '"in_stock": item.stock' in (contract / "services/inventory/inventory_app.py").read_text()
    assert 'item.get("available")' in (contract / "services/orders/orders_app.py").read_text()
    # ... and the refactor touched orders only.
    changed = subprocess.run(
        ["git", "diff", "--name-only"], cwd=refactor, capture_output=True, text=True, check=True
    ).stdout.split()
    assert changed and all(path.startswith("services/orders/") for path in changed)

    runs = [(contract, "services/inventory/tests"), (contract, "services/orders/tests")]
    runs.append((refactor, "services/orders/tests"))
    _assert_all_passed(_pytest_in_parallel(runs))  # the mocks-only CI is green for both changes


# ---------------------------------------------------------------------------------------------------
# End-to-end smoke: real uvicorn processes wired directly to each other (no Envoy).


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Recorder:
    """A stdlib HTTP proxy that stands in front of a service and keeps the headers it received."""

    upstream: str
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    url: str = ""

    @contextmanager
    def running(self) -> Iterator[Recorder]:
        recorder, target = self, urlsplit(self.upstream)

        class Handler(BaseHTTPRequestHandler):
            def _proxy(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                recorder.seen.append((self.command, self.path, headers))
                body = self.rfile.read(int(headers.get("content-length", "0") or 0))
                conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=10)
                try:
                    forwarded = {k: v for k, v in headers.items() if k not in ("host", "connection")}
                    conn.request(self.command, self.path, body=body or None, headers=forwarded)
                    upstream = conn.getresponse()
                    payload = upstream.read()
                    self.send_response(upstream.status)
                    self.send_header("content-type", upstream.getheader("content-type", "application/json"))
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                finally:
                    conn.close()

            do_GET = do_POST = _proxy

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


@dataclass
class Shop:
    urls: dict[str, str]
    payments_recorder: Recorder
    startup_s: dict[str, float]
    logs: Path
    payments_db: str


@contextmanager
def _temp_database() -> Iterator[str]:
    """A fresh PostgreSQL database on the test server, dropped on exit; yields its URL."""
    name = f"lg_test_shop_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        parts = urlsplit(POSTGRES_URL)
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _healthy(client: httpx.Client, local: dict[str, object], port: int) -> bool:
    """The service's health check as .loopgate.yml states it: GET /healthz, or grpc.health.v1."""
    health = local.get("health", "/healthz")
    if isinstance(health, dict) and "grpc" in health:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = health_pb2.HealthCheckRequest(service=str(health["grpc"]))
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(request, timeout=1)
            except grpc.RpcError:
                return False
            return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)
    try:
        return client.get(f"http://127.0.0.1:{port}{health}").status_code == 200
    except httpx.TransportError:
        return False


def _start_services(
    stack: ExitStack,
    root: Path,
    ports: dict[str, int],
    env: dict[str, str],
    logs: Path,
    state: dict[str, str] | None = None,
) -> dict[str, float]:
    """Start services (name -> port) from `root` as .loopgate.yml says, each with its LOOPGATE_STATE
    from `state`; return seconds to healthy."""
    config = yaml.safe_load((root / ".loopgate.yml").read_text())["services"]
    started: dict[str, tuple[subprocess.Popen[bytes], float]] = {}
    for name, port in ports.items():
        local = config[name]["local"]
        log = stack.enter_context((logs / f"{name}-{port}.log").open("wb"))
        proc = subprocess.Popen(
            shlex.split(local["run"].format(port=port)),
            cwd=root / local["cwd"],
            env=env | ({"LOOPGATE_STATE": state[name]} if state and name in state else {}),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        stack.callback(stop_process, proc)
        started[name] = (proc, time.monotonic())
    ready: dict[str, float] = {}
    deadline = time.monotonic() + 60  # five services starting at once on a small, busy machine
    with httpx.Client(timeout=1.0) as client:
        while len(ready) < len(started):
            for name, (proc, t0) in started.items():
                if name in ready:
                    continue
                if proc.poll() is not None:
                    output = (logs / f"{name}-{ports[name]}.log").read_text(errors="replace")
                    pytest.fail(f"{name} exited with {proc.returncode}:\n{output[-3000:]}")
                if _healthy(client, config[name]["local"], ports[name]):
                    ready[name] = time.monotonic() - t0
            if time.monotonic() > deadline:
                pytest.fail(f"not healthy within 60 s: {sorted(set(started) - set(ready))}")
            time.sleep(0.05)
    return ready


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    tmp = tmp_path_factory.mktemp("shop-e2e")
    ports = {name: _free_port() for name in SERVICES}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    with ExitStack() as stack:
        recorder = stack.enter_context(Recorder(upstream=urls["payments"]).running())
        env = _env(
            LOOPGATE_GATEWAY_URL=urls["gateway"],
            LOOPGATE_ORDERS_URL=urls["orders"],
            LOOPGATE_INVENTORY_URL=urls["inventory"],
            LOOPGATE_PAYMENTS_URL=recorder.url,  # payments, with every received header kept
            LOOPGATE_PRICING_URL=urls["pricing"],
        )
        state = {
            "orders": str(tmp / "state" / "orders.db"),
            "payments": stack.enter_context(_temp_database()),
        }
        startup = _start_services(stack, SHOP, ports, env, tmp, state)
        yield Shop(urls, recorder, startup, tmp, state["payments"])


def test_e2e_suite_passes_against_the_real_services(shop: Shop, tmp_path: Path) -> None:
    suite = yaml.safe_load((SHOP / ".loopgate.yml").read_text())["verify"]["suites"][0]
    junit = tmp_path / "junit.xml"
    env = _env(
        LOOPGATE_GATEWAY_URL=shop.urls["gateway"],
        LOOPGATE_BAGGAGE="loopgate-sandbox=e2esuite1",
        LOOPGATE_JUNIT_XML=str(junit),
    )
    shop.payments_recorder.seen.clear()
    result = subprocess.run(
        ["sh", "-c", suite["run"]],
        cwd=SHOP,
        env=env,
        capture_output=True,
        text=True,
        timeout=suite["timeout"],
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert junit.is_file()
    assert 'failures="0"' in junit.read_text()
    charges = [headers for method, path, headers in shop.payments_recorder.seen if path == "/charges"]
    assert charges, "the suite never reached payments"
    assert all("loopgate-sandbox=e2esuite1" in h.get("baggage", "") for h in charges)


def test_baggage_and_traceparent_reach_payments(shop: Shop) -> None:
    shop.payments_recorder.seen.clear()
    headers = {"baggage": "loopgate-sandbox=abc123", "traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-01"}
    body = {"sku": "sku-notebook", "qty": 1, "card": "4242-4242-4242-4242"}
    response = httpx.post(f"{shop.urls['gateway']}/api/checkout", json=body, headers=headers, timeout=30)
    assert response.status_code == 201, response.text
    ((method, path, received),) = shop.payments_recorder.seen
    assert (method, path) == ("POST", "/charges")
    assert "loopgate-sandbox=abc123" in [m.strip() for m in received["baggage"].split(",")]
    version, trace_id, parent_id, _flags = received["traceparent"].split("-")
    assert (version, trace_id) == ("00", TRACE_ID)
    assert parent_id != "b7ad6b7169203331"  # a new span of the same trace, two hops down

    shop.payments_recorder.seen.clear()
    untagged = httpx.post(f"{shop.urls['gateway']}/api/checkout", json=body, timeout=30)
    assert untagged.status_code == 201, untagged.text
    assert "loopgate-sandbox" not in shop.payments_recorder.seen[0][2].get("baggage", "")


def test_order_keeps_the_charge_that_payments_keeps_in_postgres(shop: Shop) -> None:
    body = {"sku": "sku-notebook", "qty": 2, "card": "4242-4242-4242-4242"}
    order = httpx.post(f"{shop.urls['gateway']}/api/checkout", json=body, timeout=30).json()
    charge = httpx.get(f"{shop.urls['payments']}/charges/{order['charge_id']}", timeout=10).json()
    assert (charge["amount_cents"], charge["status"]) == (order["amount_cents"], "captured")
    with psycopg.connect(shop.payments_db) as db:
        row = db.execute("SELECT amount_cents, card_last4 FROM charges WHERE id = %s", (order["charge_id"],))
        assert row.fetchone() == (order["amount_cents"], "4242")


def test_contract_break_fails_checkout_through_the_gateway(shop: Shop, tmp_path: Path) -> None:
    """The broken inventory behind the real orders and gateway: checkout must not answer 201."""
    broken = _scratch_repo(tmp_path, "contract-break.patch")
    ports = {"inventory": _free_port(), "orders": _free_port(), "gateway": _free_port()}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    env = _env(
        LOOPGATE_GATEWAY_URL=urls["gateway"],
        LOOPGATE_ORDERS_URL=urls["orders"],
        LOOPGATE_INVENTORY_URL=urls["inventory"],
        LOOPGATE_PAYMENTS_URL=shop.urls["payments"],
        LOOPGATE_PRICING_URL=shop.urls["pricing"],
    )
    with ExitStack() as stack:
        _start_services(stack, broken, ports, env, tmp_path, {"orders": str(tmp_path / "orders.db")})
        body = {"sku": "sku-tea-towel", "qty": 1, "card": "4242-4242-4242-4242"}
        response = httpx.post(f"{urls['gateway']}/api/checkout", json=body, timeout=30)
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "upstream_bad_response"
