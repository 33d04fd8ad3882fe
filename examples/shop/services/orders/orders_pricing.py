"""orders' client of pricing: the price of a checkout over gRPC (`shop.pricing.v1.Pricing/Quote`).

orders is built against its own copy of pricing's contract (proto/pricing.proto, vendored as any
separately deployed client pins the version of an API it was written for), compiled when orders starts.
It reads the reply's fields by number: it keeps working while pricing adds fields, and misreads every
reply if pricing renumbers one.

What pricing's statuses mean to orders:
- INVALID_ARGUMENT: pricing refuses the order as asked (a line over its per-line limit): QuoteRefused,
  which the checkout answers 422 `quantity_over_limit` with pricing's detail.
- UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED: transient (gRPC's own retry guidance); Quote is
  idempotent, so it is retried under orders' policy, then PricingUnavailable.
- anything else: PricingUnavailable at once.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

PROTO_DIR = Path(__file__).resolve().parent / "proto"
TRANSIENT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
)


def _compile_contract() -> tuple[ModuleType, ModuleType]:
    """pricing_pb2 and pricing_pb2_grpc from orders' copy of the proto (protoc looks on sys.path)."""
    sys.path.insert(0, str(PROTO_DIR))
    try:
        return grpc.protos_and_services("pricing.proto")
    finally:
        sys.path.remove(str(PROTO_DIR))


pricing_pb2, pricing_pb2_grpc = _compile_contract()


class QuoteRefused(Exception):
    """pricing will not price the order as asked; the message is pricing's detail."""


class PricingUnavailable(Exception):
    """pricing could not be reached, or kept failing, within the retry policy."""


@dataclass(frozen=True)
class Quote:
    total_cents: int
    subtotal_cents: int
    discount_cents: int


def grpc_target(url: str) -> str:
    """loopgate's address of a service (`http://host:port`) as a gRPC target (`host:port`, cleartext)."""
    return url.removeprefix("http://").rstrip("/")


class PricingClient:
    """One channel to pricing for the life of the app. Made inside the running event loop (grpc.aio)."""

    def __init__(self, url: str, timeout_s: float, interceptors: Sequence[Any] = ()) -> None:
        self.timeout_s = timeout_s
        self._channel = grpc.aio.insecure_channel(grpc_target(url), interceptors=list(interceptors))
        self._stub = pricing_pb2_grpc.PricingStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def quote(
        self, sku: str, qty: int, unit_price_cents: int, *, attempts: int = 3, backoff_s: float = 0.05
    ) -> Quote:
        line = pricing_pb2.LineItem(sku=sku, qty=qty, unit_price_cents=unit_price_cents)
        request = pricing_pb2.QuoteRequest(lines=[line])
        for attempt in range(1, attempts + 1):
            try:
                reply = await self._stub.Quote(request, timeout=self.timeout_s)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    raise QuoteRefused(exc.details() or "pricing refused the order") from exc
                if code not in TRANSIENT or attempt == attempts:
                    raise PricingUnavailable(f"pricing Quote: {code.name}: {exc.details()}") from exc
            else:
                return Quote(reply.total_cents, reply.subtotal_cents, reply.discount_cents)
            await asyncio.sleep(backoff_s * 2 ** (attempt - 1))
        raise PricingUnavailable("pricing Quote: no attempt made")
