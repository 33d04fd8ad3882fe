"""Readiness of gRPC services: `grpc.health.v1` through real grpcio server processes (issue #14).

A service is ready only once its health service answers SERVING; one that answers NOT_SERVING,
garbage, or an error with a huge grpc-message is not, and the cause stays one short line.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.config.schema import HealthCheck
from bot.runtimes.local.grpchealth import decode_status, encode_request
from bot.runtimes.local.ports import free_port
from bot.runtimes.local.processes import wait_healthy

pytestmark = pytest.mark.timeout(180)  # a hang fails in 3 min; a busy 2-core CI host is no hang
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def start() -> Iterator[object]:
    started: list[subprocess.Popen[bytes]] = []

    def run(mode: str) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.grpc_fixture", mode, str(port)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(process)
        return process, port

    yield run
    for process in started:
        process.kill()
        process.wait()


def test_ready_only_once_the_health_service_says_serving(start) -> None:  # type: ignore[no-untyped-def]
    process, port = start("serving-after-1.5")
    began = time.monotonic()
    assert wait_healthy(process, port, HealthCheck(grpc=""), 20) is None
    assert time.monotonic() - began >= 1.4  # NOT_SERVING before that did not count


def test_not_serving_is_not_ready_and_says_so(start) -> None:  # type: ignore[no-untyped-def]
    process, port = start("not-serving")
    why = wait_healthy(process, port, HealthCheck(grpc="shop.pricing.v1.Pricing"), 2)
    assert why is not None and "NOT_SERVING" in why, why


def test_an_answer_that_is_no_health_response_is_not_ready(start) -> None:  # type: ignore[no-untyped-def]
    process, port = start("garbage")
    why = wait_healthy(process, port, HealthCheck(grpc=""), 2)
    assert why is not None and "not a HealthCheckResponse" in why, why


def test_a_port_answering_garbage_bytes_is_not_ready(start) -> None:  # type: ignore[no-untyped-def]
    process, port = start("tcp-garbage")
    why = wait_healthy(process, port, HealthCheck(grpc=""), 2)
    assert why is not None and "health check failed" in why and len(why) < 400, why


def test_a_huge_grpc_message_stays_a_short_cause(start) -> None:  # type: ignore[no-untyped-def]
    process, port = start("huge-error")
    why = wait_healthy(process, port, HealthCheck(grpc=""), 2)
    # grpcio refuses the trailer past its metadata limit (RESOURCE_EXHAUSTED) before anything reads it.
    assert why is not None and "health check failed" in why and "x" * 200 not in why, why
    assert len(why) < 400, why


def test_tcp_check_of_a_grpc_service_needs_only_the_port(start) -> None:  # type: ignore[no-untyped-def]
    process, port = start("not-serving")
    assert wait_healthy(process, port, HealthCheck(tcp=True), 20) is None


@pytest.mark.parametrize(
    ("message", "status"),
    [
        (b"", 0),
        (b"\x08\x01", 1),
        (b"\x08\x02", 2),
        (b"\x12\x03abc\x08\x01", 1),  # an unknown field first is skipped
        (b"\x08", None),  # truncated varint
        (b"\x12\x09abc", None),  # length past the end
        (b"\xff" * 11, None),
        (b"\x0f", None),  # wire type 7 does not exist
    ],
)
def test_health_response_decoding_is_total(message: bytes, status: int | None) -> None:
    assert decode_status(message) == status


def test_health_request_encoding() -> None:
    assert encode_request("") == b""
    assert encode_request("a.B") == b"\x0a\x03a.B"
