"""A small real gRPC service (grpcio) for the data plane and health tests; no generated code.

Messages are JSON bytes on grpcio's generic handlers: gRPC frames whatever the payload is, and the tests
are about routing, statuses and health, not about protobuf. `Quote` is unary and, given a next hop,
calls that hop's `Quote` through Envoy with the caller's `baggage` forwarded as metadata (as
OpenTelemetry's gRPC instrumentation does); `Watch` is server-streaming. The health service is the
standard `grpc.health.v1.Health/Check`, its messages hand-encoded.

Run as a script it is a service process of its own (`python -m tests.grpc_fixture MODE PORT`), for
the readiness checks, which need a real child process that owns its port.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

QUOTE = "/shop.pricing.v1.Pricing/Quote"
WATCH = "/shop.pricing.v1.Pricing/Watch"
HEALTH = "/grpc.health.v1.Health/Check"
HUGE_MESSAGE = "x" * 200_000
_RAW: dict[str, Any] = {"request_deserializer": None, "response_serializer": None}


def _json(raw: bytes) -> Any:
    return json.loads(raw or b"{}")


def _baggage(context: grpc.ServicerContext, name: str = "baggage") -> str | None:
    values = [v for k, v in context.invocation_metadata() if k == name]
    return ",".join(values) if values else None


class Pricing:
    """One instance of the service: who it is, and where its next hop's Envoy listener is."""

    def __init__(self, identity: str, next_port: int | None = None, *, drops_baggage: bool = False) -> None:
        self.identity = identity
        self.next_port = next_port
        self.drops_baggage = drops_baggage  # forwards trace context only, as an uninstrumented client
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers([self._handlers()])
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def start(self) -> Pricing:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(grace=None)

    def _handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "shop.pricing.v1.Pricing",
            {
                "Quote": grpc.unary_unary_rpc_method_handler(self.quote, **_RAW),
                "Watch": grpc.unary_stream_rpc_method_handler(self.watch, **_RAW),
            },
        )

    def quote(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        body = _json(request)
        hop = {"identity": self.identity, "baggage": _baggage(context)}
        hops = [hop]
        if self.next_port is not None:
            names = ("traceparent",) if self.drops_baggage else ("baggage", "traceparent")
            forwarded = {name: _baggage(context, name) for name in names}
            metadata = [(name, value) for name, value in forwarded.items() if value]
            with grpc.insecure_channel(f"127.0.0.1:{self.next_port}") as channel:
                call = channel.unary_unary(QUOTE)
                try:
                    answer = call(request, metadata=metadata, timeout=10)
                except grpc.RpcError as exc:
                    context.abort(exc.code(), exc.details() or "")
            hops += _json(answer)["hops"]
        elif body.get("sku") == "missing":
            context.abort(grpc.StatusCode.NOT_FOUND, f"no sku {body['sku']}")
        elif body.get("sku") == "huge":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, HUGE_MESSAGE)
        return json.dumps({"hops": hops}).encode()

    def watch(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for index in range(3):
            yield json.dumps({"identity": self.identity, "index": index}).encode()
            time.sleep(0.02)


def call_quote(port: int, sku: str = "mug", metadata: list[tuple[str, str]] | None = None) -> list[str]:
    """The identities of the hops that answered a Quote sent to Envoy's listener on `port`."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = channel.unary_unary(QUOTE)(
            json.dumps({"sku": sku}).encode(), metadata=metadata or [], timeout=10
        )
    return [hop["identity"] for hop in _json(answer)["hops"]]


def call_watch(port: int, metadata: list[tuple[str, str]] | None = None) -> list[str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = channel.unary_stream(WATCH)(b"{}", metadata=metadata or [], timeout=10)
        return [_json(message)["identity"] for message in stream]


# -- health, as a process of its own --------------------------------------------------------------


def _health_server(port: int, mode: str) -> grpc.Server:
    """`serving-after-S`: NOT_SERVING for S seconds, then SERVING; `not-serving`; `garbage` (an answer
    that is no HealthCheckResponse); `huge-error` (UNAVAILABLE with a huge grpc-message)."""
    started = time.monotonic()

    def check(request: bytes, context: grpc.ServicerContext) -> bytes:
        if mode == "garbage":
            return b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"
        if mode == "huge-error":
            context.abort(grpc.StatusCode.UNAVAILABLE, HUGE_MESSAGE)
        if mode.startswith("serving-after-"):
            ready = time.monotonic() - started >= float(mode.rsplit("-", 1)[1])
            return b"\x08\x01" if ready else b"\x08\x02"
        return b"\x08\x02"

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(check, **_RAW)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": handler})]
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    return server


def _garbage_listener(port: int) -> None:
    """Not gRPC at all: every connection gets a burst of junk and is closed."""
    with socket.create_server(("127.0.0.1", port)) as listener:
        while True:
            conn, _ = listener.accept()
            with conn, contextlib.suppress(OSError):
                conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + b"\x00\xff" * 5000)


def main(argv: list[str]) -> None:
    mode, port = argv[0], int(argv[1])
    if mode == "tcp-garbage":
        _garbage_listener(port)
        return
    server = _health_server(port, mode)
    server.start()
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
