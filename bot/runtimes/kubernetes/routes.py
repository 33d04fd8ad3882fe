"""Routes: tagged requests of a sandbox to its forks, through the team's mesh.

- istio: a named route `loopgate-<key>` per forked service, placed above the baseline routes of the
  VirtualService whose hosts hold the service's host (`objects.with_route`). Every write is a
  read-modify-replace on the resourceVersion read; a 409 (another sandbox, the team, gc wrote first)
  reads again and retries after a jittered backoff, a bounded number of times. Removal takes out only
  loopgate's route (`objects.without_route`), so once every sandbox is gone the object is what it was;
  a VirtualService loopgate made (none existed) is deleted once it holds no loopgate route, with the
  resourceVersion read as the delete's precondition. Routes loopgate does not own are never touched.
- gateway-api: one HTTPRoute per sandbox per service (GAMMA: the Service as parentRef), a GRPCRoute
  for a gRPC service (`objects.gateway_route_kind`); nothing shared is written, so nothing can conflict.
- none: nothing; the report says routing is the mesh's job.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable

from bot.config import InfrastructureError
from bot.config.grpc import Protocol
from bot.config.kubernetes import KubernetesService
from bot.config.schema import Routing
from bot.runtimes.kubernetes import objects
from bot.runtimes.kubernetes.client import (
    HTTP_ROUTE,
    MANAGED_BY,
    VIRTUAL_SERVICE,
    Conflict,
    Kube,
    NotFound,
    Obj,
)
from bot.runtimes.kubernetes.forks import Fork
from bot.runtimes.kubernetes.kinds import KINDS

ATTEMPTS = 40
"""Writes of one VirtualService tried before giving up: 20 sandboxes at once all get through."""
BACKOFF_S = 0.02
BACKOFF_MAX_S = 0.5
NONE_NOTE = "routing is left to the mesh: runtime.kubernetes.routing is none"


def backoff(attempt: int) -> None:
    """Full jitter: writers that collided spread out instead of colliding again in step."""
    time.sleep(random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_S * 2**attempt)))


def fqdn(host: str, namespace: str) -> str:
    """A VirtualService host as the mesh resolves it in `namespace`: `orders` is
    `orders.<namespace>.svc.cluster.local`."""
    parts = host.split(".")
    if len(parts) == 1:
        return f"{host}.{namespace}.svc.cluster.local"
    if len(parts) == 2:
        return f"{host}.svc.cluster.local"
    if len(parts) == 3 and parts[2] == "svc":
        return f"{host}.cluster.local"
    return host


def owned(vs: Obj) -> bool:
    return ((vs.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY) == "loopgate"


def _applies_to_mesh(vs: Obj) -> bool:
    gateways = (vs.get("spec") or {}).get("gateways")
    return not gateways or "mesh" in gateways


def serves(vs: Obj, host: str) -> bool:
    """Whether the VirtualService routes `host` (an FQDN) for the mesh; wildcard hosts never count: a
    sandbox's route there would catch tagged requests for every service the wildcard covers."""
    namespace = str((vs.get("metadata") or {}).get("namespace") or "")
    hosts = [h for h in (vs.get("spec") or {}).get("hosts") or [] if isinstance(h, str) and "*" not in h]
    return _applies_to_mesh(vs) and host in {fqdn(h, namespace) for h in hosts}


def pick_virtual_service(items: Iterable[Obj], host: str) -> Obj | None:
    """The VirtualService for `host`: the team's before one loopgate made, then the oldest."""
    candidates = [vs for vs in items if serves(vs, host)]
    candidates.sort(
        key=lambda vs: (
            owned(vs),
            str(vs["metadata"].get("creationTimestamp") or ""),
            str(vs["metadata"].get("name")),
        )
    )
    return candidates[0] if candidates else None


# -- istio ------------------------------------------------------------------------------------------


def virtual_services(kube: Kube, namespace: str) -> list[Obj]:
    """Every VirtualService of `namespace` (one list call); InfrastructureError when the cluster does not
    serve the kind (Istio missing, or older than 1.22, which serves `networking.istio.io/v1`)."""
    try:
        return kube.list(VIRTUAL_SERVICE, namespace).items
    except NotFound as exc:
        raise InfrastructureError(
            f"{exc} (runtime.kubernetes.routing is istio: is Istio, 1.22 or later, installed?)"
        ) from None


def add_istio_route(
    kube: Kube,
    *,
    service: str,
    spec: KubernetesService,
    routing: Routing,
    key: str,
    fork: Fork,
    baseline_host: str,
) -> None:
    """Put the sandbox's route for `service` into its VirtualService (made, owned by loopgate, when the
    service has none), retrying on conflicts."""
    entry = objects.istio_route(key=key, routing=routing, fork_host=fork.host, port=spec.port)
    for attempt in range(ATTEMPTS):
        vs = pick_virtual_service(virtual_services(kube, spec.namespace), baseline_host)
        try:
            if vs is None:
                made = objects.owned_virtual_service(service=service, spec=spec, baseline_host=baseline_host)
                made["metadata"]["namespace"] = spec.namespace
                kube.create(objects.with_route(made, entry))
            else:
                updated = objects.with_route(vs, entry)
                if updated != vs:
                    kube.replace(updated)
            return
        except (Conflict, NotFound):
            backoff(attempt)
    raise InfrastructureError(
        f"could not add route loopgate-{key} to the VirtualService of {baseline_host}: it kept changing"
        f" under loopgate ({ATTEMPTS} conflicting writes)"
    )


def remove_istio_routes(
    kube: Kube, namespace: str, keys: set[str], items: list[Obj] | None = None
) -> list[str]:
    """Take the routes `loopgate-<key>` of `keys` out of every VirtualService of `namespace` that holds
    one (the list given, or one list call); returns `<ns>/<vs>: loopgate-<key>` per route removed."""
    removed: list[str] = []
    listed = items if items is not None else virtual_services(kube, namespace)
    for vs in listed:
        if keys & set(objects.route_keys(vs)):
            removed.extend(_remove_from(kube, vs, keys))
    return removed


def _remove_from(kube: Kube, vs: Obj, keys: set[str]) -> list[str]:
    namespace, name = str(vs["metadata"]["namespace"]), str(vs["metadata"]["name"])
    current: Obj | None = vs
    for attempt in range(ATTEMPTS):
        if current is None:
            try:
                current = kube.get(VIRTUAL_SERVICE, namespace, name)
            except NotFound:
                return []
        present = sorted(keys & set(objects.route_keys(current)))
        if not present:
            return []
        updated = current
        for key in present:
            updated = objects.without_route(updated, key)
        try:
            if owned(current) and not objects.route_keys(updated):
                # Made by loopgate for its routes alone: gone with the last, unless someone wrote since.
                kube.delete(
                    VIRTUAL_SERVICE,
                    namespace,
                    name,
                    resource_version=str(current["metadata"].get("resourceVersion") or "") or None,
                )
            else:
                kube.replace(updated)
            return [f"{namespace}/{name}: loopgate-{key}" for key in present]
        except (Conflict, NotFound):
            current = None
            backoff(attempt)
    raise InfrastructureError(
        f"could not remove loopgate routes from VirtualService {namespace}/{name}: it kept changing under"
        f" loopgate ({ATTEMPTS} conflicting writes)"
    )


# -- gateway-api ------------------------------------------------------------------------------------


def add_http_route(
    kube: Kube,
    *,
    service: str,
    spec: KubernetesService,
    routing: Routing,
    key: str,
    fork: Fork,
    parent_service: str,
    expires_at: str,
    owner: str | None = None,
    protocol: Protocol = "http",
) -> None:
    """The sandbox's route for `service` (in the baseline Service's namespace, its parent): an
    HTTPRoute, or a GRPCRoute for a gRPC service whose Service has no HTTPRoute of the team's; and the
    ReferenceGrant that lets it reach a fork in another namespace (`sandbox_namespace`). `owner` marks
    both as a control's of that sandbox."""
    team_routes = protocol == "grpc" and has_team_http_routes(kube, spec.namespace, parent_service)
    route = objects.http_route(
        service=service,
        spec=spec,
        key=key,
        routing=routing,
        fork_service=fork.service_name,
        namespace=fork.namespace,
        expires_at=expires_at,
        parent_service=parent_service,
        kind=objects.gateway_route_kind(protocol, team_http_routes=team_routes),
    )
    objects.as_control(route, owner)
    if fork.namespace != spec.namespace:
        grant = objects.reference_grant(
            key=key, route_namespace=spec.namespace, namespace=fork.namespace, expires_at=expires_at
        )
        objects.as_control(grant, owner)
        try:
            kube.create(grant)
        except Conflict as exc:
            if not exc.exists:
                raise InfrastructureError(str(exc)) from None
    try:
        kube.create(route)
    except NotFound as exc:
        grpc = route["kind"] == "GRPCRoute"
        needs = "v1.1 or later, whose Standard channel has GRPCRoute" if grpc else "v1.0 or later"
        raise InfrastructureError(
            f"{exc} (runtime.kubernetes.routing is gateway-api: are the Gateway API CRDs, {needs},"
            " installed?)"
        ) from None
    except Conflict as exc:
        if not exc.exists:
            raise InfrastructureError(str(exc)) from None
        _replace_route(kube, route)


def has_team_http_routes(kube: Kube, namespace: str, parent_service: str) -> bool:
    """Whether an HTTPRoute loopgate did not make attaches to Service `parent_service` (one list call;
    False when the kind is not served)."""
    try:
        selector = f"{MANAGED_BY}!={objects.MANAGED_BY}"  # every HTTPRoute but loopgate's own
        listed = kube.list(HTTP_ROUTE, namespace, label_selector=selector).items
    except NotFound:
        return False
    return any(_attaches(route, namespace, parent_service) for route in listed)


def _attaches(route: Obj, namespace: str, service: str) -> bool:
    route_ns = str((route.get("metadata") or {}).get("namespace") or namespace)
    return any(
        ref.get("group") == ""
        and ref.get("kind") == "Service"
        and ref.get("name") == service
        and ref.get("namespace", route_ns) == namespace
        for ref in (route.get("spec") or {}).get("parentRefs") or []
    )


def _replace_route(kube: Kube, route: Obj) -> None:
    """The same sandbox routed again (route() after a retry): make the stored route this one."""
    kind = KINDS[str(route["kind"])]
    namespace, name = str(route["metadata"]["namespace"]), str(route["metadata"]["name"])
    for attempt in range(ATTEMPTS):
        current = kube.get(kind, namespace, name)
        route["metadata"]["resourceVersion"] = current["metadata"].get("resourceVersion")
        try:
            kube.replace(route)
            return
        except Conflict:
            backoff(attempt)
    raise InfrastructureError(f"could not update {kind.kind} {namespace}/{name}: it kept changing")
