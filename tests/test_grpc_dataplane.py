"""gRPC and h2c through the local runtime's real Envoy, with real grpcio services (issue #14, item 2).

Two gRPC hops, front -> back, each a grpcio server that forwards the caller's `baggage` as metadata to
the next hop through Envoy; an HTTP/1.1 service beside them. Tagged calls must reach the forks at each
hop and untagged ones the baseline, streaming calls whole; the access log must name each call's method
path and gRPC status, so coverage and the request map work on gRPC traffic as on HTTP.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

from bot.runtimes.local.accesslog import LoggedRequest, read_access_log
from bot.runtimes.local.envoy import DataPlane
from bot.runtimes.local.xds import DataPlaneSpec, Upstream, bootstrap
from bot.verify import diagnose, tagged_counts
from bot.verify.requestmap import request_map
from tests.grpc_fixture import QUOTE, WATCH, Pricing, call_quote, call_watch

pytestmark = pytest.mark.timeout(180)  # a hang fails in 3 min; a busy 2-core CI host is no hang

FORKS = {"sbx111": ("back",), "sbx222": ("front", "back", "web"), "sbx333": ("front", "back")}
DROPS_BAGGAGE = "front@sbx333"
"""A fork whose outgoing calls lose the tag: the propagation diagnosis must name it."""


class _Web(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, identity: str) -> None:
        super().__init__(("127.0.0.1", 0), _WebHandler)
        self.identity = identity


class _WebHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Web

    def do_GET(self) -> None:
        payload = json.dumps({"identity": self.server.identity}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class System:
    def __init__(self) -> None:
        self.listeners = {name: _free_port() for name in ("front", "back", "web")}
        self.grpc: dict[str, Pricing] = {}
        self.web: dict[str, _Web] = {}
        for owner in ("baseline", *FORKS):
            if owner == "baseline" or "back" in FORKS[owner]:
                self.grpc[f"back@{owner}"] = Pricing(f"back@{owner}").start()
            if owner == "baseline" or "front" in FORKS[owner]:
                identity = f"front@{owner}"
                front = Pricing(identity, self.listeners["back"], drops_baggage=identity == DROPS_BAGGAGE)
                self.grpc[identity] = front.start()
            if owner == "baseline" or "web" in FORKS[owner]:
                web = _Web(f"web@{owner}")
                threading.Thread(target=web.serve_forever, daemon=True).start()
                self.web[f"web@{owner}"] = web

    def port(self, identity: str) -> int:
        if identity in self.grpc:
            return self.grpc[identity].port
        return int(self.web[identity].server_address[1])

    def spec(self) -> DataPlaneSpec:
        return DataPlaneSpec(
            listeners=self.listeners,
            baseline={s: Upstream("127.0.0.1", self.port(f"{s}@baseline")) for s in self.listeners},
            forks={
                key: {s: Upstream("127.0.0.1", self.port(f"{s}@{key}")) for s in services}
                for key, services in FORKS.items()
            },
            http2=frozenset({"front", "back"}),
        )

    def close(self) -> None:
        for server in self.grpc.values():
            server.stop()
        for web in self.web.values():
            web.shutdown()
            web.server_close()


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    made = System()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def plane(system: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPlane]:
    dp = DataPlane(tmp_path_factory.mktemp("envoy"))
    try:
        dp.start(system.spec())
        yield dp
    finally:
        dp.stop()


def _records(plane: DataPlane) -> list[LoggedRequest]:
    assert plane.await_access_log()
    return read_access_log(plane.access_log)[0]


def bag(key: str) -> list[tuple[str, str]]:
    return [("baggage", f"userid=7,loopgate-sandbox={key}")]


# -- routing ---------------------------------------------------------------------------------------


def test_only_http2_services_clusters_speak_http2_upstream(system: System, tmp_path: Path) -> None:
    # One cluster per service holds its baseline and every fork: they speak what the service speaks.
    clusters = bootstrap(tmp_path, system.spec())["static_resources"]["clusters"]
    h2 = {c["name"] for c in clusters if "typed_extension_protocol_options" in c}
    assert h2 == {"front", "back"} and len(clusters) == len(system.spec().listeners)


def test_untagged_grpc_call_reaches_the_baseline_at_both_hops(plane: DataPlane, system: System) -> None:
    assert call_quote(system.listeners["front"]) == ["front@baseline", "back@baseline"]
    assert call_quote(system.listeners["front"], metadata=[("baggage", "userid=7")]) == [
        "front@baseline",
        "back@baseline",
    ]


def test_tagged_grpc_call_reaches_the_fork_at_every_hop_it_forked(plane: DataPlane, system: System) -> None:
    front = system.listeners["front"]
    assert call_quote(front, metadata=bag("sbx111")) == ["front@baseline", "back@sbx111"]
    assert call_quote(front, metadata=bag("sbx222")) == ["front@sbx222", "back@sbx222"]
    # A member that only starts with the key is another sandbox's (exact member match).
    assert call_quote(front, metadata=bag("sbx1111")) == ["front@baseline", "back@baseline"]


def test_header_tag_on_grpc_metadata_becomes_baggage_for_the_next_hop(
    plane: DataPlane, system: System
) -> None:
    """Only `x-loopgate-sandbox` at the entry: Envoy adds the baggage member, front forwards baggage."""
    metadata = [("x-loopgate-sandbox", "sbx111")]
    assert call_quote(system.listeners["front"], metadata=metadata) == ["front@baseline", "back@sbx111"]


def test_streaming_calls_are_routed_whole(plane: DataPlane, system: System) -> None:
    assert call_watch(system.listeners["back"], metadata=bag("sbx111")) == ["back@sbx111"] * 3
    assert call_watch(system.listeners["back"]) == ["back@baseline"] * 3


# -- one listener, HTTP/1.1 and h2c ----------------------------------------------------------------


def _http1(port: int, headers: dict[str, str]) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/", headers=headers)
        response = conn.getresponse()
        assert response.status == 200
        body: dict[str, Any] = json.loads(response.read())
        return body
    finally:
        conn.close()


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _literal(name: str, value: str) -> bytes:
    """HPACK literal header field without indexing, new name, no Huffman (lengths < 127)."""
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def _h2c_get(port: int, extra: dict[str, str]) -> bytes:
    """One GET over cleartext HTTP/2 with prior knowledge, by hand: the frames a gRPC client sends
    first, without needing an HTTP/2 library. Returns the response's DATA."""
    block = b"\x82\x86\x84" + _literal(":authority", f"127.0.0.1:{port}")  # GET, http, /
    block += b"".join(_literal(name, value) for name, value in extra.items())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            + _frame(4, 0, 0, b"")  # SETTINGS
            + _frame(4, 1, 0, b"")  # ACK of the server's (sent ahead)
            + _frame(1, 0x5, 1, block)  # HEADERS, END_STREAM | END_HEADERS
        )
        data, buffer = b"", b""
        while True:
            chunk = sock.recv(65536)
            assert chunk, "connection closed before the response ended"
            buffer += chunk
            while len(buffer) >= 9:
                length = int.from_bytes(buffer[:3], "big")
                if len(buffer) < 9 + length:
                    break
                kind, flags, stream = buffer[3], buffer[4], int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
                payload, buffer = buffer[9 : 9 + length], buffer[9 + length :]
                assert kind != 3, "stream reset"  # RST_STREAM
                if stream == 1 and kind == 0:
                    data += payload
                if stream == 1 and kind in (0, 1) and flags & 0x1:
                    return data


def test_http1_and_h2c_clients_share_one_listener(plane: DataPlane, system: System) -> None:
    port = system.listeners["web"]
    assert _http1(port, {})["identity"] == "web@baseline"
    assert _http1(port, {"baggage": "loopgate-sandbox=sbx222"})["identity"] == "web@sbx222"
    assert json.loads(_h2c_get(port, {}))["identity"] == "web@baseline"
    assert json.loads(_h2c_get(port, {"baggage": "loopgate-sandbox=sbx222"}))["identity"] == "web@sbx222"
    assert json.loads(_h2c_get(port, {"x-loopgate-sandbox": "sbx222"}))["identity"] == "web@sbx222"


# -- the access log --------------------------------------------------------------------------------


def test_access_log_names_the_method_path_and_the_grpc_status(plane: DataPlane, system: System) -> None:
    back = system.listeners["back"]
    call_quote(back, "mug", bag("sbx111"))
    with pytest.raises(grpc.RpcError) as raised:
        call_quote(back, "missing", bag("sbx111"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    _http1(system.listeners["web"], {})
    records = _records(plane)
    quotes = [r for r in records if r.service == "back" and r.path == QUOTE and r.routing_key == "sbx111"]
    assert {r.grpc_status for r in quotes} >= {0, 5}
    assert all(r.method == "POST" and r.status == 200 and r.target == "sbx111" for r in quotes)
    watches = [r for r in records if r.path == WATCH]
    assert watches and all(r.grpc_status == 0 for r in watches)
    web = [r for r in records if r.service == "web"]
    assert web and all(r.grpc_status is None for r in web)


def test_coverage_and_request_map_count_grpc_calls(plane: DataPlane, system: System) -> None:
    call_quote(system.listeners["front"], metadata=bag("sbx222"))
    records = _records(plane)
    counts = tagged_counts("sbx222", records, forked=["front", "back"])
    assert counts.get("front", 0) >= 1 and counts.get("back", 0) >= 1
    edges = {(edge.source, edge.target): edge for edge in request_map("sbx222", records)}
    assert edges[("front", "back")].tagged >= 1 and not edges[("front", "back")].lost_tag


def test_propagation_diagnosis_names_a_grpc_service_that_drops_baggage(
    plane: DataPlane, system: System
) -> None:
    assert call_quote(system.listeners["front"], metadata=bag("sbx333")) == ["front@sbx333", "back@baseline"]
    records = _records(plane)
    assert tagged_counts("sbx333", records, forked=["front", "back"]).get("back", 0) == 0
    assert [(p.service, p.drops_baggage_to) for p in diagnose("sbx333", records)] == [("front", ["back"])]


def test_huge_grpc_message_is_an_error_not_a_broken_data_plane(plane: DataPlane, system: System) -> None:
    back = system.listeners["back"]
    with pytest.raises(grpc.RpcError) as raised:
        call_quote(back, "huge", bag("sbx111"))
    assert raised.value.code() != grpc.StatusCode.OK
    assert plane.is_running()
    assert call_quote(back, "mug", bag("sbx111")) == ["back@sbx111"]
    huge = [r for r in _records(plane) if r.service == "back" and r.routing_key == "sbx111"]
    assert huge and all(len(json.dumps(r.__dict__)) < 10_000 for r in huge)


def test_state_file_keeps_the_http2_services(plane: DataPlane, system: System) -> None:
    """Another process attaching to this Envoy must rebuild the same clusters."""
    spec = plane.current_spec()
    assert spec is not None and spec.http2 == frozenset({"front", "back"})
    assert Path(plane.access_log).exists()
