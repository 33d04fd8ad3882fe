"""The fake cluster's API server: the Store over real HTTP, as the official `kubernetes` client drives it.

Why a real server and not a patched client: what loopgate sends over the wire (the JSON bodies, the
content type of a patch, the query of a list or a watch) is what a real API server would judge, so the
fake judges exactly that. Every request is recorded (`KubeServer.requests`); every write body is
validated strictly; every error is the `Status` object a real server answers with.

Routes: `/api/v1/...` and `/apis/{group}/{version}/...` for the kinds in `store.RESOURCES`, with
namespaced (`/namespaces/{ns}/{plural}`) and cluster-wide collections, the verbs create, get, list,
watch, replace, patch (merge, strategic merge taken as merge, JSON patch), delete, deletecollection;
`pods/{name}/log`, `deployments/{name}/status` (GET) and `services/{name}[:{port}]/proxy/{path}`.
"""

from __future__ import annotations

import contextlib
import copy
import http.client
import json
import queue
import socket
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.kube_fake.errors import (
    BadRequest,
    Gone,
    Invalid,
    KubeError,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from tests.kube_fake.store import (
    RESOURCES,
    Obj,
    Resource,
    Store,
    fields_match,
    labels_match,
    parse_field_selector,
    parse_label_selector,
)
from tests.kube_fake.validate import CRD_PACKAGES, validate_object

MAX_BODY = 8 * 1024 * 1024
WATCH_TIMEOUT_CAP = 1800.0
PORTS_ANNOTATION = "fake.loopgate.test/ports"
PROXY_TIMEOUT = 60.0
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "authorization",
}
VERSION = {
    "major": "1",
    "minor": "36",
    "gitVersion": "v1.36.0-loopgate-fake",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.24",
    "compiler": "gc",
    "platform": "linux/amd64",
}


@dataclass
class RecordedRequest:
    """One request the client sent: `query` keeps the last value of each parameter, `body` the parsed JSON
    (None when there was none or it was not JSON; `raw` has the bytes)."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int = 0
    content_type: str | None = None
    raw: bytes = b""
    time: float = field(default_factory=time.time)


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_reply(status: int, payload: Any) -> Reply:
    return Reply(status, json.dumps(payload).encode())


def error_reply(error: KubeError) -> Reply:
    return json_reply(error.code, error.status())


# ---- the HTTP plumbing ----


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close joins every handler thread: nothing is left behind
    block_on_close = True
    allow_reuse_address = True
    api: KubeServer

    def process_request(self, request: Any, client_address: Any) -> None:
        self.api.track(request)
        super().process_request(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _serve(self) -> None:
        api = self.server.api
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        record = RecordedRequest(
            self.command, url.path, query, None, content_type=self.headers.get("Content-Type")
        )
        try:
            raw = self._read_body()
        except KubeError as exc:
            self.close_connection = True
            self._send(error_reply(exc))
            return
        record.raw = raw
        if raw:
            with contextlib.suppress(ValueError):
                record.body = json.loads(raw)
        api.record(record)
        try:
            result = api.dispatch(self.command, url.path, url.query, query, dict(self.headers.items()), raw)
        except KubeError as exc:
            result = error_reply(exc)
        except Exception as exc:
            api.errors.append(traceback.format_exc())
            result = error_reply(KubeError(f"fake API server bug: {exc!r}"))
        if isinstance(result, Reply):
            record.status = result.status
            self._send(result)
        else:
            record.status = 200
            self._stream(result)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            total = 0
            while True:
                try:
                    size = int(self.rfile.readline(64).split(b";")[0].strip() or b"0", 16)
                except ValueError as exc:
                    raise BadRequest("malformed chunked body") from exc
                if size == 0:
                    self.rfile.readline(64)
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    raise BadRequest("request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(64)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError as exc:
            raise BadRequest("bad Content-Length") from exc
        if length < 0 or length > MAX_BODY:
            raise BadRequest("request body too large")
        return self.rfile.read(length) if length else b""

    def _send(self, reply: Reply) -> None:
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers:
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)
        except OSError:
            self.close_connection = True

    def _stream(self, events: Callable[[Callable[[bytes], None]], None]) -> None:
        """A watch: chunked JSON lines until the watch ends, then the terminating chunk."""

        def write(line: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()

        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            events(write)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


# ---- the API ----


@dataclass
class Route:
    resource: Resource
    version: str
    namespace: str | None
    name: str | None
    sub: str | None
    rest: str


class KubeServer:
    """Serves `store` on 127.0.0.1:<free port>. `start()`/`stop()`; `stop()` ends every watch, closes every
    connection and joins every thread."""

    def __init__(self, store: Store, host: str = "127.0.0.1", port: int = 0) -> None:
        self.store = store
        self.host = host
        self.port = port
        self.requests: list[RecordedRequest] = []
        self.errors: list[str] = []  # tracebacks of fake bugs (answered 500): tests assert it stays empty
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._by_plural = {(r.group, r.plural): r for r in RESOURCES.values()}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> KubeServer:
        server = _Server((self.host, self.port), _Handler)
        server.api = self
        self.port = server.server_address[1]
        self._server = server
        self._stopping.clear()
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="kube-fake-api", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:  # idle keep-alive connections would hold their handler threads forever
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        server.server_close()  # joins the handler threads
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets = {s for s in self._sockets if s.fileno() != -1}
            self._sockets.add(sock)

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    # -- dispatch --

    def dispatch(
        self,
        method: str,
        path: str,
        raw_query: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: bytes,
    ) -> Reply | Callable[[Callable[[bytes], None]], None]:
        if path in ("/version", "/version/"):
            return json_reply(200, VERSION)
        if path in ("/healthz", "/readyz", "/livez"):
            return Reply(200, b"ok", "text/plain")
        if path == "/api":
            return json_reply(
                200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
            )
        if path == "/apis":
            return json_reply(200, self._api_groups())
        route = self._route(path)
        if route.sub == "proxy" and route.resource.kind == "Service":
            return self._proxy(method, route, raw_query, headers, body)
        if route.sub == "log" and route.resource.kind == "Pod":
            if method != "GET":
                raise MethodNotAllowed(f"{method} is not supported on pods/log")
            return self._log(route, query)
        if route.sub == "status":
            if method != "GET":
                raise MethodNotAllowed(
                    f"{method} on {route.resource.name}/status is not supported by the fake"
                )
            return self._get(route)
        if route.sub is not None or route.rest:
            raise NotFound("subresources", f"{route.resource.plural}/{route.sub}")
        if route.name is None:
            return self._collection(method, route, query, body)
        return self._item(method, route, query, headers, body)

    def _route(self, path: str) -> Route:
        raw = path.lstrip("/").split("/")
        segments = [urllib.parse.unquote(s) for s in raw]
        if segments[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", segments[2:]
        elif len(segments) >= 3 and segments[0] == "apis":
            group, version, rest = segments[1], segments[2], segments[3:]
        else:
            raise NotFound("paths", path)
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces" and (group, rest[2]) in self._by_plural:
            namespace, rest = rest[1], rest[2:]
        if not rest or (group, rest[0]) not in self._by_plural:
            raise NotFound("resources", "/".join(rest) or path)
        resource = self._by_plural[(group, rest[0])]
        if version not in resource.versions:
            raise NotFound("resources", f"{group}/{version}/{rest[0]}")
        if namespace is not None and not resource.namespaced:
            raise NotFound("resources", path)
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        # The proxied path stays as the client encoded it (`%2F` is not a separator there).
        tail = "/" + "/".join(raw[len(raw) - len(rest) + 3 :]) if len(rest) > 3 else ""
        return Route(resource, version, namespace, name, sub, tail)

    def _api_groups(self) -> dict[str, Any]:
        groups: dict[str, list[str]] = {}
        for resource in RESOURCES.values():
            if resource.group:
                groups.setdefault(resource.group, list(resource.versions))
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": group,
                    "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in versions],
                    "preferredVersion": {"groupVersion": f"{group}/{versions[0]}", "version": versions[0]},
                }
                for group, versions in sorted(groups.items())
            ],
        }

    # -- collections --

    def _collection(
        self, method: str, route: Route, query: dict[str, str], body: bytes
    ) -> Reply | Callable[[Callable[[bytes], None]], None]:
        if method == "GET":
            if query.get("watch") in ("true", "1", "True"):
                return self._watch(route, query)
            items = self.store.list(
                route.resource.kind, route.namespace, query.get("labelSelector"), query.get("fieldSelector")
            )
            return json_reply(200, self._list(route, items))
        if method == "POST":
            return self._create(route, query, body)
        if method == "DELETE":
            propagation = self._propagation(query, body)
            deleted = self.store.delete_collection(
                route.resource.kind,
                route.namespace,
                query.get("labelSelector"),
                query.get("fieldSelector"),
                propagation,
            )
            return json_reply(200, self._list(route, deleted))
        raise MethodNotAllowed(f"{method} is not supported on a collection of {route.resource.name}")

    def _list(self, route: Route, items: list[Obj]) -> dict[str, Any]:
        builtin = route.resource.group not in CRD_PACKAGES
        out = []
        for item in items:
            item = self._as_version(route, item)
            if builtin:  # the real server leaves apiVersion and kind out of a built-in list's items
                item.pop("apiVersion", None)
                item.pop("kind", None)
            out.append(item)
        return {
            "kind": f"{route.resource.kind}List",
            "apiVersion": self._api_version(route),
            "metadata": {"resourceVersion": self.store.resource_version},
            "items": out,
        }

    def _create(self, route: Route, query: dict[str, str], raw: bytes) -> Reply:
        obj = self._body_object(route, raw)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise Invalid(["metadata: must be an object"], kind=route.resource.kind)
        if route.resource.namespaced:
            if meta.get("namespace") not in (None, route.namespace):
                raise BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            if route.namespace is None:
                raise MethodNotAllowed(f"create {route.resource.name} needs a namespace in the path")
            meta["namespace"] = route.namespace
            self.store.get("Namespace", None, route.namespace)  # 404 like the real server
        if query.get("dryRun"):
            messages = validate_object(obj)
            if messages:
                raise Invalid(messages, kind=route.resource.kind, name=str(meta.get("name", "")))
            return json_reply(201, obj)
        return json_reply(201, self._as_version(route, self.store.create(obj)))

    # -- single objects --

    def _item(
        self, method: str, route: Route, query: dict[str, str], headers: dict[str, str], raw: bytes
    ) -> Reply:
        assert route.name is not None
        kind = route.resource.kind
        if method == "GET":
            return self._get(route)
        if method == "PUT":
            obj = self._body_object(route, raw)
            meta = obj.get("metadata")
            if not isinstance(meta, dict):
                raise Invalid(["metadata: Required value"], kind=kind, name=route.name)
            if meta.get("name") != route.name:
                raise BadRequest(
                    f"the name of the object ({meta.get('name')}) does not match the name on the URL"
                    f" ({route.name})"
                )
            if route.resource.namespaced:
                if meta.get("namespace") not in (None, route.namespace):
                    raise BadRequest(
                        "the namespace of the provided object does not match the namespace on the URL"
                    )
                meta["namespace"] = route.namespace
            return json_reply(200, self._as_version(route, self.store.replace(obj)))
        if method == "PATCH":
            content_type = (
                (headers.get("Content-Type") or headers.get("content-type") or "").split(";")[0].strip()
            )
            document = self._json(raw)

            def change(current: Obj) -> Obj:
                current = self._as_version(route, current)
                if content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                    if not isinstance(document, dict):
                        raise BadRequest("a merge patch must be a JSON object")
                    patched = merge_patch(current, document)
                elif content_type == "application/json-patch+json":
                    patched = json_patch(current, document)
                else:
                    raise UnsupportedMediaType(
                        "the body of the request was in an unknown format - accepted media types include:"
                        " application/json-patch+json, application/merge-patch+json,"
                        f" application/strategic-merge-patch+json (got {content_type!r})"
                    )
                if not isinstance(patched, dict):
                    raise BadRequest("a patch must leave an object")
                return patched

            stored = self.store.mutate(kind, route.namespace, route.name, change)
            return json_reply(200, self._as_version(route, stored))
        if method == "DELETE":
            propagation = self._propagation(query, raw)
            preconditions = self._delete_options(raw).get("preconditions")
            if preconditions is not None and not isinstance(preconditions, dict):
                raise BadRequest("DeleteOptions.preconditions must be an object")
            deleted = self.store.delete(kind, route.namespace, route.name, propagation, preconditions)
            status = {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {
                    "name": route.name,
                    "kind": route.resource.plural,
                    "uid": deleted["metadata"]["uid"],
                    **({"group": route.resource.group} if route.resource.group else {}),
                },
            }
            return json_reply(200, status)
        raise MethodNotAllowed(f"{method} is not supported on {route.resource.name}")

    def _get(self, route: Route) -> Reply:
        assert route.name is not None
        return json_reply(
            200, self._as_version(route, self.store.get(route.resource.kind, route.namespace, route.name))
        )

    # -- watch --

    def _watch(self, route: Route, query: dict[str, str]) -> Callable[[Callable[[bytes], None]], None]:
        labels = parse_label_selector(query.get("labelSelector"))
        fields = parse_field_selector(route.resource.kind, query.get("fieldSelector"))
        try:
            timeout = min(float(query.get("timeoutSeconds") or WATCH_TIMEOUT_CAP), WATCH_TIMEOUT_CAP)
        except ValueError as exc:
            raise BadRequest(f"invalid timeoutSeconds {query.get('timeoutSeconds')!r}") from exc
        inbox: queue.Queue[tuple[str, Obj]] = queue.Queue()
        try:
            first, unsubscribe = self.store.watch(
                route.resource.kind,
                route.namespace,
                query.get("resourceVersion"),
                lambda t, o: inbox.put((t, o)),
            )
        except Gone as exc:
            gone = exc

            def expired(write: Callable[[bytes], None]) -> None:
                write(json.dumps({"type": "ERROR", "object": gone.status()}).encode() + b"\n")

            return expired

        # As the real server's watch cache does, an object that comes to match the selectors is ADDED and
        # one that stops matching is DELETED. Without a resourceVersion the watch starts from the full
        # state, so whether an object matched before is known for every object; with one, only for those
        # seen since.
        matched: set[str] = set()
        complete = not query.get("resourceVersion") or query.get("resourceVersion") == "0"

        def translate(type_: str, obj: Obj) -> str | None:
            uid = obj["metadata"]["uid"]
            now = labels_match(labels, obj["metadata"].get("labels")) and fields_match(fields, obj)
            before = uid in matched
            if now and type_ != "DELETED":
                matched.add(uid)
            else:
                matched.discard(uid)
            if not now:
                return "DELETED" if before else None
            if type_ == "MODIFIED" and not before and complete:
                return "ADDED"
            return type_

        def events(write: Callable[[bytes], None]) -> None:
            deadline = time.monotonic() + max(timeout, 0.0)
            try:
                for type_, obj in first:
                    sent = translate(type_, obj)
                    if sent:
                        write(self._event(route, sent, obj))
                while not self._stopping.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    try:
                        type_, obj = inbox.get(timeout=min(left, 0.2))
                    except queue.Empty:
                        continue
                    sent = translate(type_, obj)
                    if sent:
                        write(self._event(route, sent, obj))
            finally:
                unsubscribe()

        return events

    def _event(self, route: Route, type_: str, obj: Obj) -> bytes:
        return json.dumps({"type": type_, "object": self._as_version(route, obj)}).encode() + b"\n"

    # -- pods/log --

    def _log(self, route: Route, query: dict[str, str]) -> Reply:
        assert route.name is not None
        pod = self.store.get("Pod", route.namespace, route.name)
        names = [c.get("name") for c in pod.get("spec", {}).get("containers") or []]
        names += [c.get("name") for c in pod.get("spec", {}).get("initContainers") or []]
        container = query.get("container")
        if not container:
            if len(pod["spec"].get("containers") or []) != 1:
                raise BadRequest(
                    f"a container name must be specified for pod {route.name},"
                    f" choose one of: [{' '.join(map(str, names))}]"
                )
            container = str(names[0])
        elif container not in names:
            raise BadRequest(f"container {container} is not valid for pod {route.name}")
        tail = _int_param(query, "tailLines")
        since = _int_param(query, "sinceSeconds")
        text = self.store.read_log(
            str(route.namespace), route.name, container, tail_lines=tail, since_seconds=since
        )
        return Reply(200, text.encode(), "text/plain")

    # -- services/proxy --

    def _proxy(
        self, method: str, route: Route, raw_query: str, headers: dict[str, str], body: bytes
    ) -> Reply:
        assert route.name is not None and route.namespace is not None
        parts = route.name.split(":")
        if len(parts) == 3:  # scheme:name:port
            parts = parts[1:]
        name, port_ref = parts[0], (parts[1] if len(parts) > 1 else "")
        service = self.store.get("Service", route.namespace, name)
        target = _target_port(service, port_ref)
        selector = service.get("spec", {}).get("selector") or {}
        if not selector:
            raise ServiceUnavailable(f'no endpoints available for service "{name}"')
        requirement = ",".join(f"{k}={v}" for k, v in selector.items())
        for pod in self.store.list("Pod", route.namespace, requirement):
            loopback = _loopback_port(pod, target)
            if loopback is not None and _ready(pod):
                return _forward(method, loopback, route.rest or "/", raw_query, headers, body)
        raise ServiceUnavailable(f'no endpoints available for service "{name}"')

    # -- helpers --

    def _body_object(self, route: Route, raw: bytes) -> Obj:
        obj = self._json(raw)
        if not isinstance(obj, dict):
            raise BadRequest("the body of the request must be a JSON object")
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if kind != route.resource.kind or api_version != self._api_version(route):
            raise BadRequest(
                f"the API version in the data ({api_version}) does not match the expected API version "
                f"({self._api_version(route)}) or the kind ({kind}) is not {route.resource.kind}"
            )
        return obj

    @staticmethod
    def _json(raw: bytes) -> Any:
        if not raw:
            raise BadRequest("the request needs a body")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"couldn't get version/kind; json parse error: {exc}") from exc

    @staticmethod
    def _propagation(query: dict[str, str], raw: bytes) -> str:
        options = KubeServer._delete_options(raw)
        policy = options.get("propagationPolicy") or query.get("propagationPolicy")
        if options.get("orphanDependents") is True:
            policy = policy or "Orphan"
        return str(policy or "Background")

    @staticmethod
    def _delete_options(raw: bytes) -> dict[str, Any]:
        if not raw:
            return {}
        try:
            options = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"invalid DeleteOptions: {exc}") from exc
        if not isinstance(options, dict):
            raise BadRequest("DeleteOptions must be an object")
        return options

    @staticmethod
    def _api_version(route: Route) -> str:
        return f"{route.resource.group}/{route.version}" if route.resource.group else route.version

    def _as_version(self, route: Route, obj: Obj) -> Obj:
        """An object as served at the route's version (Istio's and Gateway API's versions share a schema)."""
        obj["apiVersion"] = self._api_version(route)
        return obj


def _int_param(query: dict[str, str], name: str) -> int | None:
    value = query.get(name)
    if value in (None, ""):
        return None
    try:
        number = int(str(value))
    except ValueError as exc:
        raise BadRequest(f"{name}: Invalid value: {value!r}: must be an integer") from exc
    if number < 0:
        raise BadRequest(f"{name}: Invalid value: {number}: must be non-negative")
    return number


def _target_port(service: Obj, port_ref: str) -> int | str:
    """The targetPort behind the Service port named or numbered `port_ref` (the only port if empty)."""
    ports = service.get("spec", {}).get("ports") or []
    for port in ports:
        if (not port_ref and len(ports) == 1) or port_ref in (str(port.get("port")), port.get("name")):
            target = port.get("targetPort", port.get("port"))
            return int(target) if isinstance(target, int) or str(target).isdigit() else str(target)
    raise ServiceUnavailable(f"no port {port_ref!r} on service {service['metadata']['name']!r}")


def _loopback_port(pod: Obj, target: int | str) -> int | None:
    """The loopback port the fake kubelet bound for the pod's container port `target` (a number or a
    named container port)."""
    if isinstance(target, str):
        for container in pod.get("spec", {}).get("containers") or []:
            for port in container.get("ports") or []:
                if port.get("name") == target:
                    target = int(port["containerPort"])
        if isinstance(target, str):
            return None
    try:
        ports = json.loads((pod["metadata"].get("annotations") or {}).get(PORTS_ANNOTATION) or "{}")
        return int(ports[str(target)])
    except (ValueError, KeyError, TypeError):
        return None


def _ready(pod: Obj) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") != "Running" or not status.get("podIP"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def _forward(
    method: str, port: int, path: str, raw_query: str, headers: dict[str, str], body: bytes
) -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=PROXY_TIMEOUT)
    target = path + (f"?{raw_query}" if raw_query else "")
    try:
        sent = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
        sent["Host"] = f"127.0.0.1:{port}"
        connection.request(method, target, body=body or None, headers=sent)
        response = connection.getresponse()
        payload = response.read()
        kept = [
            (k, v)
            for k, v in response.getheaders()
            if k.lower() not in _HOP_BY_HOP and k.lower() != "content-type"
        ]
        return Reply(response.status, payload, response.getheader("Content-Type") or "text/plain", kept)
    except OSError as exc:
        raise ServiceUnavailable(f"error trying to reach service: {exc}") from exc
    finally:
        connection.close()


# ---- patches ----
# JSON merge patch (RFC 7386) and JSON patch (RFC 6902), written here because the venv has no `jsonpatch`
# package and the fake needs only their few, fully specified rules. A strategic merge patch is taken as a
# JSON merge patch: the two differ only for lists with a merge key (containers by name...), which the
# code under test does not patch that way.


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def json_patch(document: Any, operations: Any) -> Any:
    """RFC 6902: add, remove, replace, move, copy, test; a failed `test` or a bad path is a 422/400."""
    if not isinstance(operations, list):
        raise BadRequest("a JSON patch must be a list of operations")
    doc = copy.deepcopy(document)
    for op in operations:
        if not isinstance(op, dict) or not isinstance(op.get("path"), str):
            raise BadRequest(f"invalid JSON patch operation: {op!r}")
        kind, path = op.get("op"), op["path"]
        if kind == "test":
            if _pointer_get(doc, path) != op.get("value"):
                raise Invalid([f"{path}: test operation failed"])
        elif kind == "remove":
            doc = _pointer_remove(doc, path)
        elif kind == "add":
            doc = _pointer_add(doc, path, copy.deepcopy(_required_value(op)))
        elif kind == "replace":
            doc = _pointer_remove(doc, path)
            doc = _pointer_add(doc, path, copy.deepcopy(_required_value(op)))
        elif kind in ("move", "copy"):
            source = op.get("from")
            if not isinstance(source, str):
                raise BadRequest(f"{kind} needs 'from': {op!r}")
            value = copy.deepcopy(_pointer_get(doc, source))
            if kind == "move":
                doc = _pointer_remove(doc, source)
            doc = _pointer_add(doc, path, value)
        else:
            raise BadRequest(f"unknown JSON patch operation {kind!r}")
    return doc


def _required_value(op: dict[str, Any]) -> Any:
    if "value" not in op:
        raise BadRequest(f"JSON patch operation needs a value: {op!r}")
    return op["value"]


def _tokens(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise BadRequest(f"invalid JSON pointer {pointer!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _index(container: list[Any], token: str, pointer: str, *, append: bool = False) -> int:
    if append and token == "-":
        return len(container)
    if not token.isdigit():
        raise BadRequest(f"invalid array index {token!r} in {pointer!r}")
    index = int(token)
    if index > len(container) or (not append and index == len(container)):
        raise Invalid([f"{pointer}: array index out of range"])
    return index


def _parent(doc: Any, pointer: str) -> tuple[Any, str]:
    tokens = _tokens(pointer)
    if not tokens:
        raise BadRequest("the whole document cannot be the target of this operation")
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, pointer)]
        else:
            raise Invalid([f"{pointer}: path not found"])
    return node, tokens[-1]


def _pointer_get(doc: Any, pointer: str) -> Any:
    node = doc
    for token in _tokens(pointer):
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, pointer)]
        else:
            raise Invalid([f"{pointer}: path not found"])
    return node


def _pointer_add(doc: Any, pointer: str, value: Any) -> Any:
    if pointer == "":
        return value
    parent, token = _parent(doc, pointer)
    if isinstance(parent, dict):
        parent[token] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, token, pointer, append=True), value)
    else:
        raise Invalid([f"{pointer}: path not found"])
    return doc


def _pointer_remove(doc: Any, pointer: str) -> Any:
    parent, token = _parent(doc, pointer)
    if isinstance(parent, dict) and token in parent:
        del parent[token]
    elif isinstance(parent, list):
        del parent[_index(parent, token, pointer)]
    else:
        raise Invalid([f"{pointer}: path not found"])
    return doc
