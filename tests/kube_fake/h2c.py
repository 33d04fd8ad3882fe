"""Cleartext HTTP/2 (h2c with prior knowledge) for the fake mesh's HTTP/1.1 ports: what gRPC clients send.

A Service that declares HTTP/2 gets grpcproxy's gRPC listener, which forwards each call to a ready pod's
port; for a meshed pod that port is its inbound sidecar, which must speak h2c as Istio's does, log the
call in the access log and pass it to the app. The mesh's handler peeks at a new connection (`is_h2c`);
one that opens with HTTP/2's connection preface is served here (`serve`): every request is read whole,
handed to the handler's `answer` callback, and the answer -- status, headers, body, trailers (where
gRPC puts its status) -- is written back on the request's stream. `forward` sends a request to an h2c
upstream (the app) and reads its whole answer, one connection per request. A Service port that
declares HTTP/1.1 answers h2c with 503, as a sidecar speaking HTTP/1.1 to a gRPC server fails.

Built on `h2` (the sans-IO HTTP/2 state machine): framing, HPACK and flow control are not the fake's
to write. Where the fake knowingly differs from a sidecar: a call is buffered whole in each direction,
so a streaming call is relayed when it ends (the shop makes unary calls only), and an upstream that
cannot be reached is answered with HTTP 503 (which gRPC clients read as UNAVAILABLE).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
Headers = list[tuple[str, str]]
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"})
_READ = 65536


@dataclass
class Exchange:
    """One HTTP/2 request, whole: pseudo-headers apart, `headers` the regular ones (gRPC metadata)."""

    method: str
    path: str
    authority: str
    headers: Headers
    body: bytes = b""


@dataclass
class Answer:
    status: int
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    trailers: Headers = field(default_factory=list)


def is_h2c(sock: socket.socket) -> bool:
    """Whether the connection opens with the HTTP/2 preface (peeked, so an HTTP/1.1 reader still gets
    every byte). An HTTP/1.1 request line never starts with `PRI * HTTP/2.0`."""
    seen = b""
    while len(seen) < len(PREFACE):
        try:
            seen = sock.recv(len(PREFACE), socket.MSG_PEEK)
        except OSError:
            return False
        if not seen or not PREFACE.startswith(seen):
            return False
        if len(seen) < len(PREFACE):
            threading.Event().wait(0.005)  # the rest of the preface is on its way
    return True


def _split(raw: Headers) -> tuple[dict[str, str], Headers]:
    pseudo = {k: v for k, v in raw if k.startswith(":")}
    regular = [(k, v) for k, v in raw if not k.startswith(":") and k not in _HOP_BY_HOP]
    return pseudo, regular


class _Connection:
    """One h2 state machine over one socket; sends are serialised, and a sender waits for the peer's
    flow-control window when a body is larger than it."""

    def __init__(self, sock: socket.socket, client_side: bool) -> None:
        self.sock = sock
        config = h2.config.H2Configuration(client_side=client_side, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=config)
        self.lock = threading.Condition()
        self.closed = False

    def flush(self) -> None:
        """Send what the state machine has queued (called with the lock held)."""
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def received(self, data: bytes) -> list[h2.events.Event]:
        with self.lock:
            events = self.h2.receive_data(data)
            for event in events:
                if isinstance(event, h2.events.DataReceived) and event.flow_controlled_length:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            self.flush()
            self.lock.notify_all()  # a WINDOW_UPDATE or SETTINGS may have opened a window
            return events

    def send(self, stream_id: int, headers: Headers, body: bytes, trailers: Headers | None) -> None:
        """Headers, body and (if any) trailers on one stream, ending it."""
        with self.lock:
            self.h2.send_headers(stream_id, headers, end_stream=not body and not trailers)
            self.flush()
            while body:
                window = min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
                if window <= 0:
                    if self.closed or not self.lock.wait(timeout=30):
                        raise TimeoutError("the peer never opened its flow-control window")
                    continue
                chunk, body = body[:window], body[window:]
                self.h2.send_data(stream_id, chunk, end_stream=not body and not trailers)
                self.flush()
            if trailers:
                self.h2.send_headers(stream_id, trailers, end_stream=True)
                self.flush()


def serve(sock: socket.socket, answer: Callable[[Exchange], Answer]) -> None:
    """Serve one h2c connection until the client closes it; each request is answered on its own thread
    (a slow call does not hold up the others multiplexed on the connection)."""
    conn = _Connection(sock, client_side=False)
    with conn.lock:
        conn.h2.initiate_connection()
        conn.flush()
    requests: dict[int, Exchange] = {}
    workers: list[threading.Thread] = []

    def respond(stream_id: int, exchange: Exchange) -> None:
        try:
            reply = answer(exchange)
        except Exception:
            reply = Answer(502)
        headers = [
            (":status", str(reply.status)),
            *[(k, v) for k, v in reply.headers if k not in _HOP_BY_HOP],
        ]
        with contextlib.suppress(OSError, TimeoutError, h2.exceptions.H2Error):
            conn.send(stream_id, headers, reply.body, reply.trailers or None)

    try:
        while True:
            try:
                data = sock.recv(_READ)
            except OSError:
                break
            if not data:
                break
            try:
                events = conn.received(data)
            except (OSError, h2.exceptions.H2Error):
                break
            for event in events:
                if isinstance(event, h2.events.RequestReceived):
                    pseudo, regular = _split(event.headers)
                    requests[event.stream_id] = Exchange(
                        pseudo.get(":method", "POST"),
                        pseudo.get(":path", "/"),
                        pseudo.get(":authority", ""),
                        regular,
                    )
                elif isinstance(event, h2.events.DataReceived) and event.stream_id in requests:
                    requests[event.stream_id].body += event.data
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id in requests:
                    worker = threading.Thread(
                        target=respond, args=(event.stream_id, requests.pop(event.stream_id)), daemon=True
                    )
                    workers.append(worker)
                    worker.start()
                elif isinstance(event, h2.events.StreamReset):
                    requests.pop(event.stream_id, None)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    return
    finally:
        with conn.lock:
            conn.closed = True
            conn.lock.notify_all()
        for worker in workers:
            worker.join()


def forward(
    port: int,
    exchange: Exchange,
    timeout_s: float,
    track: Callable[[socket.socket, bool], None] = lambda _sock, _add: None,
) -> Answer:
    """Send `exchange` to the h2c server on 127.0.0.1:`port`; its whole answer (503 when it cannot be
    reached, 504 when it does not answer in time). `track` is told of the upstream socket, so the
    mesh can shut it when it stops."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    except OSError:
        return Answer(503)
    track(sock, True)
    conn = _Connection(sock, client_side=True)
    try:
        with conn.lock:
            conn.h2.initiate_connection()
            conn.flush()
            stream_id = conn.h2.get_next_available_stream_id()
        headers = [
            (":method", exchange.method),
            (":scheme", "http"),
            (":authority", exchange.authority or f"127.0.0.1:{port}"),
            (":path", exchange.path),
            *exchange.headers,
        ]
        sender = threading.Thread(
            target=conn.send, args=(stream_id, headers, exchange.body, None), daemon=True
        )
        sender.start()
        reply = Answer(502)
        while True:
            data = sock.recv(_READ)
            if not data:
                return Answer(503) if reply.status == 502 else reply
            for event in conn.received(data):
                if getattr(event, "stream_id", stream_id) != stream_id:
                    continue
                if isinstance(event, h2.events.ResponseReceived):
                    pseudo, regular = _split(event.headers)
                    reply.status, reply.headers = int(pseudo.get(":status", "502")), regular
                elif isinstance(event, h2.events.DataReceived):
                    reply.body += event.data
                elif isinstance(event, h2.events.TrailersReceived):
                    reply.trailers = _split(event.headers)[1]
                elif isinstance(event, h2.events.StreamEnded):
                    return reply
                elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                    return Answer(503)
    except TimeoutError:
        return Answer(504)
    except (OSError, h2.exceptions.H2Error):
        return Answer(503)
    finally:
        with conn.lock:
            conn.closed = True
            conn.lock.notify_all()
        with contextlib.suppress(OSError):
            sock.close()
        track(sock, False)
