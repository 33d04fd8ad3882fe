"""The fake cluster's service mesh: cluster DNS, one loopback proxy per Service, routing by the mesh objects.

loopgate's Kubernetes runtime proves itself only if tagged requests really reach the forks through the
objects it writes (Istio VirtualServices or Gateway API HTTPRoutes) and untagged ones never do; and it
learns what happened from the sidecars' access logs. So each Service gets a loopback port that behaves
like the Service's name inside a meshed pod: a request to it is routed the way the real mesh would
(`route_istio` / `route_gateway_api`, or straight to the Service with routing "none") and forwarded to
a ready pod of the chosen Service. Each pod that declares an `istio-proxy` container gets an inbound
sidecar port in front of its app (the pod's published port becomes the sidecar's), which logs every
request reaching the pod -- routed, sent by the API server's service proxy, or dialled directly -- into
that container's log in the Store, in the JSON access-log format of /work/k8s-spec.md.

Where the fake knowingly differs from Istio: a VirtualService none of whose routes matches sends the
request to the Service itself (Istio answers 404), and `sourceLabels` / `sourceNamespace` matches never
hold (the fake cannot tell which pod a loopback connection comes from).

`Mesh.dns` is the cluster DNS emulation the kubelet applies to env values: it rewrites
`http://orders.shop.svc.cluster.local:80`, `orders.shop:80` and `orders:80` (same namespace) to
`http://127.0.0.1:<the Service's mesh port>` (a scheme is kept as written, never added).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from . import grpcroutes, h2c
from .errors import NotFound
from .grpcproxy import GrpcServiceListener, speaks_http2
from .kubelet import LOOPBACK, PORTS_ANNOTATION, pod_is_ready, pod_ports, selector_matches

Obj = dict[str, Any]
Headers = list[tuple[str, str]]
ROUTINGS = ("istio", "gateway-api", "none")
CLUSTER_DOMAIN = "svc.cluster.local"
APP_PORTS_ANNOTATION = "fake.loopgate.test/app-ports"
"""Where a meshed pod's app really listens; `fake.loopgate.test/ports` then names its inbound sidecar."""
UPSTREAM_TIMEOUT_S = 60.0
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_ADDRESS = re.compile(
    rf"(?<![\w.@/-])(?P<scheme>[a-z][a-z0-9+.-]*://)?(?P<host>{_LABEL}(?:\.{_LABEL})*)(?::(?P<port>\d+))?(?![\w.-])"
)


# ------------------------------------------------------------------------------------- decisions


@dataclass
class Decision:
    """Where the mesh sends one request: a Service (and optionally its port) plus header edits."""

    namespace: str
    service: str
    port: int | None = None
    headers: Headers = field(default_factory=list)
    status: int | None = None  # set when the mesh answers itself (e.g. a rule with no backends)


@dataclass(frozen=True)
class Request:
    """What routing looks at: method, path (no query), query parameters and headers (names lowercased,
    repeated headers joined with ",", as Envoy's header matcher sees them)."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    port: int

    @classmethod
    def of(cls, method: str, target: str, headers: Headers, port: int) -> Request:
        parts = urlsplit(target)
        joined: dict[str, str] = {}
        for name, value in headers:
            key = name.lower()
            joined[key] = f"{joined[key]},{value}" if key in joined else value
        return cls(
            method, parts.path or "/", dict(parse_qsl(parts.query, keep_blank_values=True)), joined, port
        )


def fqdn(host: str, namespace: str) -> str:
    """A Service host as Istio resolves it relative to the object's namespace."""
    host = host.lower().rstrip(".")
    if host.endswith(f".{CLUSTER_DOMAIN}") or host.startswith("*"):
        return host
    labels = host.split(".")
    if len(labels) == 1:
        return f"{host}.{namespace}.{CLUSTER_DOMAIN}"
    if len(labels) == 2:
        return f"{host}.{CLUSTER_DOMAIN}"
    if len(labels) == 3 and labels[2] == "svc":
        return f"{host}.cluster.local"
    return host


def _service_of(host: str) -> tuple[str, str] | None:
    labels = host.split(".")
    if host.endswith(f".{CLUSTER_DOMAIN}") and len(labels) == 5:
        return labels[1], labels[0]
    return None


def _string_match(spec: Mapping[str, Any], value: str | None) -> bool:
    """Istio StringMatch: exact, prefix or regex (RE2 full match); an empty one means "present"."""
    if value is None:
        return False
    if "exact" in spec:
        return bool(value == spec["exact"])
    if "prefix" in spec:
        return value.startswith(spec["prefix"])
    if "regex" in spec:
        return re.fullmatch(spec["regex"], value) is not None
    return True


def _istio_match(match: Mapping[str, Any], req: Request) -> bool:
    """One HTTPMatchRequest: every condition it states must hold (the ones a fake cannot see, the
    source pod's labels or namespace, never hold)."""
    if "sourceLabels" in match or "sourceNamespace" in match:
        return False
    if "uri" in match:
        path = req.path.lower() if match.get("ignoreUriCase") else req.path
        spec = {
            k: (v.lower() if match.get("ignoreUriCase") and k != "regex" else v)
            for k, v in match["uri"].items()
        }
        if not _string_match(spec, path):
            return False
    if "method" in match and not _string_match(match["method"], req.method):
        return False
    if "authority" in match and not _string_match(match["authority"], req.headers.get("host")):
        return False
    if "port" in match and int(match["port"]) != req.port:
        return False
    for name, spec in (match.get("headers") or {}).items():
        if not _string_match(spec, req.headers.get(name.lower())):
            return False
    for name, spec in (match.get("withoutHeaders") or {}).items():
        if _string_match(spec, req.headers.get(name.lower())):
            return False
    query = match.get("queryParams") or {}
    return all(_string_match(spec, req.query.get(name)) for name, spec in query.items())


def _istio_header_ops(spec: Mapping[str, Any] | None) -> Headers:
    """`headers.request` as edits: ("set:name", v), ("add:name", v), ("remove:name", "")."""
    request = (spec or {}).get("request") or {}
    ops: Headers = [(f"set:{k}", str(v)) for k, v in (request.get("set") or {}).items()]
    ops += [(f"add:{k}", str(v)) for k, v in (request.get("add") or {}).items()]
    ops += [(f"remove:{k}", "") for k in request.get("remove") or []]
    return ops


def _weighted(items: Sequence[Obj], weight_of: Callable[[Obj], int]) -> Obj | None:
    weights = [max(0, weight_of(item)) for item in items]
    if not items or not any(weights):
        return items[0] if items and len(items) == 1 else None
    return random.choices(list(items), weights=weights)[0]


def route_istio(
    virtual_services: Iterable[Obj], namespace: str, service: str, req: Request
) -> Decision | None:
    """The destination Istio's sidecar picks for a request to Service `service`, or None when no
    VirtualService applies to it or none of its routes matches (the request then goes to the Service).

    A VirtualService applies when one of its `hosts` (relative to its namespace) is the Service and it
    binds to the mesh (no `gateways`, or "mesh" among them); several: the oldest wins. Its `http`
    routes are tried in order; the first whose `match` list is empty or has one matching entry decides.
    """
    target = f"{service}.{namespace}.{CLUSTER_DOMAIN}"
    applicable = []
    for vs in virtual_services:
        vs_ns = vs["metadata"]["namespace"]
        spec = vs.get("spec") or {}
        gateways = spec.get("gateways")
        if gateways and "mesh" not in gateways:
            continue
        hosts = [fqdn(h, vs_ns) for h in spec.get("hosts") or []]
        if any(h == target or (h.startswith("*") and target.endswith(h[1:])) for h in hosts):
            applicable.append(vs)
    if not applicable:
        return None
    vs = min(applicable, key=lambda v: (v["metadata"].get("creationTimestamp", ""), v["metadata"]["name"]))
    vs_ns = vs["metadata"]["namespace"]
    for route in vs["spec"].get("http") or []:
        matches = route.get("match") or []
        if matches and not any(_istio_match(m, req) for m in matches):
            continue
        chosen = _weighted(route.get("route") or [], lambda d: int(d.get("weight", 100)))
        if chosen is None:
            return Decision(namespace, service, status=500)
        destination = chosen["destination"]
        where = _service_of(fqdn(destination["host"], vs_ns))
        if where is None:
            return Decision(namespace, service, status=503)
        port = (destination.get("port") or {}).get("number")
        ops = _istio_header_ops(route.get("headers")) + _istio_header_ops(chosen.get("headers"))
        return Decision(where[0], where[1], int(port) if port else None, ops)
    return None


def _gw_path(match: Mapping[str, Any], path: str) -> bool:
    spec = match.get("path") or {"type": "PathPrefix", "value": "/"}
    kind, value = spec.get("type", "PathPrefix"), spec.get("value", "/")
    if kind == "Exact":
        return bool(path == value)
    if kind == "RegularExpression":
        return re.fullmatch(value, path) is not None
    prefix = value.rstrip("/")
    return not prefix or path == prefix or path.startswith(prefix + "/")


def _gw_value(spec: Mapping[str, Any], value: str | None) -> bool:
    if value is None:
        return False
    if spec.get("type", "Exact") == "RegularExpression":
        return re.fullmatch(spec["value"], value) is not None
    return bool(value == spec["value"])


def _gw_match(match: Mapping[str, Any], req: Request) -> bool:
    return (
        _gw_path(match, req.path)
        and ("method" not in match or match["method"] == req.method)
        and all(_gw_value(h, req.headers.get(h["name"].lower())) for h in match.get("headers") or [])
        and all(_gw_value(q, req.query.get(q["name"])) for q in match.get("queryParams") or [])
    )


def _gw_precedence(
    route: Obj, rule_index: int, match_index: int, match: Mapping[str, Any]
) -> tuple[Any, ...]:
    """Gateway API's order among matches of all routes of one parent: Exact path, then the longest
    prefix, then a method match, then more header matches, then more query matches; ties go to the
    oldest route, then the alphabetical namespace/name, then the rule and match order."""
    path = match.get("path") or {"type": "PathPrefix", "value": "/"}
    kind = path.get("type", "PathPrefix")
    return (
        0 if kind == "Exact" else 1 if kind == "PathPrefix" else 2,
        -len(path.get("value", "/")),
        0 if "method" in match else 1,
        -len(match.get("headers") or []),
        -len(match.get("queryParams") or []),
        route["metadata"].get("creationTimestamp", ""),
        f"{route['metadata']['namespace']}/{route['metadata']['name']}",
        rule_index,
        match_index,
    )


def _gw_header_ops(filters: Iterable[Obj]) -> Headers:
    ops: Headers = []
    for f in filters:
        if f.get("type") != "RequestHeaderModifier":
            continue
        mod = f.get("requestHeaderModifier") or {}
        ops += [(f"set:{h['name']}", h["value"]) for h in mod.get("set") or []]
        ops += [(f"add:{h['name']}", h["value"]) for h in mod.get("add") or []]
        ops += [(f"remove:{name}", "") for name in mod.get("remove") or []]
    return ops


def route_gateway_api(
    routes: Iterable[Obj], namespace: str, service: str, service_port: int, req: Request
) -> Decision | None:
    """The destination a GAMMA implementation picks for a request to Service `service`, or None when no
    attached HTTPRoute rule matches (the request then goes to the Service itself).

    A route is attached by a `parentRefs` entry `{group: "", kind: Service, name}` (namespace defaulting
    to the route's, `port` if given equal to the Service port). Across all attached routes, the most
    specific matching match wins (`_gw_precedence`); its rule's `backendRefs` (weighted) decide.
    """
    candidates = []
    for route in routes:
        route_ns = route["metadata"]["namespace"]
        attached = any(
            ref.get("group", "gateway.networking.k8s.io") == ""
            and ref.get("kind") == "Service"
            and ref.get("name") == service
            and ref.get("namespace", route_ns) == namespace
            and ref.get("port", service_port) == service_port
            for ref in (route.get("spec") or {}).get("parentRefs") or []
        )
        if not attached:
            continue
        for i, rule in enumerate(route["spec"].get("rules") or [{}]):
            for j, match in enumerate(rule.get("matches") or [{}]):
                candidates.append((_gw_precedence(route, i, j, match), route_ns, rule, match))
    for _, route_ns, rule, match in sorted(candidates, key=lambda c: c[0]):
        if not _gw_match(match, req):
            continue
        refs = [
            r
            for r in rule.get("backendRefs") or []
            if r.get("group", "") == "" and r.get("kind", "Service") == "Service"
        ]
        chosen = _weighted(refs, lambda r: int(r.get("weight", 1)))
        if chosen is None:
            return Decision(namespace, service, status=500)
        ops = _gw_header_ops(rule.get("filters") or []) + _gw_header_ops(chosen.get("filters") or [])
        port = chosen.get("port")
        return Decision(chosen.get("namespace", route_ns), chosen["name"], int(port) if port else None, ops)
    return None


def _grpc_decision(routes: list[Obj], namespace: str, service: str, req: Request) -> Decision | None:
    """`grpcroutes.route_grpc` as the mesh's Decision (None: no rule matched, the Service itself)."""
    target = grpcroutes.route_grpc(routes, req.path, req.headers)
    if target is None:
        return None
    if not target.service:
        return Decision(namespace, service, status=500)
    return Decision(target.namespace, target.service, target.port, _gw_header_ops(target.filters))


def apply_header_ops(headers: Headers, ops: Headers) -> Headers:
    """Header edits as Envoy applies them: set replaces every value, add appends another header line
    (so `baggage` may arrive twice and is read as the comma-joined list), remove drops all."""
    out = list(headers)
    for op, value in ops:
        action, _, name = op.partition(":")
        key = name.lower()
        if action in ("set", "remove"):
            out = [(k, v) for k, v in out if k.lower() != key]
        if action in ("set", "add"):
            out.append((name, value))
    return out


# ------------------------------------------------------------------------------------- endpoints


def _container_names(pod: Obj) -> list[str]:
    """Every container a pod declares, native sidecars (init containers) included: Istio's native
    sidecar mode puts `istio-proxy` among the init containers."""
    spec = pod.get("spec") or {}
    return [
        str(c.get("name")) for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]
    ]


def _service_port(service: Obj, wanted: int | None) -> Obj | None:
    ports = (service.get("spec") or {}).get("ports") or []
    if wanted is not None:
        return next((p for p in ports if p.get("port") == wanted), None)
    return ports[0] if ports else None


def _container_port(pod: Obj, target: int | str) -> int | None:
    """A Service targetPort on a pod: a number as is, a name looked up among the containers' ports."""
    if isinstance(target, int) or str(target).isdigit():
        return int(target)
    for container in pod["spec"].get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == target:
                return int(port["containerPort"])
    return None


def endpoints(store: Any, namespace: str, service: str, port: int | None) -> list[tuple[Obj, int]]:
    """The ready pods behind a Service port and, for each, the loopback port its container listens on."""
    try:
        svc = store.get("Service", namespace, service)
    except NotFound:
        return []
    sp = _service_port(svc, port)
    if sp is None:
        return []
    out = []
    for pod in store.list("Pod", namespace):
        if not selector_matches(svc["spec"].get("selector"), pod["metadata"].get("labels")):
            continue
        if not pod_is_ready(pod):
            continue
        container_port = _container_port(pod, sp.get("targetPort") or sp["port"])
        loopback = pod_ports(pod).get(str(container_port))
        if loopback is not None:
            out.append((pod, loopback))
    return out


def access_log_line(
    started: float,
    method: str,
    path: str,
    status: int,
    duration_ms: int,
    headers: Headers,
    upstream: str = "-",
) -> str:
    """One inbound access-log entry in the JSON format loopgate's meshConfig asks Istio for (k8s-spec)."""
    joined = Request.of(method, path, headers, 0).headers
    moment = datetime.fromtimestamp(started, UTC)
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return json.dumps(
        {
            "start_time": stamp,
            "method": method,
            "path": path,
            "response_code": status,
            "duration": duration_ms,
            "baggage": joined.get("baggage", "-"),
            "traceparent": joined.get("traceparent", "-"),
            "x_loopgate_sandbox": joined.get("x-loopgate-sandbox", "-"),
            "upstream_cluster": upstream,
        }
    )


# ------------------------------------------------------------------------------------------ proxy


class _Listener(ThreadingHTTPServer):
    """A loopback port of the mesh. Tracks its open sockets so `close` can end keep-alive connections
    and upstream calls at once, then joins every handler thread."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, mesh: Mesh, handler: type[BaseHTTPRequestHandler], label: str) -> None:
        self.mesh = mesh
        self.sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__((LOOPBACK, 0), handler)
        self.port = int(self.server_address[1])
        self.thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True, name=f"fake-mesh-{label}"
        )
        self.thread.start()

    def track(self, sock: socket.socket | None, add: bool) -> None:
        if sock is None:
            return
        with self.sockets_lock:
            (self.sockets.add if add else self.sockets.discard)(sock)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up mid-answer is normal for a proxy: nothing to report."""

    def close(self) -> None:
        self.shutdown()
        self.thread.join()
        with self.sockets_lock:
            open_sockets = list(self.sockets)
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.server_close()


class _ServiceListener(_Listener):
    """A Service's port: what a meshed pod reaches when it dials the Service's name."""

    def __init__(self, mesh: Mesh, namespace: str, service: str) -> None:
        self.namespace = namespace
        self.service = service
        super().__init__(mesh, _ServiceHandler, f"{namespace}-{service}")


class _SidecarListener(_Listener):
    """A meshed pod's inbound port: in front of the app's own port, logging every request it serves."""

    def __init__(self, mesh: Mesh, pod: Obj, app_port: int) -> None:
        self.pod = pod
        self.app_port = app_port
        super().__init__(mesh, _SidecarHandler, f"{pod['metadata']['name']}-inbound")


class _ProxyHandler(BaseHTTPRequestHandler):
    """Reads a request, forwards it to one loopback port and streams the answer back."""

    protocol_version = "HTTP/1.1"
    server: _Listener

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # the access log goes to the Store instead
        return

    def do_GET(self) -> None:
        self._proxy()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _proxy(self) -> None:
        raise NotImplementedError

    def handle(self) -> None:
        """HTTP/1.1, or an h2c connection (a gRPC client's) served by `h2c` with `_answer_h2`."""
        if h2c.is_h2c(self.connection):
            h2c.serve(self.connection, self._answer_h2)
        else:
            super().handle()

    def _answer_h2(self, exchange: h2c.Exchange) -> h2c.Answer:
        """A Service port that declares HTTP/1.1 refuses HTTP/2, as the sidecar's HTTP/1.1 request to a
        gRPC server fails (a Service that declares HTTP/2 gets grpcproxy's listener instead)."""
        return h2c.Answer(503)

    def _forward_h2(self, port: int, exchange: h2c.Exchange) -> h2c.Answer:
        return h2c.forward(port, exchange, UPSTREAM_TIMEOUT_S, self.server.track)

    def _request(self) -> tuple[bytes, Headers]:
        """The request's body and its end-to-end headers (hop-by-hop ones and the length dropped)."""
        headers: Headers = [
            (k, v)
            for k, v in self.headers.items()
            if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"
        ]
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks), headers
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return (self.rfile.read(length) if length else b""), headers

    def _answer(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.send_header("server", "envoy")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _forward(self, port: int, body: bytes, headers: Headers) -> int:
        """Send the request to the pod and stream its answer back; the status code answered."""
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=UPSTREAM_TIMEOUT_S)
        try:
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    conn.putheader(name, value)
                if body or self.command in ("POST", "PUT", "PATCH"):
                    conn.putheader("content-length", str(len(body)))
                conn.endheaders(body or None)
                self.server.track(conn.sock, True)
                response = conn.getresponse()
            except TimeoutError:
                self._answer(504, "upstream request timeout")
                return 504
            except OSError:
                self._answer(
                    503,
                    "upstream connect error or disconnect/reset before headers. "
                    "reset reason: connection failure",
                )
                return 503
            self._relay(response)
            return response.status
        finally:
            self.server.track(conn.sock, False)
            conn.close()

    def _relay(self, response: http.client.HTTPResponse) -> None:
        self.send_response_only(response.status, response.reason)
        length = response.getheader("content-length")
        for name, value in response.getheaders():
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        no_body = self.command == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200
        chunked = not no_body and length is None
        if chunked:
            self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        if no_body:
            return
        while chunk := response.read1(65536):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            self.wfile.flush()
        if chunked:
            self.wfile.write(b"0\r\n\r\n")


class _ServiceHandler(_ProxyHandler):
    """The outbound side: routes by the mesh objects, then sends to a ready pod of the chosen Service
    (through that pod's inbound sidecar when it has one, which writes the access log)."""

    server: _ServiceListener

    def _proxy(self) -> None:
        mesh, listener = self.server.mesh, self.server
        body, headers = self._request()
        decision = mesh.decide(listener.namespace, listener.service, self.command, self.path, headers)
        headers = apply_header_ops(headers, decision.headers)
        if decision.status is not None:
            self._answer(decision.status, "no healthy upstream" if decision.status == 503 else "")
            return
        chosen = endpoints(mesh.store, decision.namespace, decision.service, decision.port)
        if not chosen:
            self._answer(503, "no healthy upstream")
            return
        _, port = random.choice(chosen)
        self._forward(port, body, headers)


class _SidecarHandler(_ProxyHandler):
    """The inbound side of one pod: every request that reaches the pod -- routed by the mesh, sent by
    the API server's service proxy, or dialled directly -- is forwarded to the app and logged."""

    server: _SidecarListener

    def _proxy(self) -> None:
        started, t0 = time.time(), time.monotonic()
        body, headers = self._request()
        status = self._forward(self.server.app_port, body, headers)
        elapsed = int((time.monotonic() - t0) * 1000)
        self.server.mesh.log_access(
            self.server.pod, started, self.command, self.path, status, elapsed, headers
        )

    def _answer_h2(self, exchange: h2c.Exchange) -> h2c.Answer:
        started, t0 = time.time(), time.monotonic()
        answer = self._forward_h2(self.server.app_port, exchange)
        elapsed = int((time.monotonic() - t0) * 1000)
        self.server.mesh.log_access(
            self.server.pod, started, exchange.method, exchange.path, answer.status, elapsed, exchange.headers
        )
        return answer


# ------------------------------------------------------------------------------------------- mesh


class Mesh:
    """Per-Service loopback proxies and cluster DNS for the fake cluster (see the module docstring).

    Ports are allocated when a Service appears (or when an address is resolved before it does) and
    freed when it is deleted. `access_log_container` is the sidecar whose log receives access-log lines
    (only pods that declare a container of that name get them, as only meshed pods have a sidecar).
    """

    def __init__(self, store: Any, routing: str = "istio", access_log_container: str = "istio-proxy") -> None:
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be istio, gateway-api or none, not {routing!r}")
        self.store = store
        self.routing = routing
        self.access_log_container = access_log_container
        self._listeners: dict[tuple[str, str], _ServiceListener | GrpcServiceListener] = {}
        self._sidecars: dict[str, _SidecarListener] = {}  # pod uid → its inbound sidecar
        self._lock = threading.Lock()
        self._closers: list[threading.Thread] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._stopped = False

    def start(self) -> None:
        self._unsubscribe = self.store.subscribe(self._on_event)
        for svc in self.store.list("Service"):
            self.port_of(svc["metadata"]["namespace"], svc["metadata"]["name"])
        for pod in self.store.list("Pod"):
            self._on_pod("ADDED", pod)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        with self._lock:
            self._stopped = True
            listeners: list[_Listener | GrpcServiceListener] = [
                *self._listeners.values(),
                *self._sidecars.values(),
            ]
            self._listeners.clear()
            self._sidecars.clear()
            closers = list(self._closers)
        for listener in listeners:
            listener.close()
        for closer in closers:
            closer.join()

    def port_of(self, namespace: str, service: str) -> int:
        """The loopback port standing for Service `namespace/service` (allocated on first use)."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("the mesh is stopped")
            listener = self._listeners.get((namespace, service))
            if listener is None:
                listener = self._listeners[(namespace, service)] = self._listen(namespace, service)
            return listener.port

    def _listen(self, namespace: str, service: str) -> _ServiceListener | GrpcServiceListener:
        """The transport of a Service's port: gRPC where the Service declares HTTP/2 (see grpcproxy)."""
        try:
            declared = speaks_http2(self.store.get("Service", namespace, service))
        except NotFound:
            declared = False
        return (GrpcServiceListener if declared else _ServiceListener)(self, namespace, service)

    def dns(self, value: str, namespace: str | None = None) -> str:
        """`value` with every in-cluster Service address rewritten to its mesh port on 127.0.0.1.

        FQDNs (`name.ns.svc.cluster.local`, `name.ns.svc`) are always rewritten; `name.ns` and `name`
        (relative to `namespace`) only with a scheme or port and when such a Service exists, so that
        ordinary words and external hosts pass unchanged."""

        def repl(m: re.Match[str]) -> str:
            scheme, host, port = m.group("scheme") or "", m.group("host"), m.group("port")
            labels = host.split(".")
            fully_qualified = host.endswith(f".{CLUSTER_DOMAIN}") and len(labels) == 5
            relative = len(labels) == 2 and (scheme or port) and self._exists(labels[1], labels[0])
            if fully_qualified or (len(labels) == 3 and labels[2] == "svc") or relative:
                ns, name = labels[1], labels[0]
            elif len(labels) == 1 and (scheme or port) and namespace and self._exists(namespace, host):
                ns, name = namespace, host
            else:
                return m.group(0)
            return f"{scheme}{LOOPBACK}:{self.port_of(ns, name)}"

        return _ADDRESS.sub(repl, value)

    def _exists(self, namespace: str, service: str) -> bool:
        with self._lock:
            if (namespace, service) in self._listeners:
                return True
        try:
            self.store.get("Service", namespace, service)
        except NotFound:
            return False
        return True

    def decide(self, namespace: str, service: str, method: str, target: str, headers: Headers) -> Decision:
        """Where a request that arrived at Service `namespace/service` goes, per the routing mode."""
        try:
            svc = self.store.get("Service", namespace, service)
        except NotFound:
            return Decision(namespace, service, status=503)
        first = _service_port(svc, None)
        port = int(first["port"]) if first else 80
        req = Request.of(method, target, headers, port)
        decision: Decision | None = None
        if self.routing == "istio":
            decision = route_istio(self.store.list("VirtualService"), namespace, service, req)
        elif self.routing == "gateway-api":
            # GEP-1426: where GRPCRoutes attach to the Service, its HTTPRoutes are ignored.
            grpc_routes = grpcroutes.attached(self.store.list("GRPCRoute"), namespace, service, port)
            if grpc_routes:
                decision = _grpc_decision(grpc_routes, namespace, service, req)
            else:
                decision = route_gateway_api(self.store.list("HTTPRoute"), namespace, service, port, req)
        if decision is None:
            return Decision(namespace, service, port)
        if decision.port is None and decision.status is None:
            try:
                dest = self.store.get("Service", decision.namespace, decision.service)
                decision.port = port if _service_port(dest, port) else None
            except NotFound:
                pass
        return decision

    def log_access(
        self,
        pod: Obj,
        started: float,
        method: str,
        path: str,
        status: int,
        duration_ms: int,
        headers: Headers,
    ) -> None:
        """Write the serving pod's sidecar access-log line, if the pod has that sidecar."""
        names = _container_names(pod)
        if self.access_log_container not in names:
            return
        # The serving sidecar's own line: Istio names its upstream `inbound|<port>||`.
        ports = pod_ports(pod)
        upstream = f"inbound|{next(iter(ports), '-')}||"
        line = access_log_line(started, method, path, status, duration_ms, headers, upstream)
        with contextlib.suppress(Exception):
            self.store.append_log(
                pod["metadata"]["namespace"], pod["metadata"]["name"], self.access_log_container, line + "\n"
            )

    def _on_event(self, type_: str, obj: Obj) -> None:
        kind = obj.get("kind")
        if kind == "Pod":
            self._on_pod(type_, obj)
            return
        if kind in ("HTTPRoute", "GRPCRoute") and type_ != "DELETED" and self.routing == "gateway-api":
            self._report_route(obj)
        if kind != "Service":
            return
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if type_ == "ADDED":
            with contextlib.suppress(RuntimeError):
                self.port_of(*key)
        elif type_ == "DELETED":
            with self._lock:
                self._close_later(self._listeners.pop(key, None))
        if type_ in ("ADDED", "DELETED") and self.routing == "gateway-api":
            for route in [*self.store.list("HTTPRoute"), *self.store.list("GRPCRoute")]:
                self._report_route(route)  # a backend or parent may just have appeared or gone

    def _on_pod(self, type_: str, pod: Obj) -> None:
        """Put an inbound sidecar in front of a meshed pod's port, as Istio's interception does: once
        the kubelet has published the app's port, the pod's published port becomes the sidecar's (the
        app's stays in `fake.loopgate.test/app-ports`), before the pod can be Ready."""
        uid = str(pod["metadata"].get("uid", ""))
        if type_ == "DELETED":
            with self._lock:
                self._close_later(self._sidecars.pop(uid, None))
            return
        names = _container_names(pod)
        annotations = pod["metadata"].get("annotations") or {}
        if self.access_log_container not in names or APP_PORTS_ANNOTATION in annotations:
            return
        app_ports = pod_ports(pod)
        if not app_ports:
            return
        with self._lock:
            if self._stopped:
                return
            sidecar = self._sidecars.get(uid)
            if sidecar is None:
                sidecar = self._sidecars[uid] = _SidecarListener(self, pod, next(iter(app_ports.values())))
        inbound = {container_port: sidecar.port for container_port in app_ports}
        with contextlib.suppress(NotFound):
            self.store.set_annotations(
                "Pod",
                pod["metadata"]["namespace"],
                pod["metadata"]["name"],
                {PORTS_ANNOTATION: json.dumps(inbound), APP_PORTS_ANNOTATION: json.dumps(app_ports)},
            )

    def _close_later(self, listener: _Listener | GrpcServiceListener | None) -> None:
        """Close a listener on its own thread (closing joins handler threads; a Store callback must not
        wait for them); `stop` joins it. Called with the lock held."""
        if listener is None or self._stopped:
            return
        closer = threading.Thread(target=listener.close, daemon=True, name="fake-mesh-close")
        self._closers.append(closer)
        closer.start()

    def _report_route(self, route: Obj) -> None:
        """Write an HTTPRoute's `status.parents` as a GAMMA implementation does: code that waits for
        `Accepted` / `ResolvedRefs` sees them; a write that changes nothing is skipped."""
        status = httproute_status(route, self._service_exists)
        if status is None or _without_times(status) == _without_times(route.get("status") or {}):
            return
        _keep_transition_times(status, route.get("status") or {})
        with contextlib.suppress(NotFound):
            self.store.set_status(
                route["kind"], route["metadata"]["namespace"], route["metadata"]["name"], status
            )

    def _service_exists(self, namespace: str, name: str) -> bool:
        try:
            self.store.get("Service", namespace, name)
        except NotFound:
            return False
        return True


CONTROLLER_NAME = "istio.io/gateway-controller"


def httproute_status(route: Obj, service_exists: Callable[[str, str], bool]) -> Obj | None:
    """The status a mesh controller writes for the Service parents of an HTTPRoute (None when it has
    none: Gateway parents belong to a gateway controller the fake does not run)."""
    meta, spec = route["metadata"], route.get("spec") or {}
    route_ns = meta["namespace"]
    missing = [
        f"{ref.get('namespace', route_ns)}/{ref['name']}"
        for rule in spec.get("rules") or []
        for ref in rule.get("backendRefs") or []
        if ref.get("kind", "Service") == "Service"
        and not service_exists(ref.get("namespace", route_ns), ref["name"])
    ]
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    parents = []
    for ref in spec.get("parentRefs") or []:
        if ref.get("kind") != "Service" or ref.get("group", "gateway.networking.k8s.io") != "":
            continue
        found = service_exists(ref.get("namespace", route_ns), ref["name"])
        accepted = (
            ("True", "Accepted", "Route was valid")
            if found
            else ("False", "NoMatchingParent", f"parent Service {ref['name']} not found")
        )
        resolved = (
            ("True", "ResolvedRefs", "All references resolved")
            if not missing
            else ("False", "BackendNotFound", f"backend(s) not found: {', '.join(missing)}")
        )
        conditions = [
            {
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "observedGeneration": meta.get("generation", 1),
                "lastTransitionTime": stamp,
            }
            for type_, (status, reason, message) in (("Accepted", accepted), ("ResolvedRefs", resolved))
        ]
        parents.append({"parentRef": ref, "controllerName": CONTROLLER_NAME, "conditions": conditions})
    return {"parents": parents} if parents else None


def _without_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if k != "lastTransitionTime"}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def _keep_transition_times(status: Obj, previous: Obj) -> None:
    """A condition whose status did not change keeps its lastTransitionTime."""
    before = {
        (json.dumps(p.get("parentRef"), sort_keys=True), c["type"]): c
        for p in previous.get("parents") or []
        for c in p.get("conditions") or []
    }
    for parent in status["parents"]:
        for c in parent["conditions"]:
            old = before.get((json.dumps(parent["parentRef"], sort_keys=True), c["type"]))
            if old and old.get("status") == c["status"]:
                c["lastTransitionTime"] = old["lastTransitionTime"]
