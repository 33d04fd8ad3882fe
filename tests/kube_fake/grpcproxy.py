"""The fake mesh's transport for gRPC: a Service whose port declares HTTP/2 gets a gRPC listener in place of
the HTTP/1.1 one, which routes each call by the mesh's decision (`Mesh.decide`, the same as for HTTP:
VirtualServices, or GRPCRoutes and HTTPRoutes) and forwards it, whole, to a ready pod of the chosen
Service.

Why gRPC-level and not a byte-level h2c proxy: grpcio is already a test dependency and frames, streams
and trailers come for free, while an HTTP/2 proxy needs an HPACK and framing library the project does not
have. A proxy that speaks HTTP/2 on the Service listener itself can replace this module whole: the mesh
reaches it only through `speaks_http2` and `GrpcServiceListener` (`Mesh._listen`). Whatever replaces it
keeps the rule below (a call to a destination that declares no HTTP/2 fails; tests/test_kube_grpc.py
checks it).

Like Istio, the mesh speaks HTTP/2 to a destination only when the destination Service's port says so
(`appProtocol` grpc, grpc-web, http2 or kubernetes.io/h2c, or a port name prefixed `grpc` or `http2`);
a call routed to a port that declares HTTP/1.1 fails UNAVAILABLE, as the sidecar's HTTP/1.1 request to a
gRPC server would, so a fork Service without its appProtocol is caught here as it would be in a cluster.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

from .errors import NotFound

Obj = dict[str, Any]
HTTP2_APP_PROTOCOLS = frozenset({"grpc", "grpc-web", "http2", "kubernetes.io/h2c"})
HTTP2_NAME_PREFIXES = ("grpc", "http2")
_NOT_FORWARDED = frozenset({"content-type", "te", "user-agent", "host"})
UPSTREAM_TIMEOUT_S = 60.0


def port_speaks_http2(port: Obj) -> bool:
    """Istio's explicit protocol selection for one Service port: appProtocol first, else the name's
    prefix (`grpc`, `grpc-web`, `http2-x`)."""
    declared = port.get("appProtocol")
    if declared:
        return str(declared).lower() in HTTP2_APP_PROTOCOLS
    name = str(port.get("name") or "").lower()
    return any(name == p or name.startswith(p + "-") for p in HTTP2_NAME_PREFIXES)


def speaks_http2(service: Obj | None, port: int | None = None) -> bool:
    """Whether Service `service` declares HTTP/2 on `port` (its first port when None)."""
    ports = ((service or {}).get("spec") or {}).get("ports") or []
    chosen = next((p for p in ports if port is None or p.get("port") == port), None)
    return chosen is not None and port_speaks_http2(chosen)


class GrpcServiceListener:
    """A Service's port for gRPC callers: `port` and `close()` as the mesh's HTTP/1.1 listeners."""

    def __init__(self, mesh: Any, namespace: str, service: str) -> None:
        self.mesh = mesh
        self.namespace = namespace
        self.service = service
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="fake-grpc"))
        self.server.add_generic_rpc_handlers([_Forwarder(self)])
        self.port = int(self.server.add_insecure_port("127.0.0.1:0"))
        self.server.start()

    def close(self) -> None:
        self.server.stop(grace=None).wait(5)

    def forward(
        self, method: str, metadata: list[tuple[str, str]], requests: Iterator[bytes], context: Any
    ) -> Iterator[bytes]:
        """One call, routed and relayed whole (streams included): messages, status and trailers."""
        from .mesh import apply_header_ops, endpoints  # the mesh imports this module

        headers = [*metadata, ("content-type", "application/grpc")]
        decision = self.mesh.decide(self.namespace, self.service, "POST", method, headers)
        if decision.status is not None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no healthy upstream")
        try:
            destination = self.mesh.store.get("Service", decision.namespace, decision.service)
        except NotFound:
            destination = None
        if not speaks_http2(destination, decision.port):
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"upstream connect error: Service {decision.namespace}/{decision.service} declares no HTTP/2"
                " port (appProtocol grpc or kubernetes.io/h2c), so the mesh spoke HTTP/1.1 to it",
            )
        chosen = endpoints(self.mesh.store, decision.namespace, decision.service, decision.port)
        if not chosen:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no healthy upstream")
        _, port = random.choice(chosen)
        sent = [
            (k.lower(), v)
            for k, v in apply_header_ops(headers, decision.headers)
            if k.lower() not in _NOT_FORWARDED and not k.startswith(":") and not k.lower().startswith("grpc-")
        ]
        timeout = context.time_remaining()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.stream_stream(method)(
                requests, metadata=sent, timeout=min(timeout or UPSTREAM_TIMEOUT_S, UPSTREAM_TIMEOUT_S)
            )
            try:
                yield from call
            except grpc.RpcError as exc:
                context.set_trailing_metadata(tuple(exc.trailing_metadata() or ()))
                context.abort(exc.code(), exc.details() or "")
            context.set_trailing_metadata(tuple(call.trailing_metadata() or ()))


class _Forwarder(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Every method of every service: the mesh does not know the protos, it forwards bytes."""

    def __init__(self, listener: GrpcServiceListener) -> None:
        self.listener = listener

    def service(self, details: Any) -> Any:
        method, metadata = str(details.method), [(k, str(v)) for k, v in details.invocation_metadata]

        def forward(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
            return self.listener.forward(method, metadata, requests, context)

        return grpc.stream_stream_rpc_method_handler(forward)
