"""The cluster-wide sweep: everything loopgate made past its `loopgate.dev/expires-at`, and every
sandbox route whose fork is gone, whoever made them and whatever happened to the process that did.

The labels and the expires-at annotation, set before an object exists, are the record (DESIGN
"Durability"): no state outside the cluster is needed. A sweep makes one list call per kind whatever
the number of sandboxes (`list … for all namespaces` by label), then one write per object removed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from bot.runtimes.kubernetes import objects
from bot.runtimes.kubernetes.client import (
    CONFIG_MAP,
    DEPLOYMENT,
    EXPIRES_AT,
    JOB,
    MANAGED,
    ROLE_LABEL,
    SANDBOX_LABEL,
    SERVICE,
    VIRTUAL_SERVICE,
    Conflict,
    Forbidden,
    Kind,
    Kube,
    NotFound,
    Obj,
)
from bot.runtimes.kubernetes.controlrecords import owned_pairs, record_selector
from bot.runtimes.kubernetes.kinds import GATEWAY_ROUTES
from bot.runtimes.kubernetes.routes import owned, remove_istio_routes

log = logging.getLogger(__name__)

EXPIRING: tuple[Kind, ...] = (DEPLOYMENT, SERVICE, JOB, *GATEWAY_ROUTES)
"""Kinds whose every object belongs to one sandbox and carries its expires-at. A VirtualService loopgate
made is shared by the sandboxes of its service: it goes with its last route, never by age."""


def expires_at(obj: Obj) -> datetime | None:
    text = ((obj.get("metadata") or {}).get("annotations") or {}).get(EXPIRES_AT)
    return objects.parse_expires_at(str(text)) if text else None


def expired(obj: Obj, now: datetime) -> bool:
    stamp = expires_at(obj)
    return stamp is not None and stamp <= now


def _labels(obj: Obj) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def _where(obj: Obj) -> str:
    metadata = obj.get("metadata") or {}
    return f"{metadata.get('namespace')}/{metadata.get('name')}"


ROUTING_KINDS: tuple[Kind, ...] = (VIRTUAL_SERVICE, *GATEWAY_ROUTES)
"""The chart grants each routing mode's kinds alone (istio: VirtualServices; gateway-api: HTTPRoutes and
GRPCRoutes), while a mesh often serves both APIs (Istio installs the Gateway API CRDs)."""


def _list(kube: Kube, kind: Kind, label_selector: str | None) -> list[Obj] | None:
    """One cluster-wide list; None when the kind is not served (its CRD is not installed), or when it
    is a routing kind loopgate may not list: under RBAC that withholds it, loopgate made none."""
    try:
        return kube.list(kind, None, label_selector=label_selector).items
    except NotFound:
        return None
    except Forbidden:
        if kind in ROUTING_KINDS:
            return None
        raise


def live_sandboxes(deployments: list[Obj], now: datetime) -> set[str]:
    """Routing keys with a fork Deployment not yet expired."""
    return {
        _labels(d)[SANDBOX_LABEL]
        for d in deployments
        if _labels(d).get(ROLE_LABEL) == "fork" and SANDBOX_LABEL in _labels(d) and not expired(d, now)
    }


def orphaned_controls(kube: Kube, listed: list[Obj], now: datetime) -> dict[str, str]:
    """Control key -> owner key, for each control among `listed` whose record is gone or expired: its
    owner was torn down (or never finished being made). Lists the records only when some control
    exists, so a cluster without controls pays no list call for them."""
    controls = {
        _labels(o)[SANDBOX_LABEL]: _labels(o)[objects.CONTROL_OF_LABEL]
        for o in listed
        if objects.CONTROL_OF_LABEL in _labels(o) and SANDBOX_LABEL in _labels(o)
    }
    if not controls:
        return {}
    standing = standing_controls(kube, now)
    return {key: owner for key, owner in controls.items() if (owner, key) not in standing}


def standing_controls(kube: Kube, now: datetime) -> set[tuple[str, str]]:
    """(owner, control) of every control record not yet expired (one list call)."""
    return owned_pairs(_list(kube, CONFIG_MAP, record_selector()) or [], now)


def expired_control_records(kube: Kube, now: datetime) -> list[str]:
    """Control records past their expires-at (the owner's teardown never got to them); one list call."""
    removed = []
    for record in _list(kube, CONFIG_MAP, record_selector()) or []:
        if expired(record, now) and kube.delete(
            CONFIG_MAP, record["metadata"].get("namespace"), _name(record)
        ):
            removed.append(f"deleted ConfigMap {_where(record)} (expired control record)")
    return removed


def _name(obj: Obj) -> str:
    return str(obj["metadata"]["name"])


def sweep(kube: Kube, now: datetime | None = None) -> list[str]:
    """Remove what is past expires-at, every route whose fork is gone and every control whose owner is
    gone; one line per removal."""
    now = now or datetime.now(UTC)
    removed: list[str] = []
    # Routes are listed before the forks: a route seen here was added after its fork existed, so a
    # fork missing from the later list is really gone (not made after the routes were read).
    virtual_services = _list(kube, VIRTUAL_SERVICE, None)
    listed: dict[str, list[Obj] | None] = {kind.kind: None for kind in EXPIRING}
    for route_kind in GATEWAY_ROUTES:  # None where the kind is not served (no GRPCRoute before v1.1)
        listed[route_kind.kind] = _list(kube, route_kind, MANAGED)
    for kind in (DEPLOYMENT, SERVICE, JOB):
        listed[kind.kind] = _list(kube, kind, MANAGED)
    live = live_sandboxes(listed[DEPLOYMENT.kind] or [], now)
    ownerless = orphaned_controls(kube, [o for kind in EXPIRING for o in listed[kind.kind] or []], now)
    live -= set(ownerless)

    for kind in EXPIRING:
        for obj in listed[kind.kind] or []:
            key = _labels(obj).get(SANDBOX_LABEL)
            if expired(obj, now):
                why = f"expired at {(obj['metadata'].get('annotations') or {}).get(EXPIRES_AT)}"
            elif key is not None and key in ownerless:
                why = f"a control of sandbox {ownerless[key]}, which is gone"
            elif kind in GATEWAY_ROUTES and key is not None and key not in live:
                why = f"the fork of sandbox {key} is gone"
            else:
                continue
            namespace, name = obj["metadata"].get("namespace"), str(obj["metadata"]["name"])
            if kube.delete(kind, namespace, name):
                removed.append(f"deleted {kind.kind} {_where(obj)} ({why})")

    by_namespace: dict[str, list[Obj]] = {}
    for vs in virtual_services or []:
        orphans = set(objects.route_keys(vs)) - live
        if orphans or (owned(vs) and not objects.route_keys(vs)):
            by_namespace.setdefault(str(vs["metadata"]["namespace"]), []).append(vs)
    for namespace, items in sorted(by_namespace.items()):
        for vs in items:
            orphans = set(objects.route_keys(vs)) - live
            if orphans:
                for line in remove_istio_routes(kube, namespace, orphans, items=[vs]):
                    removed.append(f"removed route {line} (its fork is gone)")
            else:
                removed.extend(_delete_empty(kube, vs))
    return removed


def _delete_empty(kube: Kube, vs: Obj) -> list[str]:
    """A VirtualService loopgate made that holds no loopgate route (its last removal was interrupted)."""
    try:
        kube.delete(
            VIRTUAL_SERVICE,
            str(vs["metadata"]["namespace"]),
            str(vs["metadata"]["name"]),
            resource_version=str(vs["metadata"].get("resourceVersion") or "") or None,
        )
    except Conflict:
        return []  # a sandbox just added a route to it
    return [f"deleted VirtualService {_where(vs)} (loopgate made it and no sandbox routes through it)"]


def sweep_every(sweep_once: Callable[[], list[str]], interval_s: float, stop: threading.Event) -> None:
    """Sweep every `interval_s` until `stop` is set (for `loopgate serve`: run it in a thread); a failed
    sweep is logged and the next one tries again."""
    while not stop.wait(interval_s):
        try:
            for line in sweep_once():
                log.info("kubernetes gc: %s", line)
        except Exception as exc:  # the next sweep retries; a serve loop must not die of a flaky API
            log.warning("kubernetes gc failed: %s", exc)
