"""Routing as data: the baggage member's regex, Istio routes inside a VirtualService, Gateway API
HTTPRoutes, GRPCRoutes and ReferenceGrants.

Routes are edited as data too: `with_route` / `without_route` touch only routes named `loopgate-<key>`, so
removing every loopgate route gives back the VirtualService's `spec` exactly as it was.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any, Literal

from bot.config.grpc import Protocol
from bot.config.kubernetes import KubernetesService
from bot.config.schema import Routing
from bot.runtimes.kubernetes.names import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    ROLE_LABEL,
    ROUTE_PREFIX,
    SERVICE_LABEL,
    Obj,
    _metadata,
    _require_key,
    baseline_service_name,
    bounded_name,
    http_route_name,
    labels,
    owned_virtual_service_name,
    route_name,
)

LOOPGATE_ROUTE_RE = re.compile(r"loopgate-([a-z0-9]{6,16})")
RouteKind = Literal["HTTPRoute", "GRPCRoute"]
ROUTE_KINDS: tuple[RouteKind, ...] = ("HTTPRoute", "GRPCRoute")
"""The Gateway API routes a sandbox may add: teardown and gc look for both."""
DEFAULT_ROUTE_NAME = "baseline"
"""The default route of a loopgate-owned VirtualService: not `loopgate-<key>`-shaped, so never removed."""


def baggage_regex(member: str, key: str) -> str:
    """RE2 full-match regex: a W3C `baggage` value holding exactly the member `member=key`.

    Members are comma separated with optional whitespace (OWS, around `=` too) and optional
    `;properties`; the member must start the value or follow a comma, and its value must end at OWS, `;`,
    `,` or the end, so `abc123` matches neither `abc1234` nor `xabc123`. Proxies join several `baggage`
    lines with `,`, so one regex covers them. `%3B`: OpenTelemetry re-sends properties percent-encoded.
    No lookarounds or backreferences: Envoy, Istio and Gateway API implementations use RE2."""
    _require_key(key)
    ows = "[ \\t]*"
    return f"(?:.*,)?{ows}{_re2_escape(member)}{ows}={ows}{key}{ows}(?:(?:;|%3[Bb])[^,]*)?(?:,.*)?"


def _re2_escape(text: str) -> str:
    """Escape only regex metacharacters (`re.escape` also escapes `-`, legal but hard to read in YAML)."""
    return "".join("\\" + c if c in ".^$*+?()[]{}|\\" else c for c in text)


def istio_route(*, key: str, routing: Routing, fork_host: str, port: int) -> dict[str, Any]:
    """One `http[]` entry, `loopgate-<key>`: a request whose baggage holds the member, or that carries the
    header, goes to the fork's host. (Adding the baggage member to a header-only request is left to the
    entry, as documented: Istio's `headers.request.add` would replace the caller's baggage.)"""
    return {
        "name": route_name(key),
        "match": [
            {"headers": {"baggage": {"regex": baggage_regex(routing.baggage_member, key)}}},
            {"headers": {routing.header: {"exact": key}}},
        ],
        "route": [{"destination": {"host": fork_host, "port": {"number": port}}}],
    }


def is_loopgate_route(route: Mapping[str, Any]) -> bool:
    """Only routes named `loopgate-<key>` are loopgate's; every other route is never edited or moved."""
    name = route.get("name")
    return isinstance(name, str) and LOOPGATE_ROUTE_RE.fullmatch(name) is not None


def route_keys(vs: Mapping[str, Any]) -> list[str]:
    """The routing keys of the loopgate routes of a VirtualService, in their order."""
    out = []
    for route in ((vs.get("spec") or {}).get("http")) or []:
        if is_loopgate_route(route):
            out.append(str(route["name"])[len(ROUTE_PREFIX) :])
    return out


def with_route(vs: dict[str, Any], route: dict[str, Any]) -> dict[str, Any]:
    """A copy of `vs` with `route`: replacing a route of the same name in place, else inserted just above
    the first route loopgate does not own (so after the other loopgate routes, before the baseline's)."""
    if not is_loopgate_route(route):
        raise ValueError(f"route {route.get('name')!r} is not named loopgate-<key>")
    out = copy.deepcopy(vs)
    spec = out.setdefault("spec", {})
    http: list[Obj] = list(spec.get("http") or [])
    names = [r.get("name") for r in http]
    if route["name"] in names:
        http[names.index(route["name"])] = copy.deepcopy(route)
    else:
        first_foreign = next((i for i, r in enumerate(http) if not is_loopgate_route(r)), len(http))
        http.insert(first_foreign, copy.deepcopy(route))
    spec["http"] = http
    return out


def without_route(vs: dict[str, Any], key: str) -> dict[str, Any]:
    """A copy of `vs` without `loopgate-<key>`; nothing else moves or changes. When that leaves `http`
    empty, the key is dropped: it was loopgate that added it (a VirtualService with routes only for TCP
    or TLS)."""
    out = copy.deepcopy(vs)
    spec = out.get("spec")
    if not isinstance(spec, dict) or "http" not in spec:
        return out
    name = route_name(key)
    http = [r for r in spec["http"] or [] if r.get("name") != name]
    if http or not spec["http"]:
        spec["http"] = http
    else:
        del spec["http"]
    return out


def owned_virtual_service(*, service: str, spec: KubernetesService, baseline_host: str) -> dict[str, Any]:
    """Where a service has no VirtualService: one owned by loopgate whose only own route (`baseline`)
    sends everything to the baseline, so untagged traffic is unchanged and loopgate routes go above it."""
    meta = {
        "name": owned_virtual_service_name(service),
        "namespace": spec.namespace,
        "labels": {ROLE_LABEL: "route", SERVICE_LABEL: service, MANAGED_BY_LABEL: MANAGED_BY},
    }
    default = {
        "name": DEFAULT_ROUTE_NAME,
        "route": [{"destination": {"host": baseline_host, "port": {"number": spec.port}}}],
    }
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": meta,
        "spec": {"hosts": [baseline_host], "http": [default]},
    }


def _service_ref(name: str, port: int, namespace: str | None = None) -> Obj:
    ref: Obj = {"group": "", "kind": "Service", "name": name}
    if namespace is not None:
        ref["namespace"] = namespace
    ref["port"] = port
    return ref


def tagged_matches(routing: Routing, key: str) -> list[Obj]:
    """The Gateway API matches of a request tagged for the sandbox: the baggage member (exact member,
    `baggage_regex`) or the header. HTTPRoute and GRPCRoute share them field for field (`type`, `name`,
    `value`; Exact and RegularExpression in both), so one list keeps their semantics identical: gRPC
    metadata is HTTP/2 headers."""
    _require_key(key)
    regex = baggage_regex(routing.baggage_member, key)
    baggage = {"type": "RegularExpression", "name": "baggage", "value": regex}
    return [
        {"headers": [baggage]},
        {"headers": [{"type": "Exact", "name": routing.header, "value": key}]},
    ]


def http_route(
    *,
    service: str,
    spec: KubernetesService,
    key: str,
    routing: Routing,
    fork_service: str,
    namespace: str,
    expires_at: str,
    parent_service: str | None = None,
    kind: RouteKind = "HTTPRoute",
) -> dict[str, Any]:
    """The sandbox's GAMMA route for one service, in the baseline Service's namespace (a producer
    route: it applies to every caller) with the Service as parent: an HTTPRoute, or with
    `kind="GRPCRoute"` a GRPCRoute of the same shape (a gRPC service's, `gateway_route_kind`).

    Rule 1 sends a request tagged by baggage member or header to the fork Service (`namespace` is the
    fork's; a cross-namespace backendRef needs `reference_grant`). Rule 2 sends everything else to the
    baseline Service itself: with a route attached, a mesh may answer unmatched requests 404, and a
    header rule outranks it. `parent_service` is the baseline Service's name when known."""
    _require_key(key)
    if kind not in ROUTE_KINDS:
        raise ValueError(f"route kind {kind!r} is not one of {', '.join(ROUTE_KINDS)}")
    parent = parent_service or baseline_service_name(service, spec)
    fork_ns = namespace if namespace != spec.namespace else None
    tagged = {
        "matches": tagged_matches(routing, key),
        "backendRefs": [_service_ref(fork_service, spec.port, fork_ns)],
    }
    untagged = {"backendRefs": [_service_ref(parent, spec.port)]}
    meta = _metadata(http_route_name(service, key), spec.namespace, labels(key, "route", service), expires_at)
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": kind,
        "metadata": meta,
        "spec": {"parentRefs": [_service_ref(parent, spec.port)], "rules": [tagged, untagged]},
    }


def gateway_route_kind(protocol: Protocol, *, team_http_routes: bool = False) -> RouteKind:
    """Which Gateway API route a sandbox adds for a service speaking `protocol`.

    A gRPC service gets a GRPCRoute, unless the team already attaches HTTPRoutes to its Service: where
    a GRPCRoute and an HTTPRoute attach to the same parent, GAMMA (GEP-1426) has the mesh ignore the
    HTTPRoute, so a GRPCRoute of loopgate's would silently switch the team's own routing off. An
    HTTPRoute routes gRPC as well (a gRPC call is an HTTP/2 POST), and keeps the team's in force."""
    if protocol == "grpc" and not team_http_routes:
        return "GRPCRoute"
    return "HTTPRoute"


def reference_grant(*, key: str, route_namespace: str, namespace: str, expires_at: str) -> dict[str, Any]:
    """Lets the sandbox's HTTPRoutes and GRPCRoutes in `route_namespace` send to fork Services in
    `namespace` (only needed when forks live in `sandbox_namespace`): Gateway API refuses
    cross-namespace backends otherwise. One grant per sandbox and namespace pair serves its routes of
    both kinds; it grants no more than an HTTPRoute alone would, since whoever may write a GRPCRoute in
    `route_namespace` may write an HTTPRoute there."""
    meta = _metadata(
        bounded_name(f"lg-{key}-from-{route_namespace}"), namespace, labels(key, "route"), expires_at
    )
    return {
        "apiVersion": "gateway.networking.k8s.io/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": meta,
        "spec": {
            "from": [
                {"group": "gateway.networking.k8s.io", "kind": kind, "namespace": route_namespace}
                for kind in ROUTE_KINDS
            ],
            "to": [{"group": "", "kind": "Service"}],
        },
    }
