"""A real protobuf gRPC pricing service (grpcio + messages from its own `.proto`), for the gRPC diff tests.

Unlike `grpc_fixture` (JSON bytes on generic handlers, for routing), this one speaks protobuf: at start it
compiles the `.proto` files of its checkout with grpcio-tools' protoc into descriptors and builds its
messages from them, as generated code would, so an agent's edit to the proto (a renumbered field)
changes what goes on the wire. Every answer carries noise, as a real service's does: a fresh
`quote_id` and the time it was priced.

`MODE` is the behaviour: `base`; `value` (the mug costs more); `not-found` / `internal` (GetQuote of a
known sku fails with that status); `garbage` (GetQuote answers bytes that are no Quote); `huge`
(ListQuotes answers over 4 MiB). Run as a script: `python server.py MODE PORT [PROTO_DIR]` (`MODE` `file`:
the `mode.txt` beside it, which a branch can change).
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from concurrent import futures
from importlib import resources
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # type: ignore[import-untyped]
from grpc_tools import protoc  # type: ignore[import-untyped]

PROTO_PATH = "shop/pricing/v1/pricing.proto"
PROTO = """\
syntax = "proto3";
package shop.pricing.v1;

import "google/protobuf/timestamp.proto";

message QuoteRequest { string sku = 1; }
message Money {
  int64 cents = 1;
  string currency = 2;
}
message Quote {
  string sku = 1;
  Money amount = 2;
  google.protobuf.Timestamp priced_at = 3;
  string quote_id = 4;
}
message ListRequest {}
message Catalog { repeated Quote items = 1; }

service Pricing {
  rpc ListQuotes(ListRequest) returns (Catalog) { option idempotency_level = NO_SIDE_EFFECTS; }
  rpc GetQuote(QuoteRequest) returns (Quote) { option idempotency_level = NO_SIDE_EFFECTS; }
  rpc Reserve(QuoteRequest) returns (Quote);
}
"""
PRICES = {"mug": 1200, "towel": 800}
_RAW: dict[str, Any] = {"request_deserializer": None, "response_serializer": None}


def message_classes(proto_dir: Path) -> dict[str, Any]:
    """`Quote`, `Money`, ... built from the `.proto` under `proto_dir`, as generated code would be."""
    include = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "set.binpb"
        code = protoc.main(
            ["protoc", f"-I{proto_dir}", f"-I{include}", f"--descriptor_set_out={out}", "--include_imports",
             PROTO_PATH]
        )  # fmt: skip
        if code != 0:
            raise SystemExit(f"protoc failed: {code}")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    pool = descriptor_pool.DescriptorPool()
    for proto in files:  # --include_imports lists each file after what it imports
        pool.Add(proto)
    names = ("QuoteRequest", "Money", "Quote", "ListRequest", "Catalog")
    return {
        n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"shop.pricing.v1.{n}")) for n in names
    }


class Pricing:
    def __init__(self, proto_dir: Path, mode: str) -> None:
        self.types = message_classes(proto_dir)
        self.mode = mode

    def quote(self, sku: str) -> Any:
        cents = PRICES[sku] + (50 if self.mode == "value" and sku == "mug" else 0)
        quote = self.types["Quote"](sku=sku, quote_id=str(uuid.uuid4()))
        quote.amount.cents, quote.amount.currency = cents, "EUR"
        quote.priced_at.FromNanoseconds(time.time_ns())
        if "note" in quote.DESCRIPTOR.fields_by_name:  # the good change's new optional field
            quote.note = "handle with care"
        return quote

    def list_quotes(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        catalog = self.types["Catalog"]()
        catalog.items.extend(self.quote(sku) for sku in PRICES)
        if self.mode == "huge":
            catalog.items.add(sku="x" * (5 * 1024 * 1024))
        data: bytes = catalog.SerializeToString()
        return data

    def get_quote(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        sku = self.types["QuoteRequest"].FromString(request).sku
        if not sku:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sku is required")
        if sku not in PRICES:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no sku {sku}")
        if self.mode == "not-found":
            context.abort(grpc.StatusCode.NOT_FOUND, f"no price for {sku}")
        if self.mode == "internal":
            context.abort(grpc.StatusCode.INTERNAL, "pricing table unavailable " + "x" * 5000)
        if self.mode == "garbage":
            return b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"
        data: bytes = self.quote(sku).SerializeToString()
        return data

    def reserve(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "a write: never probed")
        return b""  # abort raises; unreached

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        def unary(method: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(method, **_RAW)

        pricing = {"ListQuotes": unary(self.list_quotes), "GetQuote": unary(self.get_quote)}
        pricing["Reserve"] = unary(self.reserve)
        health = {"Check": unary(lambda request, context: b"\x08\x01")}
        return [
            grpc.method_handlers_generic_handler("shop.pricing.v1.Pricing", pricing),
            grpc.method_handlers_generic_handler("grpc.health.v1.Health", health),
        ]


def serve(proto_dir: Path, mode: str, port: int = 0) -> tuple[grpc.Server, int]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.max_send_message_length", 64 << 20)]
    )
    server.add_generic_rpc_handlers(Pricing(proto_dir, mode).handlers())
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, bound


def main(argv: list[str]) -> None:
    mode, port = argv[0], int(argv[1])
    if mode == "file":  # what the checkout's `mode.txt` says: a branch changes the behaviour in a file
        mode = (Path(__file__).resolve().parent / "mode.txt").read_text().strip()
    proto_dir = Path(argv[2]) if len(argv) > 2 else Path(__file__).resolve().parent.parent / "proto"
    server, _ = serve(proto_dir, mode, port)  # kept: grpcio stops a server that is garbage-collected
    server.wait_for_termination()


if __name__ == "__main__":
    main(sys.argv[1:])
