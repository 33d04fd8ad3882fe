"""pricing: the price of a checkout's line items, over gRPC (`shop.pricing.v1.Pricing/Quote`).

A line costs unit price x quantity; a line of VOLUME_QTY units or more gets VOLUME_DISCOUNT_PERCENT off
(rounded down to the cent); a line over MAX_LINE_QTY units is refused with INVALID_ARGUMENT, the detail
naming the line. The standard `grpc.health.v1.Health` service says SERVING once the server listens.

The messages and stubs are compiled from proto/pricing.proto when the process starts
(`grpc.protos_and_services`: grpcio-tools' protoc, in memory): the .proto is the only source of the
contract, so no generated file can drift from it, the repository holds no generated code to review,
and a change to the contract is a change to that one file.

Run: `python -m pricing_server --port PORT` (binds 127.0.0.1; `--host` to change).
"""

from __future__ import annotations

import argparse
import signal
import sys
from concurrent import futures
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pricing_telemetry import server_interceptors

PROTO_DIR = Path(__file__).resolve().parent / "proto"
SERVICE = "shop.pricing.v1.Pricing"
MAX_LINE_QTY = 100
VOLUME_QTY = 10
VOLUME_DISCOUNT_PERCENT = 10


def _compile_contract() -> tuple[ModuleType, ModuleType]:
    """pricing_pb2 and pricing_pb2_grpc from proto/pricing.proto (protoc looks for it on sys.path)."""
    sys.path.insert(0, str(PROTO_DIR))
    try:
        return grpc.protos_and_services("pricing.proto")
    finally:
        sys.path.remove(str(PROTO_DIR))


pricing_pb2, pricing_pb2_grpc = _compile_contract()


def price_line(qty: int, unit_price_cents: int) -> tuple[int, int]:
    """(subtotal, discount) of one line, in cents."""
    subtotal = qty * unit_price_cents
    discount = subtotal * VOLUME_DISCOUNT_PERCENT // 100 if qty >= VOLUME_QTY else 0
    return subtotal, discount


class PricingService(pricing_pb2_grpc.PricingServicer):
    def Quote(self, request: Any, context: grpc.ServicerContext) -> Any:
        if not request.lines:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a quote needs at least one line")
        subtotal = discount = 0
        for line in request.lines:
            if line.qty <= 0 or line.unit_price_cents < 0:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{line.sku}: quantity {line.qty} at {line.unit_price_cents} cents cannot be priced",
                )
            if line.qty > MAX_LINE_QTY:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{line.sku}: {line.qty} units is over the limit of {MAX_LINE_QTY} per line",
                )
            line_subtotal, line_discount = price_line(line.qty, line.unit_price_cents)
            subtotal += line_subtotal
            discount += line_discount
        return pricing_pb2.QuoteReply(
            total_cents=subtotal - discount, subtotal_cents=subtotal, discount_cents=discount
        )


def serve(port: int, host: str = "127.0.0.1") -> tuple[grpc.Server, int]:
    """A started server with pricing and health; the port it bound (`port` 0: any free one)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), interceptors=server_interceptors())
    pricing_pb2_grpc.add_PricingServicer_to_server(PricingService(), server)
    checks = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    for name in ("", SERVICE):
        checks.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, bound


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pricing_server", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    server, _ = serve(args.port, args.host)

    def stop(signum: int, frame: FrameType | None) -> None:
        server.stop(grace=1)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
