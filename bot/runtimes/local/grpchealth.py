"""Readiness of a gRPC service: the standard health checking protocol, `grpc.health.v1.Health/Check`.

The two messages are tiny and fixed by the protocol (`HealthCheckRequest{string service = 1}`,
`HealthCheckResponse{ServingStatus status = 1}`, SERVING = 1), so they are encoded here by hand on
grpcio's generic unary call instead of pulling in generated stubs. The service is the agent's code: its
answer is hostile input. A connection that speaks no HTTP/2, a message that does not decode, an answer
larger than a health answer can be, or an error whose grpc-message is huge each end as a short, bounded
cause, never as a hang or a traceback.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc

CHECK_METHOD = "/grpc.health.v1.Health/Check"
SERVING = 1
STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
MAX_ANSWER_BYTES = 4096
"""A HealthCheckResponse is a few bytes; a service sending more is refused by grpcio before decoding."""
MAX_CAUSE = 160
"""Characters of a service's own error text kept in a cause: a huge grpc-message must not flood the
Evidence."""
_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_ANSWER_BYTES),
    ("grpc.max_metadata_size", 16 * 1024),
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
]


def encode_request(service: str) -> bytes:
    """`HealthCheckRequest{service}`: field 1, length-delimited; empty for the server as a whole."""
    data = service.encode()
    return b"\x0a" + _varint(len(data)) + data if data else b""


def decode_status(message: bytes) -> int | None:
    """The `status` (field 1, varint) of a HealthCheckResponse; None when the bytes are not one.

    Unknown fields are skipped as protobuf requires, so a newer health service still reads; a truncated
    or malformed message is None."""
    status = 0  # proto3: an absent enum is its zero value, UNKNOWN
    at = 0
    while at < len(message):
        key, at = _read_varint(message, at)
        if key is None:
            return None
        field, wire = key >> 3, key & 7
        if field == 0:
            return None
        if wire == 0:
            value, at = _read_varint(message, at)
            if value is None:
                return None
            if field == 1:
                status = value
        elif wire == 2:
            length, at = _read_varint(message, at)
            if length is None or at + length > len(message):
                return None
            at += length
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
            if at > len(message):
                return None
        else:
            return None
    return status


def health_problem(port: int, service: str, *, timeout: float = 1.0) -> str | None:
    """None when the server on `port` says `service` is SERVING, else a one-line cause."""
    grpc = importlib.import_module("grpc")  # on first use: most runs have no gRPC service to wait for
    target = f"127.0.0.1:{port}"
    with grpc.insecure_channel(target, options=_OPTIONS) as channel:
        check = channel.unary_unary(
            CHECK_METHOD,
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        try:
            answer = check(encode_request(service), timeout=timeout)
        except grpc.RpcError as exc:
            return _rpc_cause(exc, grpc)
    if not isinstance(answer, bytes):
        return "health check answered no message"
    status = decode_status(answer)
    if status is None:
        return "health check answered a message that is not a HealthCheckResponse"
    if status != SERVING:
        return f"health check answered {STATUS_NAMES.get(status, str(status))}"
    return None


def _rpc_cause(exc: grpc.RpcError, grpc: Any) -> str:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else None
    name = code.name if isinstance(code, grpc.StatusCode) else "no status"
    text = " ".join(str(details or "").split())
    if len(text) > MAX_CAUSE:
        text = text[:MAX_CAUSE] + "…"
    return f"health check failed: {name}" + (f" ({text})" if text else "")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int | None, int]:
    value = shift = 0
    while at < len(data) and shift < 64:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
    return None, at
