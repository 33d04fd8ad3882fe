"""Envoy configuration for the local runtime, generated from a :class:`DataPlaneSpec`.

Pure functions only: the same spec always yields the same dicts, so :mod:`envoy` can diff what it
wrote before against what it would write now, and tests can inspect the routing table without Envoy.

Routing (the contract in DESIGN.md, "Routing"): every service gets one listener; at each listener a
request tagged for sandbox K goes to K's fork of that service when K forked it and to the baseline
otherwise. The tag is the baggage member ``<baggage_member>=K`` or, failing that, the header
``<header>: K``; a request tagged only by the header gets the baggage member added at every listener
so the tag survives services that propagate nothing but ``baggage``.

Layout, chosen so that one baseline carries a thousand sandboxes: a sandbox is not a route and not a
cluster but an *endpoint*. Each service has one static cluster (one load balancer subset per routing
key) whose endpoints, the baseline and every fork, come from one file, ``eds/<service>.json``
(file-based EDS). The listener's Lua filter reads the request's routing key once and hands it to the
load balancer as ``envoy.lb`` dynamic metadata; a key without a fork here falls back to the baseline's
subset. Adding or removing a sandbox therefore rewrites only the endpoint files of the services it
forks, and Envoy rebuilds no route table and no cluster: file-based xDS is state-of-the-world per file,
and earlier layouts (a regex route and a cluster per sandbox, all clusters in one CDS file) made every
update and every tagged request cost time in proportion to the number of sandboxes. One file per
sandbox is no option: Envoy watches each file with its own inotify instance, of which a user gets 128.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASELINE = "baseline"
"""The subset of the shared baseline in each service's cluster; therefore never a valid routing key."""

ROUTING_KEY_RE = re.compile(r"[a-z0-9]{6,16}")
SERVICE_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?")
_HEADER_RE = re.compile(r"[a-z0-9][a-z0-9-]*")
_MEMBER_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")

ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
_LB_NAMESPACE = "envoy.lb"
_SUBSET_KEY = "sandbox"
_HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
_ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_FILE_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
_LUA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
_HTTP_OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

# The sandbox a request belongs to is decided here, once per hop, and handed to the load balancer as
# `envoy.lb` metadata (a hash lookup of its subset), so the cost of a request does not grow with the
# number of sandboxes (a regex route per sandbox did).
_REQUEST_LUA = """
-- Several `baggage` lines become one value, so `%REQ(baggage)%` and the access log see every member.
-- The routing key: the value of the baggage member named exactly __MEMBER__ (whitespace around the
-- name, '=' and value ignored; properties after ';', or '%3B' as OpenTelemetry re-sends them, cut
-- off); failing that, a header __HEADER__ that is a routing key, which is then added to the baggage
-- so that the tag survives services that propagate nothing but `baggage`. A member with any value
-- decides alone, so a bad value reaches the baseline rather than what the header names.
-- A tagged request without trace context gets one (from Envoy's random x-request-id), so every hop of
-- the sandbox's traffic can be followed in the access log, even when no caller started a trace.
local function member_value(baggage)
  for member in string.gmatch(baggage, "[^,]+") do
    local name, value = string.match(member, "^[ \\t]*([^=]-)[ \\t]*=(.*)$")
    if name == "__MEMBER__" then
      value = string.gsub(value, "%%3[Bb].*$", "")
      value = string.match(value, "^([^;]*)")
      return string.match(value, "^[ \\t]*(.-)[ \\t]*$")
    end
  end
  return nil
end

local function routing_key(value)
  if value ~= nil and #value >= 6 and #value <= 16 and string.match(value, "^[a-z0-9]+$") then
    return value
  end
  return nil
end

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
  local baggage = headers:get("baggage")
  local key = nil
  local tagged = baggage ~= nil and member_value(baggage)
  if tagged then
    key = routing_key(tagged)
  else
    key = routing_key(headers:get("__HEADER__"))
    if key ~= nil then
      local member = "__MEMBER__=" .. key
      if baggage ~= nil and baggage ~= "" then
        member = baggage .. "," .. member
      end
      headers:replace("baggage", member)
    end
  end
  if key ~= nil then
    handle:streamInfo():dynamicMetadata():set("__LB__", "__SUBSET__", key)
  end
  if headers:get("traceparent") == nil and (tagged or headers:get("__HEADER__") ~= nil) then
    local id = string.gsub(headers:get("x-request-id") or "", "-", "")
    if string.match(id, "^%x+$") and string.len(id) == 32 then
      headers:add("traceparent", "00-" .. id .. "-" .. string.sub(id, 17, 32) .. "-01")
    end
  end
end
"""


def request_lua(spec: DataPlaneSpec) -> str:
    """The listener's Lua filter for this spec's header and member names (validated to be plain)."""
    return (
        _REQUEST_LUA.replace("__HEADER__", spec.header)
        .replace("__MEMBER__", spec.baggage_member)
        .replace("__LB__", _LB_NAMESPACE)
        .replace("__SUBSET__", _SUBSET_KEY)
    )


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
        # The baseline and every fork are endpoints of their service's cluster: at an IP address
        # each, and each its own.
        addresses: set[tuple[str, Upstream]] = set()
        for service, up in self.baseline.items():
            _check_ip(up, f"baseline of {service!r}")
            addresses.add((service, up))
        for key, services in self.forks.items():
            check_routing_key(key)
            for service, up in services.items():
                if service not in self.listeners:
                    raise ValueError(f"sandbox {key!r} forks {service!r}, which has no listener")
                _check_ip(up, f"fork of {service!r} in sandbox {key!r}")
                if (service, up) in addresses:
                    raise ValueError(f"two instances of {service!r} share {up.host}:{up.port}")
                addresses.add((service, up))
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


def _check_ip(up: Upstream, what: str) -> None:
    # inet_pton, not ipaddress: a spec of a thousand sandboxes is validated on every apply.
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, up.host)
            return
        except OSError:
            continue
    raise ValueError(f"{what} must be at an IP address, not {up.host!r}")


def _check_service(service: str) -> None:
    if not SERVICE_RE.fullmatch(service) or "__" in service:
        raise ValueError(
            f"service name {service!r} must be 1-63 letters, digits, '-' or '_' (no '__'), "
            "starting and ending with a letter or digit"
        )


def stat_prefix(service: str) -> str:
    """HTTP connection manager stat prefix: stats read ``http.<prefix>.*``."""
    return f"lg_{service}"


def eds_path(workdir: Path, service: str) -> Path:
    """File the cluster of ``service`` watches for its endpoints (the baseline and every fork).

    ``.json``: Envoy picks its parser by the extension, and its JSON parser is several times faster
    than its YAML one.
    """
    return workdir / "eds" / f"{service}.json"


def access_log_path(workdir: Path) -> Path:
    """JSON access log all listeners write to."""
    return workdir / "access.log"


def access_log_format(service: str, spec: DataPlaneSpec) -> dict[str, str]:
    """JSON access log fields; :mod:`accesslog` reads exactly these keys."""
    return {
        "service": service,
        # Which instance answered: the routing key of the fork or `baseline` (the subset of the
        # endpoint; the cluster is the service's, shared by the baseline and every fork).
        "target": f"%METADATA(UPSTREAM_HOST:{_LB_NAMESPACE}:{_SUBSET_KEY})%",
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
    """Bootstrap with static listeners and clusters (one of each per service); only the clusters'
    endpoints change while Envoy runs, through file-based EDS."""
    return {
        "node": {"id": "loopgate", "cluster": "loopgate"},
        "admin": {"address": {"pipe": {"path": ADMIN_SOCKET, "mode": 0o600}}},
        "static_resources": {
            "listeners": [
                _listener(workdir, service, port, spec) for service, port in sorted(spec.listeners.items())
            ],
            "clusters": [
                _cluster(service, eds_path(workdir, service), h2=service in spec.http2)
                for service in sorted(spec.listeners)
            ],
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
        "route_config": {
            "name": service,
            "virtual_hosts": [{"name": service, "domains": ["*"], "routes": [_route(service)]}],
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


def service_cluster_name(service: str) -> str:
    """The one Envoy cluster of ``service``: its baseline and every fork are its endpoints."""
    return service


def _route(service: str) -> dict[str, Any]:
    # No Envoy timeout or retry: the callers' own policies are what a sandbox must exercise.
    return {
        "name": service,
        "match": {"prefix": "/"},
        "route": {"cluster": service_cluster_name(service), "timeout": "0s"},
    }


def _cluster(service: str, eds: Path, *, h2: bool) -> dict[str, Any]:
    """A request's routing key (``envoy.lb`` metadata, set by the listener's Lua filter) selects the
    subset of that key's fork; a request without one, or with a key that forked nothing here, falls
    back to the baseline's subset."""
    limit = {
        "max_connections": _CIRCUIT_LIMIT,
        "max_pending_requests": _CIRCUIT_LIMIT,
        "max_requests": _CIRCUIT_LIMIT,
        "max_retries": 0,
    }
    name = service_cluster_name(service)
    cluster: dict[str, Any] = {
        "name": name,
        "type": "EDS",
        "eds_cluster_config": {"eds_config": _file_source(eds), "service_name": name},
        "connect_timeout": CONNECT_TIMEOUT,
        "circuit_breakers": {"thresholds": [limit]},
        "lb_subset_config": {
            "fallback_policy": "DEFAULT_SUBSET",
            "default_subset": {_SUBSET_KEY: BASELINE},
            # One host per subset: Envoy then keeps one map from key to host instead of filtering
            # every host for every subset on each update (a cost of sandboxes squared).
            "subset_selectors": [{"keys": [_SUBSET_KEY], "single_host_per_subset": True}],
        },
    }
    if h2:
        # A gRPC server speaks only HTTP/2; Envoy's default upstream codec is HTTP/1.1. Streams are
        # proxied whole (no per-message routing): the route picks the cluster once per call.
        options = {"@type": _HTTP_OPTIONS_TYPE, "explicit_http_config": {"http2_protocol_options": {}}}
        cluster["typed_extension_protocol_options"] = {_HTTP_OPTIONS_KEY: options}
    return cluster


def forks_of(service: str, spec: DataPlaneSpec) -> dict[str, Upstream]:
    """Routing key -> fork of ``service``, for every sandbox that forked it."""
    return {key: services[service] for key, services in spec.forks.items() if service in services}


Endpoints = Mapping[str, Upstream]
"""A service's instances by subset: ``baseline`` (:data:`BASELINE`) or a routing key."""


def endpoints_of(service: str, spec: DataPlaneSpec) -> dict[str, Upstream]:
    """What the cluster of ``service`` should hold for ``spec``: its baseline and its forks."""
    return {BASELINE: spec.baseline[service], **forks_of(service, spec)}


def endpoints_response(service: str, endpoints: Endpoints, version: str) -> dict[str, Any]:
    """EDS DiscoveryResponse for the cluster of ``service``: one endpoint per subset."""
    lb_endpoints = []
    for subset, up in sorted(endpoints.items()):
        metadata = {_LB_NAMESPACE: {_SUBSET_KEY: subset}}
        address = {"socket_address": {"address": up.host, "port_value": up.port}}
        lb_endpoints.append({"endpoint": {"address": address}, "metadata": {"filter_metadata": metadata}})
    name = service_cluster_name(service)
    assignment = {"@type": ENDPOINT_TYPE, "cluster_name": name, "endpoints": [{"lb_endpoints": lb_endpoints}]}
    return {"version_info": version, "type_url": ENDPOINT_TYPE, "resources": [assignment]}


def endpoints_in(doc: Mapping[str, Any]) -> dict[str, Upstream]:
    """Inverse of :func:`endpoints_response`, from a file it wrote."""
    out: dict[str, Upstream] = {}
    for resource in doc.get("resources", []):
        for group in resource.get("endpoints", []):
            for lb in group.get("lb_endpoints", []):
                subset = lb["metadata"]["filter_metadata"][_LB_NAMESPACE][_SUBSET_KEY]
                address = lb["endpoint"]["address"]["socket_address"]
                out[str(subset)] = Upstream(str(address["address"]), int(address["port_value"]))
    return out
