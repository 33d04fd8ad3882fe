"""The diff's gRPC probes, sent as real gRPC calls to a service's Envoy listener.

httpx speaks no HTTP/2 trailers, where a gRPC status lives, so a gRPC probe goes out on grpcio's
generic unary call (raw bytes in and out: the messages are built and read by `bot.verify.grpc` from the
base descriptors) to the same listener, with the same baggage, as an HTTP probe. The service is the
agent's code: its answer is bounded by gRPC's default 4 MiB receive limit (what a caller has too, so an
answer over it is the RESOURCE_EXHAUSTED a caller would see, said plainly), and its status message is
clipped.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Final

from bot.runtimes.protocol import GrpcAnswer, ProbeError

MAX_ANSWER_BYTES: Final = 4 * 1024 * 1024
"""gRPC's default `max_receive_message_length`: what callers built with defaults accept."""
MAX_MESSAGE_CHARS: Final = 400
_RESOURCE_EXHAUSTED: Final = 8
_OPTIONS: Final = [
    ("grpc.max_receive_message_length", MAX_ANSWER_BYTES),
    ("grpc.max_metadata_size", 64 * 1024),
    ("grpc.enable_retries", 0),
]
_TOO_LARGE: Final = "larger than max"


def call(target: str, method: str, body: bytes, metadata: Mapping[str, str], timeout: float) -> GrpcAnswer:
    """One unary call to `target` (`127.0.0.1:PORT`); every status is an answer."""
    grpc = importlib.import_module("grpc")  # on first use: most runs probe no gRPC service
    with grpc.insecure_channel(target, options=_OPTIONS) as channel:
        stub = channel.unary_unary(method, request_serializer=_raw, response_deserializer=_raw)
        try:
            answer = stub(body, metadata=[(k.lower(), v) for k, v in metadata.items()], timeout=timeout)
        except grpc.RpcError as exc:
            return _failed(exc, grpc)
    if not isinstance(answer, bytes):
        raise ProbeError("the gRPC call answered no message")
    return GrpcAnswer(0, "", answer)


def _raw(data: bytes) -> bytes:
    return data


def _failed(exc: Any, grpc: Any) -> GrpcAnswer:
    if not isinstance(exc, grpc.Call):
        raise ProbeError(f"gRPC call failed: {type(exc).__name__}") from None
    code = exc.code()
    number = code.value[0] if isinstance(code, grpc.StatusCode) else 2
    text = " ".join(str(exc.details() or "").split())
    if number == _RESOURCE_EXHAUSTED and _TOO_LARGE in text:
        text = f"the answer is over {MAX_ANSWER_BYTES // (1024 * 1024)} MiB, gRPC's default receive limit"
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 1] + "…"
    return GrpcAnswer(number, text, b"")
