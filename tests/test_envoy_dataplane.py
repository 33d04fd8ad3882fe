"""The local data plane against a real Envoy and real HTTP services on 127.0.0.1.

A three-hop chain front -> middle -> back; each service forwards only ``baggage`` and ``traceparent``
to the next hop through Envoy, as an OpenTelemetry-instrumented service would. Every response lists
which instance served each hop, which is what a user of a sandbox would look at.
"""

from __future__ import annotations

import http.client
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psutil
import pytest

from bot.runtimes.baggage import baggage_member as baggage_routing_key
from bot.runtimes.local.accesslog import LoggedRequest, read_access_log
from bot.runtimes.local.envoy import DataPlane, EnvoyError
from bot.runtimes.local.xds import (
    DataPlaneSpec,
    Upstream,
    endpoints_in,
    endpoints_of,
    endpoints_response,
)

pytestmark = pytest.mark.timeout(180)  # a hang fails in 3 min; a busy 2-core CI host is no hang

CHAIN = ("front", "middle", "back")
# sandbox -> services it forks
SANDBOXES: dict[str, tuple[str, ...]] = {
    "sbx111": ("middle",),
    "sbx222": ("front", "back"),
    "abc123": ("back",),
    "abc1234": ("back",),
}
EXTRA = "live01"  # forks front only while a test routes it


# -- a tiny service --------------------------------------------------------------------------------


class _Service(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, identity: str, next_port: int | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.identity = identity
        self.next_port = next_port

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Service

    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        if "sleep" in query:
            time.sleep(float(query["sleep"][0]))
        hops: list[dict[str, Any]] = [
            {
                "identity": self.server.identity,
                "baggage": self.headers.get_all("baggage"),
                "traceparent": self.headers.get("traceparent"),
                "header": self.headers.get("x-loopgate-sandbox"),
            }
        ]
        status = 200
        if self.server.next_port is not None:
            forward = {
                name: ",".join(values)
                for name in ("baggage", "traceparent")
                if (values := self.headers.get_all(name))
            }
            code, body = _get(self.server.next_port, self.path, forward)
            hops += body.get("hops", [])
            status = code
        elif "/status/" in urlsplit(self.path).path:
            status = int(urlsplit(self.path).path.rsplit("/", 1)[1])
        payload = json.dumps({"hops": hops}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _get(
    port: int, path: str, headers: Mapping[str, str] | Sequence[tuple[str, str]] = ()
) -> tuple[int, dict[str, Any]]:
    """One request on a fresh connection; header pairs allow repeated header lines."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path)
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        for name, value in pairs:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    try:
        body = json.loads(raw)
    except ValueError:
        body = {"raw": raw.decode(errors="replace")}
    return response.status, body


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _envoy_processes(workdir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and any(str(workdir) in arg for arg in cmdline):
            found.append(proc)
    return found


# -- fixtures --------------------------------------------------------------------------------------


class System:
    """Listener ports, every service instance and the specs built from them."""

    def __init__(self) -> None:
        self.listeners = {service: _free_port() for service in CHAIN}
        self.servers: dict[str, _Service] = {}
        for index, service in enumerate(CHAIN):
            nxt = self.listeners[CHAIN[index + 1]] if index + 1 < len(CHAIN) else None
            owners = ["baseline", EXTRA if service == "front" else None]
            owners += [key for key, forked in SANDBOXES.items() if service in forked]
            for owner in filter(None, owners):
                self.servers[f"{service}@{owner}"] = _Service(f"{service}@{owner}", nxt)
        self.threads = [
            threading.Thread(target=server.serve_forever, daemon=True) for server in self.servers.values()
        ]
        for thread in self.threads:
            thread.start()

    def upstream(self, identity: str) -> Upstream:
        return Upstream("127.0.0.1", self.servers[identity].port)

    def spec(self, sandboxes: Mapping[str, Sequence[str]] = SANDBOXES) -> DataPlaneSpec:
        return DataPlaneSpec(
            listeners=self.listeners,
            baseline={service: self.upstream(f"{service}@baseline") for service in CHAIN},
            forks={
                key: {service: self.upstream(f"{service}@{key}") for service in services}
                for key, services in sandboxes.items()
            },
        )

    def close(self) -> None:
        for server in self.servers.values():
            server.shutdown()
            server.server_close()

    def chain(
        self, headers: Mapping[str, str] | Sequence[tuple[str, str]] = (), path: str = "/"
    ) -> list[str]:
        status, body = _get(self.listeners["front"], path, headers)
        assert status == 200, body
        return [hop["identity"] for hop in body["hops"]]

    def hops(self, headers: Mapping[str, str] | Sequence[tuple[str, str]] = ()) -> list[dict[str, Any]]:
        status, body = _get(self.listeners["front"], "/", headers)
        assert status == 200, body
        hops: list[dict[str, Any]] = body["hops"]
        return hops


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    sys_ = System()
    try:
        yield sys_
    finally:
        sys_.close()


@pytest.fixture(scope="module")
def plane(system: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPlane]:
    dp = DataPlane(tmp_path_factory.mktemp("envoy"))
    try:
        dp.start(system.spec())
        yield dp
    finally:
        dp.stop()


@pytest.fixture
def routed(plane: DataPlane, system: System) -> Iterator[DataPlane]:
    """The shared data plane, put back to the standard sandboxes after each test."""
    yield plane
    if plane.is_running():
        plane.apply(system.spec())


def bag(key: str) -> dict[str, str]:
    return {"baggage": f"loopgate-sandbox={key}"}


# -- 1. routing per hop ----------------------------------------------------------------------------


def test_untagged_requests_reach_baseline_at_every_hop(routed: DataPlane, system: System) -> None:
    assert system.chain() == ["front@baseline", "middle@baseline", "back@baseline"]
    assert system.chain({"baggage": "userid=42"}) == ["front@baseline", "middle@baseline", "back@baseline"]


def test_tagged_requests_reach_forks_where_forked_and_baseline_elsewhere(
    routed: DataPlane, system: System
) -> None:
    assert system.chain(bag("sbx111")) == ["front@baseline", "middle@sbx111", "back@baseline"]
    assert system.chain(bag("sbx222")) == ["front@sbx222", "middle@baseline", "back@sbx222"]
    # Two sandboxes interleaved never see each other's forks.
    for _ in range(3):
        assert "middle@sbx111" not in system.chain(bag("sbx222"))
        assert not {"front@sbx222", "back@sbx222"} & set(system.chain(bag("sbx111")))
    # A sandbox that forked nothing here behaves like untagged traffic.
    assert system.chain(bag("zzz999")) == ["front@baseline", "middle@baseline", "back@baseline"]


# -- 2. exact baggage member match -----------------------------------------------------------------


def test_routing_key_must_match_exactly_in_both_directions(routed: DataPlane, system: System) -> None:
    assert system.chain(bag("abc123"))[-1] == "back@abc123"
    assert system.chain(bag("abc1234"))[-1] == "back@abc1234"
    for near_miss in ("abc12", "abc12345", "xabc123", "abc123x"):
        assert system.chain(bag(near_miss))[-1] == "back@baseline", near_miss
    for other_member in ("xloopgate-sandbox=abc123", "loopgate-sandbox2=abc123", "sandbox=abc123"):
        assert system.chain({"baggage": other_member})[-1] == "back@baseline", other_member


def test_member_with_properties_and_whitespace_matches_and_other_members_survive(
    routed: DataPlane, system: System
) -> None:
    baggage = "userid=42 ,  loopgate-sandbox = abc123 ;ttl=5;x ,\tcart=7"
    hops = system.hops({"baggage": baggage})
    assert [hop["identity"] for hop in hops] == ["front@baseline", "middle@baseline", "back@abc123"]
    last = ",".join(hops[-1]["baggage"])
    assert "userid=42" in last and "cart=7" in last
    # Several baggage header lines count as one list.
    lines = [("baggage", "userid=42"), ("baggage", "loopgate-sandbox=abc1234;p")]
    assert system.chain(lines)[-1] == "back@abc1234"


# -- 3. header-only tagging ------------------------------------------------------------------------


def test_header_tag_is_carried_as_baggage_over_three_hops(routed: DataPlane, system: System) -> None:
    hops = system.hops({"x-loopgate-sandbox": "sbx222"})
    assert [hop["identity"] for hop in hops] == ["front@sbx222", "middle@baseline", "back@sbx222"]
    # The services forwarded only baggage: the member Envoy added is what kept the sandbox.
    assert hops[1]["header"] is None and hops[1]["baggage"] == ["loopgate-sandbox=sbx222"]

    hops = system.hops({"x-loopgate-sandbox": "sbx111", "baggage": "userid=42"})
    assert [hop["identity"] for hop in hops] == ["front@baseline", "middle@sbx111", "back@baseline"]
    # Appended to the existing value, as one header line, at the entry already.
    assert hops[0]["baggage"] == ["userid=42,loopgate-sandbox=sbx111"]
    assert hops[2]["baggage"] == ["userid=42,loopgate-sandbox=sbx111"]

    lines = [("x-loopgate-sandbox", "sbx222"), ("baggage", "a=1"), ("baggage", "b=2")]
    hops = system.hops(lines)
    assert hops[0]["baggage"] == ["a=1,b=2,loopgate-sandbox=sbx222"]
    assert hops[-1]["identity"] == "back@sbx222"


def test_baggage_wins_over_header_and_bad_header_values_are_ignored(
    routed: DataPlane, system: System
) -> None:
    hops = system.hops({"x-loopgate-sandbox": "sbx222", "baggage": "loopgate-sandbox=sbx111"})
    assert [hop["identity"] for hop in hops] == ["front@baseline", "middle@sbx111", "back@baseline"]
    assert hops[0]["baggage"] == ["loopgate-sandbox=sbx111"]
    hops = system.hops({"x-loopgate-sandbox": "SBX222,evil=1"})
    assert [hop["identity"] for hop in hops] == ["front@baseline", "middle@baseline", "back@baseline"]
    assert hops[0]["baggage"] is None


# -- 4. updates under traffic ----------------------------------------------------------------------


def test_routes_change_under_traffic_without_failures_or_restart(
    routed: DataPlane, system: System, capsys: pytest.CaptureFixture[str]
) -> None:
    pid = routed.pid
    stop = threading.Event()
    failures: list[str] = []
    served: list[str] = []

    def traffic() -> None:
        while not stop.is_set():
            try:
                status, body = _get(system.listeners["front"], "/?sleep=0.01", bag(EXTRA))
            except OSError as exc:
                failures.append(repr(exc))
                continue
            if status != 200:
                failures.append(f"{status} {body}")
            else:
                served.append(body["hops"][0]["identity"])

    workers = [threading.Thread(target=traffic) for _ in range(3)]
    for worker in workers:
        worker.start()
    latencies: list[float] = []
    try:
        with_extra = system.spec({**SANDBOXES, EXTRA: ("front",)})
        for _ in range(4):
            time.sleep(0.15)
            started = time.perf_counter()
            routed.apply(with_extra)
            latencies.append(time.perf_counter() - started)
            assert system.chain(bag(EXTRA))[0] == f"front@{EXTRA}"
            time.sleep(0.15)
            started = time.perf_counter()
            routed.apply(system.spec())
            latencies.append(time.perf_counter() - started)
            assert system.chain(bag(EXTRA))[0] == "front@baseline"
        time.sleep(0.1)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert failures == []
    assert f"front@{EXTRA}" in served and "front@baseline" in served
    assert routed.pid == pid
    with capsys.disabled():
        p50 = statistics.median(latencies) * 1000
        print(
            f"\nroute update latency p50 {p50:.0f} ms over {len(latencies)} applies ({len(served)} requests)"
        )


# -- 5. another process attaches -------------------------------------------------------------------


_APPLY_FROM_ANOTHER_PROCESS = """
import sys
from dataclasses import replace
from pathlib import Path
from bot.runtimes.local.envoy import DataPlane
from bot.runtimes.local.xds import Upstream
plane = DataPlane(Path(sys.argv[1]))
spec = plane.current_spec()
forks = {**spec.forks, sys.argv[2]: {"front": Upstream("127.0.0.1", int(sys.argv[3]))}}
plane.apply(replace(spec, forks=forks))
print(plane.pid)
"""


def test_another_dataplane_object_or_process_applies_to_running_envoy(
    routed: DataPlane, system: System, tmp_path: Path
) -> None:
    workdir = routed.access_log.parent
    other = DataPlane(workdir)
    assert other.is_running() and other.pid == routed.pid
    assert other.current_spec() == system.spec()

    other.apply(system.spec({**SANDBOXES, EXTRA: ("front",)}))
    assert system.chain(bag(EXTRA))[0] == f"front@{EXTRA}"
    other.apply(system.spec())
    assert system.chain(bag(EXTRA))[0] == "front@baseline"

    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _APPLY_FROM_ANOTHER_PROCESS,
            str(workdir),
            EXTRA,
            str(system.upstream(f"front@{EXTRA}").port),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) == routed.pid
    assert system.chain(bag(EXTRA))[0] == f"front@{EXTRA}"
    current = routed.current_spec()
    assert current is not None and EXTRA in current.forks


def test_apply_refuses_listener_changes(routed: DataPlane, system: System) -> None:
    spec = system.spec()
    with pytest.raises(EnvoyError, match="listeners"):
        routed.apply(replace(spec, listeners={**spec.listeners, "front": _free_port()}))


# -- 6. start failures and stop --------------------------------------------------------------------


def test_port_in_use_is_named_and_leaves_no_envoy(system: System, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        spec = system.spec()
        for busy in CHAIN:
            listeners = {s: port if s == busy else _free_port() for s in CHAIN}
            plane = DataPlane(tmp_path / f"busy-{busy}")
            with pytest.raises(EnvoyError, match=f"port {port} already in use"):
                plane.start(replace(spec, listeners=listeners))
            assert not plane.is_running() and plane.pid is None
            assert _envoy_processes(tmp_path) == []


def test_envoy_that_exits_during_start_is_reported_with_its_log(system: System, tmp_path: Path) -> None:
    workdir = tmp_path / "exits"
    (workdir / "access.log").mkdir(parents=True)  # Envoy cannot open its access log and exits
    plane = DataPlane(workdir)
    with pytest.raises(EnvoyError, match=r"^envoy exited with code [1-9]\d*: .*access\.log"):
        plane.start(replace(system.spec(), listeners={s: _free_port() for s in CHAIN}))
    assert not plane.is_running() and plane.pid is None
    assert _envoy_processes(tmp_path) == []


def test_stop_leaves_no_process_and_is_idempotent(system: System, tmp_path: Path) -> None:
    listeners = {service: _free_port() for service in CHAIN}
    plane = DataPlane(tmp_path / "stopme")
    plane.start(replace(system.spec(), listeners=listeners))
    pid = plane.pid
    assert pid is not None and plane.is_running()
    DataPlane(tmp_path / "stopme").stop()  # as another process would
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    plane.stop()
    assert not plane.is_running() and plane.pid is None and plane.current_spec() is None
    assert not psutil.pid_exists(pid)
    assert _envoy_processes(tmp_path) == []


def test_admin_api_is_a_private_socket_and_envoy_gets_none_of_our_environment(
    plane: DataPlane, system: System
) -> None:
    """Confined code shares loopback: Envoy must not listen on any port but its listeners, and its
    environment (readable in /proc by its own user) must hold nothing of loopgate's."""
    pid = plane.pid
    assert pid is not None
    envoy = psutil.Process(pid)
    ports = {c.laddr.port for c in envoy.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    assert ports == set(system.listeners.values())
    socket_path = plane.admin_socket
    assert socket_path.is_socket() and socket_path.stat().st_mode & 0o077 == 0
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(socket_path))
        sock.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert b"LIVE" in sock.recv(4096)
    environ = envoy.environ()
    assert not [name for name in environ if name.startswith(("LOOPGATE_", "PYTEST_"))]
    assert set(environ) <= {"PATH"}


# -- 7. access log ---------------------------------------------------------------------------------


def _observed(plane: DataPlane, marker: str, count: int) -> list[LoggedRequest]:
    deadline = time.monotonic() + 5
    while True:
        records, _ = read_access_log(plane.access_log)
        mine = [r for r in records if marker in r.path]
        if len(mine) >= count or time.monotonic() > deadline:
            return mine
        time.sleep(0.05)


def test_access_log_records_sandbox_target_status_and_trace(routed: DataPlane, system: System) -> None:
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    _get(
        system.listeners["front"],
        "/logged-a/status/418",
        {"x-loopgate-sandbox": "sbx222", "traceparent": trace},
    )
    _get(system.listeners["front"], "/logged-b", {})
    by_service = {r.service: r for r in _observed(routed, "/logged-a", 3)}
    assert set(by_service) == set(CHAIN)
    assert {s: (r.routing_key, r.target) for s, r in by_service.items()} == {
        "front": ("sbx222", "sbx222"),
        "middle": ("sbx222", None),
        "back": ("sbx222", "sbx222"),
    }
    assert all(r.status == 418 and r.traceparent == trace and r.method == "GET" for r in by_service.values())
    assert by_service["middle"].baggage == "loopgate-sandbox=sbx222"
    assert by_service["back"].path == "/logged-a/status/418" and by_service["back"].response_flags == "-"
    assert by_service["front"].started_at.endswith("Z") and by_service["front"].duration_ms >= 0
    untagged = _observed(routed, "/logged-b", 3)
    assert {(r.routing_key, r.target, r.status) for r in untagged} == {(None, None, 200)}


def test_await_access_log_returns_with_every_answered_request_in_the_file(
    routed: DataPlane, system: System
) -> None:
    """Requests through three hops each, then the log read at once: every hop of every one is there,
    also while other traffic keeps Envoy's log buffer busy (its entries are not ours, and must not make
    the wait stop short of ours)."""
    stop = threading.Event()

    def background() -> None:
        while not stop.is_set():
            _get(system.listeners["back"], "/background", {})

    other = threading.Thread(target=background, daemon=True)
    other.start()
    try:
        for round_ in range(3):
            marker = f"/awaited-{round_}-"
            for n in range(20):
                _get(system.listeners["front"], f"{marker}{n}", bag("sbx111"))
            assert routed.await_access_log()
            records, _ = read_access_log(routed.access_log)
            mine = [r for r in records if r.path.startswith(marker)]
            assert len(mine) == 20 * len(CHAIN)
    finally:
        stop.set()
        other.join(timeout=10)
    assert not DataPlane(routed.access_log.parent / "not-started").await_access_log()


def test_access_log_reader_tolerates_a_partial_last_line(routed: DataPlane, tmp_path: Path) -> None:
    _observed(routed, "/", 1)
    full = routed.access_log.read_bytes()
    lines = full.splitlines(keepends=True)
    log = tmp_path / "access.log"
    log.write_bytes(b"".join(lines[:-1]) + lines[-1][:20])
    records, offset = read_access_log(log)
    assert len(records) == len(lines) - 1 and offset == len(b"".join(lines[:-1]))
    with log.open("ab") as out:
        out.write(lines[-1][20:] + b"not json\n")
    more, end = read_access_log(log, offset=offset)
    assert len(more) == 1 and end == log.stat().st_size
    assert read_access_log(log, offset=end) == ([], end)
    assert read_access_log(tmp_path / "missing.log") == ([], 0)


def test_baggage_routing_key_is_an_exact_member_match() -> None:
    member = "loopgate-sandbox"
    assert baggage_routing_key("loopgate-sandbox=abc123", member) == "abc123"
    assert baggage_routing_key("a=1, loopgate-sandbox = abc123 ;ttl=5 ,b=2", member) == "abc123"
    assert baggage_routing_key("xloopgate-sandbox=abc123", member) is None
    assert baggage_routing_key("loopgate-sandbox2=abc123", member) is None
    assert baggage_routing_key("a=1", member) is None
    assert baggage_routing_key(None, member) is None


# -- pure config -----------------------------------------------------------------------------------


def test_specs_are_validated_and_a_sandbox_is_one_endpoint_per_forked_service(system: System) -> None:
    spec = system.spec()
    with pytest.raises(ValueError, match="routing key"):
        replace(spec, forks={"Bad!": {}})
    with pytest.raises(ValueError, match="routing key"):
        replace(spec, forks={"baseline": {}})
    with pytest.raises(ValueError, match="no listener"):
        replace(spec, forks={"abc123": {"nosuch": Upstream("127.0.0.1", 1)}})
    with pytest.raises(ValueError, match="IP address"):
        replace(spec, forks={"abc123": {"back": Upstream("localhost", 1)}})
    with pytest.raises(ValueError, match="share"):
        replace(spec, forks={key: {"back": Upstream("127.0.0.1", 1)} for key in ("abc123", "abc1234")})
    # A sandbox is one endpoint of each service it forks, in its own subset, named for the access log.
    doc = endpoints_response("back", endpoints_of("back", spec), "7")
    assert doc["version_info"] == "7"
    assert sorted(endpoints_in(doc)) == sorted(
        ["baseline", *(key for key, forked in SANDBOXES.items() if "back" in forked)]
    )
    addresses = {
        e["metadata"]["filter_metadata"]["envoy.lb"]["sandbox"]: e["endpoint"]["address"]["socket_address"]
        for e in doc["resources"][0]["endpoints"][0]["lb_endpoints"]
    }
    assert addresses["abc123"]["port_value"] == system.upstream("back@abc123").port
