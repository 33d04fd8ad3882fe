"""Envoy configuration for the local runtime, generated from a :class:`DataPlaneSpec`.

Pure functions only: the same spec always yields the same dicts, so :mod:`envoy` can diff what it
wrote before against what it would write now, and tests can inspect the routing table without Envoy.

Routing (the contract in DESIGN.md, "Routing"): every service gets one listener; at each listener a
request tagged for sandbox K goes to the cluster ``<service>__K`` when K forked that service and to
``<service>__baseline`` otherwise. The tag is the baggage member ``<baggage_member>=K`` or, failing
that, the header ``<header>: K``; a request tagged only by the header gets the baggage member added at
every listener so the tag survives services that propagate nothing but ``baggage``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASELINE = "baseline"
"""Cluster suffix of the shared baseline; therefore never a valid routing key."""

ROUTING_KEY_RE = re.compile(r"[a-z0-9]{6,16}")
SERVICE_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?")
_HEADER_RE = re.compile(r"[a-z0-9][a-z0-9-]*")
_MEMBER_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
_HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
_ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_FILE_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
_LUA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
_HTTP_OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

# %REQ(baggage)% (route header additions, access log) sees only the first of several baggage header
# lines; folding them into one value first keeps every member when the sandbox member is appended and
# makes the access log show what routing matched on (Envoy's matchers join the lines with ',').
_REQUEST_LUA = """
-- Several `baggage` lines become one value, so `%REQ(baggage)%` and the access log see every member.
-- A tagged request without trace context gets one (from Envoy's random x-request-id), so every hop of
-- the sandbox's traffic can be followed in the access log, even when no caller started a trace.
function envoy_on_request(handle)
  local headers = handle:headers()
  local count = headers:getNumValues("baggage")
  if count > 1 then
    local values = {}
    for i = 0, count - 1 do
      values[#values + 1] = headers:getAtIndex("baggage", i)
    end
    headers:remove("baggage")
    headers:add("baggage", table.concat(values, ","))
  end
  if headers:get("traceparent") == nil then
    local baggage = headers:get("baggage") or ""
    if headers:get("__HEADER__") ~= nil or string.find(baggage, "__MEMBER__", 1, true) ~= nil then
      local id = string.gsub(headers:get("x-request-id") or "", "-", "")
      if string.match(id, "^%x+$") and string.len(id) == 32 then
        headers:add("traceparent", "00-" .. id .. "-" .. string.sub(id, 17, 32) .. "-01")
      end
    end
  end
end
"""


def request_lua(spec: DataPlaneSpec) -> str:
    """The listener's Lua filter for this spec's header and member names (validated to be plain)."""
    return _REQUEST_LUA.replace("__HEADER__", spec.header).replace("__MEMBER__", spec.baggage_member)


CONNECT_TIMEOUT = "1s"
# Envoy's default circuit breakers (1024) would turn a load test into 503s that no service caused.
_CIRCUIT_LIMIT = 100_000


@dataclass(frozen=True)
class Upstream:
    """Where a baseline or fork process listens."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("upstream host is empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"upstream port {self.port} is out of range")


@dataclass(frozen=True)
class DataPlaneSpec:
    """Everything Envoy must know: listeners never change after start; baseline and forks may."""

    listeners: Mapping[str, int]
    baseline: Mapping[str, Upstream]
    forks: Mapping[str, Mapping[str, Upstream]]
    baggage_member: str = "loopgate-sandbox"
    header: str = "x-loopgate-sandbox"
    http2: frozenset[str] = frozenset()
    """Services whose processes speak HTTP/2 (h2c) upstream (`protocol: http2 | grpc`): their baseline
    and fork clusters alike. Fixed at start, as the listeners are."""

    def __post_init__(self) -> None:
        # Invalid names would become invalid (or, worse, ambiguous) cluster and stat names in Envoy,
        # whose rejection message is far harder to act on than this one.
        for service, port in self.listeners.items():
            _check_service(service)
            if not 0 < port < 65536:
                raise ValueError(f"listener port {port} of service {service!r} is out of range")
            if service not in self.baseline:
                raise ValueError(f"service {service!r} has a listener but no baseline upstream")
        if len(set(self.listeners.values())) != len(self.listeners):
            raise ValueError("two services share one listener port")
        for service in self.baseline:
            if service not in self.listeners:
                raise ValueError(f"baseline service {service!r} has no listener")
        for key, services in self.forks.items():
            check_routing_key(key)
            for service in services:
                if service not in self.listeners:
                    raise ValueError(f"sandbox {key!r} forks {service!r}, which has no listener")
        for service in self.http2:
            if service not in self.listeners:
                raise ValueError(f"HTTP/2 service {service!r} has no listener")
        if not _MEMBER_RE.fullmatch(self.baggage_member):
            raise ValueError(f"baggage member name {self.baggage_member!r} is not a W3C baggage key")
        if not _HEADER_RE.fullmatch(self.header):
            raise ValueError(f"header name {self.header!r} must be lower-case letters, digits and '-'")


def check_routing_key(key: str) -> None:
    """Raise ValueError unless ``key`` is a routing key (``[a-z0-9]{6,16}``, not ``baseline``)."""
    if not ROUTING_KEY_RE.fullmatch(key) or key == BASELINE:
        raise ValueError(f"routing key {key!r} must match [a-z0-9]{{6,16}} and not be {BASELINE!r}")


def _check_service(service: str) -> None:
    if not SERVICE_RE.fullmatch(service) or "__" in service:
        raise ValueError(
            f"service name {service!r} must be 1-63 letters, digits, '-' or '_' (no '__'), "
            "starting and ending with a letter or digit"
        )


def cluster_name(service: str, routing_key: str | None) -> str:
    """Envoy cluster of ``service`` in sandbox ``routing_key`` (None: the baseline)."""
    return f"{service}__{routing_key or BASELINE}"


def parse_cluster_name(name: str) -> tuple[str, str | None]:
    """Inverse of :func:`cluster_name`; raises ValueError for names loopgate did not make."""
    service, sep, suffix = name.rpartition("__")
    if not sep or not service or not suffix:
        raise ValueError(f"{name!r} is not a loopgate cluster name")
    return service, None if suffix == BASELINE else suffix


def route_config_name(service: str) -> str:
    """Name of the RDS resource of ``service``'s listener."""
    return service


def stat_prefix(service: str) -> str:
    """HTTP connection manager stat prefix: stats read ``http.<prefix>.rds.<service>.*``."""
    return f"lg_{service}"


def rds_path(workdir: Path, service: str) -> Path:
    """File the listener of ``service`` watches for route updates.

    ``.json``: Envoy picks its parser by the extension, and its JSON parser is several times faster
    than its YAML one, which is most of what a route update costs.
    """
    return workdir / "rds" / f"{service}.json"


def cds_path(workdir: Path) -> Path:
    """File Envoy watches for cluster updates (``.json`` for the same reason as :func:`rds_path`)."""
    return workdir / "cds.json"


def access_log_path(workdir: Path) -> Path:
    """JSON access log all listeners write to."""
    return workdir / "access.log"


def access_log_format(service: str, spec: DataPlaneSpec) -> dict[str, str]:
    """JSON access log fields; :mod:`accesslog` reads exactly these keys."""
    return {
        "service": service,
        "upstream_cluster": "%UPSTREAM_CLUSTER%",
        "method": "%REQ(:METHOD)%",
        "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
        "status": "%RESPONSE_CODE%",
        # From the grpc-status trailer (or the header of a trailers-only answer); null for a response
        # that is not gRPC. The path above is the gRPC method (`/package.Service/Method`).
        "grpc_status": "%GRPC_STATUS(NUMBER)%",
        "baggage": "%REQ(BAGGAGE)%",
        spec.header: f"%REQ({spec.header})%",
        "traceparent": "%REQ(TRACEPARENT)%",
        "start_time": "%START_TIME(%Y-%m-%dT%H:%M:%E3SZ)%",
        "duration_ms": "%DURATION%",
        "response_flags": "%RESPONSE_FLAGS%",
        "request_id": "%REQ(X-REQUEST-ID)%",
    }


ADMIN_SOCKET = "admin.sock"
"""Relative to Envoy's working directory (its workdir): an absolute path under a deep state dir could
exceed the 107 bytes a Unix socket address holds."""


def admin_socket_path(workdir: Path) -> Path:
    """Envoy's admin API: a Unix socket under loopgate's state dir, which confined code cannot see
    (any process on the host can reach a loopback port, and the admin API can stop or reroute Envoy)."""
    return workdir / ADMIN_SOCKET


def bootstrap(workdir: Path, spec: DataPlaneSpec) -> dict[str, Any]:
    """Bootstrap with static listeners (one per service) and file-based CDS and per-listener RDS."""
    return {
        "node": {"id": "loopgate", "cluster": "loopgate"},
        "admin": {"address": {"pipe": {"path": ADMIN_SOCKET, "mode": 0o600}}},
        "dynamic_resources": {"cds_config": _file_source(cds_path(workdir))},
        "static_resources": {
            "listeners": [
                _listener(workdir, service, port, spec) for service, port in sorted(spec.listeners.items())
            ]
        },
    }


def _listener(workdir: Path, service: str, port: int, spec: DataPlaneSpec) -> dict[str, Any]:
    hcm = {
        "@type": _HCM_TYPE,
        "stat_prefix": stat_prefix(service),
        # HTTP/1.1 and h2c (prior knowledge) on the same port, whatever the service behind speaks: a
        # gRPC caller and a curl of the same listener both work, and the routing rules see the same
        # headers (gRPC metadata are HTTP/2 headers).
        "codec_type": "AUTO",
        # Envoy would end a request silent for 5 minutes; a slow service must fail by its callers' rules.
        "stream_idle_timeout": "0s",
        "rds": {
            "route_config_name": route_config_name(service),
            "config_source": _file_source(rds_path(workdir, service)),
        },
        "access_log": [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": _FILE_LOG_TYPE,
                    "path": str(access_log_path(workdir)),
                    "log_format": {"json_format": access_log_format(service, spec)},
                },
            }
        ],
        "http_filters": [
            {
                "name": "envoy.filters.http.lua",
                "typed_config": {
                    "@type": _LUA_TYPE,
                    "default_source_code": {"inline_string": request_lua(spec)},
                },
            },
            {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER_TYPE}},
        ],
    }
    return {
        "name": f"listener_{service}",
        "address": _address("127.0.0.1", port),
        # Linux reuse_port would let a second Envoy bind the same port silently and split traffic.
        "enable_reuse_port": False,
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _file_source(path: Path) -> dict[str, Any]:
    return {"resource_api_version": "V3", "path_config_source": {"path": str(path)}}


def clusters(spec: DataPlaneSpec) -> dict[str, Upstream]:
    """Every cluster the spec needs, by name."""
    out = {cluster_name(service, None): up for service, up in spec.baseline.items()}
    for key, services in spec.forks.items():
        for service, up in services.items():
            out[cluster_name(service, key)] = up
    return out


def clusters_response(spec: DataPlaneSpec, version: str) -> dict[str, Any]:
    """CDS DiscoveryResponse for the file Envoy watches."""
    return cluster_resources(clusters(spec), version, spec.http2)


def cluster_resources(
    by_name: Mapping[str, Upstream], version: str, http2: Collection[str] = frozenset()
) -> dict[str, Any]:
    """CDS DiscoveryResponse for an explicit cluster set (apply() briefly needs old plus new); the
    clusters of `http2` services speak HTTP/2 upstream."""
    return {
        "version_info": version,
        "type_url": CLUSTER_TYPE,
        "resources": [
            _cluster(name, up, h2=parse_cluster_name(name)[0] in http2)
            for name, up in sorted(by_name.items())
        ],
    }


def _cluster(name: str, up: Upstream, *, h2: bool = False) -> dict[str, Any]:
    try:
        ipaddress.ip_address(up.host)
        discovery: dict[str, Any] = {"type": "STATIC"}
    except ValueError:
        discovery = {"type": "STRICT_DNS", "dns_lookup_family": "V4_ONLY"}
    limit = {
        "max_connections": _CIRCUIT_LIMIT,
        "max_pending_requests": _CIRCUIT_LIMIT,
        "max_requests": _CIRCUIT_LIMIT,
        "max_retries": 0,
    }
    cluster = {
        "@type": CLUSTER_TYPE,
        "name": name,
        **discovery,
        "connect_timeout": CONNECT_TIMEOUT,
        "circuit_breakers": {"thresholds": [limit]},
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(up.host, up.port)}}]}],
        },
    }
    if h2:
        # A gRPC server speaks only HTTP/2; Envoy's default upstream codec is HTTP/1.1. Streams are
        # proxied whole (no per-message routing): the route picks the cluster once per call.
        options = {"@type": _HTTP_OPTIONS_TYPE, "explicit_http_config": {"http2_protocol_options": {}}}
        cluster["typed_extension_protocol_options"] = {_HTTP_OPTIONS_KEY: options}
    return cluster


def baggage_member_regex(member: str, key: str | None) -> str:
    """RE2 full-match regex: a baggage value holding member ``member=key`` (any key when None).

    Members are comma separated with optional whitespace and ``;properties``; Envoy joins several
    ``baggage`` header lines with ',' before matching, so one regex covers them too.
    """
    value = re.escape(key) if key is not None else r"[^,;]*"
    ows = r"[ \t]*"
    # `%3B`: OpenTelemetry Python re-sends a member's properties percent-encoded inside its value.
    return f"(?:.*,)?{ows}{re.escape(member)}{ows}={ows}{value}{ows}(?:(?:;|%3[Bb])[^,]*)?(?:,.*)?"


def routes_response(service: str, spec: DataPlaneSpec, version: str) -> dict[str, Any]:
    """RDS DiscoveryResponse for the listener of ``service``.

    Route order encodes precedence: a baggage member wins over the header, so any request whose
    baggage names a sandbox is decided by baggage alone, and only then does the header count.
    """
    forked_by = sorted(key for key, services in spec.forks.items() if service in services)
    baseline = cluster_name(service, None)
    header_guard = ROUTING_KEY_RE.pattern
    routes: list[dict[str, Any]] = []
    for key in forked_by:
        routes.append(_route(f"baggage-{key}", cluster_name(service, key), [_regex("baggage", spec, key)]))
    routes.append(_route("baggage-other", baseline, [_regex("baggage", spec, None)]))
    targets = [(key, cluster_name(service, key), re.escape(key)) for key in forked_by]
    targets.append(("other", baseline, header_guard))
    for name, cluster, header_regex in targets:
        header = {"name": spec.header, "string_match": {"safe_regex": {"regex": header_regex}}}
        has_baggage = {"name": "baggage", "present_match": True}
        routes.append(
            _route(f"header-{name}-append", cluster, [header, has_baggage], _add_member(spec, append=True))
        )
        routes.append(_route(f"header-{name}-set", cluster, [header], _add_member(spec, append=False)))
    routes.append(_route("untagged", baseline, []))
    return {
        "version_info": version,
        "type_url": ROUTE_TYPE,
        "resources": [
            {
                "@type": ROUTE_TYPE,
                "name": route_config_name(service),
                "virtual_hosts": [{"name": service, "domains": ["*"], "routes": routes}],
            }
        ],
    }


def _regex(header: str, spec: DataPlaneSpec, key: str | None) -> dict[str, Any]:
    regex = baggage_member_regex(spec.baggage_member, key)
    return {"name": header, "string_match": {"safe_regex": {"regex": regex}}}


def _add_member(spec: DataPlaneSpec, *, append: bool) -> list[dict[str, Any]]:
    member = f"{spec.baggage_member}=%REQ({spec.header})%"
    value = f"%REQ(baggage)%,{member}" if append else member
    return [{"header": {"key": "baggage", "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]


def _route(
    name: str,
    cluster: str,
    headers: list[dict[str, Any]],
    add: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    route: dict[str, Any] = {
        "name": name,
        "match": {"prefix": "/", **({"headers": headers} if headers else {})},
        # No Envoy timeout or retry: the callers' own policies are what a sandbox must exercise.
        "route": {"cluster": cluster, "timeout": "0s"},
    }
    if add:
        route["request_headers_to_add"] = add
    return route
