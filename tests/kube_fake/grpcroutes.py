"""How a GAMMA mesh routes a gRPC call by the GRPCRoutes attached to a Service: the fake mesh's decision
for gRPC, kept apart from the HTTP routing in `mesh.py` (it shares no code path with the transport).

What it follows (Gateway API v1 GRPCRoute, Standard channel since v1.1, and GAMMA):
- a route is attached by a `parentRefs` entry `{group: "", kind: Service, name}` (namespace defaulting
  to the route's, `port` if given equal to the Service port);
- where GRPCRoutes and HTTPRoutes attach to the same Service, the HTTPRoutes are ignored (GEP-1426:
  the HTTPRoute is not Accepted, reason Conflicted), so `attached` is what decides which kind routes;
- a match holds when its `method` (`service` and `method`, Exact or RegularExpression, either may be
  left out) matches the call's `/package.Service/Method` and every `headers` entry matches (header
  names are case-insensitive; gRPC metadata is HTTP/2 headers, repeated ones joined with ",");
- among matching matches of every attached route: the longest `service`, then the longest `method`,
  then the most header matches; ties go to the oldest route, then namespace/name, then rule and match
  order; a rule without matches matches every call;
- the chosen rule's `backendRefs` (weighted) name the Service the call goes to.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
_GRPC_PATH = re.compile(r"/([^/]+)/([^/]+)")


@dataclass(frozen=True)
class GrpcTarget:
    """Where a gRPC call goes: a Service (and its port when the backendRef names one), with the rule's
    and backend's filters (for `mesh._gw_header_ops`)."""

    namespace: str
    service: str
    port: int | None
    filters: tuple[Obj, ...] = ()


def attached(routes: Iterable[Obj], namespace: str, service: str, service_port: int) -> list[Obj]:
    """The routes among `routes` attached to Service `namespace/service` on `service_port`."""
    out = []
    for route in routes:
        route_ns = route["metadata"]["namespace"]
        if any(
            ref.get("group", "gateway.networking.k8s.io") == ""
            and ref.get("kind") == "Service"
            and ref.get("name") == service
            and ref.get("namespace", route_ns) == namespace
            and ref.get("port", service_port) == service_port
            for ref in (route.get("spec") or {}).get("parentRefs") or []
        ):
            out.append(route)
    return out


def method_of(path: str) -> tuple[str, str] | None:
    """(`package.Service`, `Method`) of a gRPC call's `:path`; None for a path that is not a call's."""
    found = _GRPC_PATH.fullmatch(path)
    return (found.group(1), found.group(2)) if found else None


def _value(spec: Mapping[str, Any], field: str, value: str) -> bool:
    wanted = spec.get(field)
    if wanted is None:
        return True
    if spec.get("type", "Exact") == "RegularExpression":
        return re.fullmatch(str(wanted), value) is not None
    return bool(value == wanted)


def _header(spec: Mapping[str, Any], headers: Mapping[str, str]) -> bool:
    value = headers.get(str(spec["name"]).lower())
    if value is None:
        return False
    if spec.get("type", "Exact") == "RegularExpression":
        return re.fullmatch(str(spec["value"]), value) is not None
    return bool(value == spec["value"])


def matches(match: Mapping[str, Any], path: str, headers: Mapping[str, str]) -> bool:
    """One GRPCRouteMatch against a call (`headers` keyed by lowercased name)."""
    method = match.get("method")
    if method is not None:
        called = method_of(path)
        if called is None or not (
            _value(method, "service", called[0]) and _value(method, "method", called[1])
        ):
            return False
    return all(_header(spec, headers) for spec in match.get("headers") or [])


def _precedence(route: Obj, rule_index: int, match_index: int, match: Mapping[str, Any]) -> tuple[Any, ...]:
    method = match.get("method") or {}
    return (
        -len(str(method.get("service") or "")),
        -len(str(method.get("method") or "")),
        -len(match.get("headers") or []),
        route["metadata"].get("creationTimestamp", ""),
        f"{route['metadata']['namespace']}/{route['metadata']['name']}",
        rule_index,
        match_index,
    )


def route_grpc(routes: Iterable[Obj], path: str, headers: Mapping[str, str]) -> GrpcTarget | None:
    """Where the attached GRPCRoutes `routes` send a call to `path` with `headers`; None when no rule
    matches (the call then goes to the Service itself), or a target with no Service when the chosen
    rule has no usable backend (the mesh answers UNAVAILABLE)."""
    candidates = []
    for route in routes:
        for i, rule in enumerate((route.get("spec") or {}).get("rules") or [{}]):
            for j, match in enumerate(rule.get("matches") or [{}]):
                candidates.append((_precedence(route, i, j, match), route, rule, match))
    for _, route, rule, match in sorted(candidates, key=lambda c: c[0]):
        if not matches(match, path, headers):
            continue
        refs = [
            r
            for r in rule.get("backendRefs") or []
            if r.get("group", "") == "" and r.get("kind", "Service") == "Service"
        ]
        weights = [max(0, int(r.get("weight", 1))) for r in refs]
        if not refs or not any(weights):
            return GrpcTarget(route["metadata"]["namespace"], "", None)
        chosen = random.choices(refs, weights=weights)[0]
        port = chosen.get("port")
        return GrpcTarget(
            chosen.get("namespace", route["metadata"]["namespace"]),
            str(chosen["name"]),
            int(port) if port else None,
            (*(rule.get("filters") or []), *(chosen.get("filters") or [])),
        )
    return None
