"""The fork of a baseline Deployment and its Service, built as plain data: the pod template copied with
the new image, labels rewritten so no baseline selector picks the fork, spreading rules about the
baseline's own pods dropped, and the baseline's volumes replaced by the fork's own.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bot.config.errors import ConfigError
from bot.config.grpc import Protocol
from bot.config.kubernetes import KubernetesService
from bot.runtimes.kubernetes.names import (
    BASELINE_ANNOTATION,
    Obj,
    _metadata,
    _require_key,
    bounded_name,
    fork_deployment_name,
    fork_service_name,
    labels,
)

DEFAULT_READY_TIMEOUT_S = 180.0


# ---- selectors ----


def selects(selector: Mapping[str, str] | None, pod_labels: Mapping[str, str]) -> bool:
    """A Service's equality selector against a pod's labels; an empty selector selects nothing (such a
    Service has hand-made endpoints)."""
    return bool(selector) and all(pod_labels.get(k) == v for k, v in (selector or {}).items())


def service_selector(service: Mapping[str, Any]) -> dict[str, str]:
    return dict(((service.get("spec") or {}).get("selector")) or {})


def selecting_services(pod_labels: Mapping[str, str], services: Iterable[Mapping[str, Any]]) -> list[Obj]:
    """The Services among `services` whose selector selects pods labelled `pod_labels`."""
    return [dict(s) for s in services if selects(service_selector(s), pod_labels)]


# ---- fork Deployment and Service ----

_STRIPPED_ANNOTATIONS = (
    "deployment.kubernetes.io/revision",
    "kubectl.kubernetes.io/last-applied-configuration",
)


def _container(pod_spec: Mapping[str, Any], name: str | None, where: str) -> Obj:
    """The container a fork replaces: `name`, or the pod template's first."""
    containers: list[Obj] = list(pod_spec.get("containers") or [])
    if not containers:
        raise ConfigError(f"{where} has no containers")
    if name is None:
        return containers[0]
    for container in containers:
        if container.get("name") == name:
            return container
    known = ", ".join(str(c.get("name")) for c in containers)
    raise ConfigError(f"{where} has no container {name!r} (its containers: {known})")


def _fork_label_value(value: str, key: str) -> str:
    """A label value that no baseline selector asks for, still telling people where it came from."""
    return bounded_name(value, suffix=f"-lg-{key}") if value else f"lg-{key}"


def _fork_pod_labels(
    baseline_labels: Mapping[str, str],
    selectors: Sequence[Mapping[str, str]],
    key: str,
    own: Mapping[str, str],
) -> dict[str, str]:
    """The baseline's pod labels with every key some baseline selector uses rewritten, plus loopgate's.

    Rewriting (not dropping) keeps `app`-style labels that dashboards and meshes read; a selector that
    selects the baseline's pods needs every one of its keys to match, so changing them all is enough."""
    offending = {k for selector in selectors for k in selector}
    out = {k: (_fork_label_value(v, key) if k in offending else v) for k, v in baseline_labels.items()}
    out.update(own)
    for selector in selectors:
        if selects(selector, out):  # an invariant, checked because the cost of a leak is the baseline's
            raise AssertionError(f"fork pod labels {out} are still selected by {selector}")
    return out


def label_selector_selects(selector: Mapping[str, Any] | None, pod_labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector (`matchLabels` and `matchExpressions`) against a pod's labels; an empty
    one selects everything, as Kubernetes reads it in affinity terms and spread constraints."""
    selector = selector or {}
    if any(pod_labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key"), expression.get("operator")
        values = expression.get("values") or []
        present = key in pod_labels
        if operator == "In" and not (present and pod_labels[key] in values):
            return False
        if operator == "NotIn" and present and pod_labels[key] in values:
            return False
        if (operator == "Exists" and not present) or (operator == "DoesNotExist" and present):
            return False
    return True


def _about_baseline(item: Mapping[str, Any], baseline_labels: Mapping[str, str]) -> bool:
    """An anti-affinity term (required, or preferred with its `podAffinityTerm`) or a spread constraint
    whose label selector selects the baseline's pods."""
    term = item.get("podAffinityTerm") or item
    return label_selector_selects(term.get("labelSelector"), baseline_labels)


def _keep(holder: Obj, field: str, baseline_labels: Mapping[str, str]) -> None:
    """Filter the list `holder[field]` to the items not about the baseline; drop the field when empty."""
    if field not in holder:
        return
    kept = [item for item in holder[field] if not _about_baseline(item, baseline_labels)]
    if kept:
        holder[field] = kept
    else:
        del holder[field]


def _relax_spreading(pod_spec: Obj, baseline_labels: Mapping[str, str]) -> None:
    """Drop the pod anti-affinity terms and topology spread constraints that are about the baseline's own
    pods. They spread a service's replicas; a fork is one pod, and kept, a required "not beside another
    `app=orders` pod" leaves it Pending wherever the baseline runs on every node, which the report would
    blame on the change. Node affinity and pod affinity (co-location) are kept: they are about where the
    service can run at all."""
    affinity = pod_spec.get("affinity")
    anti = affinity.get("podAntiAffinity") if isinstance(affinity, dict) else None
    if isinstance(affinity, dict) and isinstance(anti, dict):
        _keep(anti, "requiredDuringSchedulingIgnoredDuringExecution", baseline_labels)
        _keep(anti, "preferredDuringSchedulingIgnoredDuringExecution", baseline_labels)
        if not anti:
            del affinity["podAntiAffinity"]
        if not affinity:
            del pod_spec["affinity"]
    _keep(pod_spec, "topologySpreadConstraints", baseline_labels)


def _own_volumes(pod_spec: Obj) -> None:
    """A fork never mounts the baseline's PersistentVolumeClaims: writing there (a SQLite file, uploads)
    would corrupt the baseline's data (DESIGN "Data"). Each becomes an empty dir of the fork's own, and
    ephemeral claim templates stay (they make a fresh volume per pod anyway)."""
    for volume in pod_spec.get("volumes") or []:
        if "persistentVolumeClaim" in volume:
            del volume["persistentVolumeClaim"]
            volume["emptyDir"] = {}


def _pod_template(baseline: Mapping[str, Any]) -> Obj:
    template = copy.deepcopy((baseline.get("spec") or {}).get("template") or {})
    meta = template.get("metadata") or {}
    template["metadata"] = {k: meta[k] for k in ("labels", "annotations") if meta.get(k)}
    template.setdefault("spec", {})
    return template


def fork_deployment(
    baseline: dict[str, Any],
    *,
    service: str,
    spec: KubernetesService,
    key: str,
    image: str,
    namespace: str,
    expires_at: str,
    services_in_namespace: list[dict[str, Any]],
    ready_timeout_s: float | None = None,
) -> dict[str, Any]:
    """The fork of a baseline Deployment: its pod template with `image`, one replica, and labels that no
    Service selecting the baseline's pods (nor the baseline Deployment) selects.

    Metadata is built fresh, not copied: the baseline's owner references, server-managed fields and
    GitOps tracking labels/annotations (Argo CD, Flux, Helm) would make those tools fight over or prune
    the fork. The pod template keeps everything else (probes, resources, env, sidecar annotations) so the
    fork behaves like the baseline; no `LOOPGATE_*` variable is added, for the same reason."""
    _require_key(key)
    base_meta = baseline.get("metadata") or {}
    base_name = str(base_meta.get("name") or spec.deployment)
    base_spec = baseline.get("spec") or {}
    template = _pod_template(baseline)
    pod_spec = template["spec"]
    where = f"deployment/{base_name} (service {service})"
    _container(pod_spec, spec.container, where)["image"] = image

    own = labels(key, "fork", service)
    baseline_labels: dict[str, str] = dict(template.get("metadata", {}).get("labels") or {})
    selectors = [service_selector(s) for s in selecting_services(baseline_labels, services_in_namespace)]
    match_labels = dict((base_spec.get("selector") or {}).get("matchLabels") or {})
    if selects(match_labels, baseline_labels):
        selectors.append(match_labels)
    template["metadata"]["labels"] = _fork_pod_labels(baseline_labels, selectors, key, own)
    _relax_spreading(pod_spec, baseline_labels)
    _own_volumes(pod_spec)

    annotations = dict(template["metadata"].get("annotations") or {})
    for name in _STRIPPED_ANNOTATIONS:
        annotations.pop(name, None)
    if annotations:
        template["metadata"]["annotations"] = annotations
    else:
        template["metadata"].pop("annotations", None)

    min_ready = int(base_spec.get("minReadySeconds") or 0)
    timeout = ready_timeout_s or spec.ready_timeout or DEFAULT_READY_TIMEOUT_S
    deployment_spec: Obj = {
        "replicas": 1,
        "selector": {"matchLabels": dict(own)},
        "strategy": {"type": "Recreate"},  # one pod, never two of a fork at once
        "revisionHistoryLimit": 0,
        # Progressing=False (ProgressDeadlineExceeded) then says what the runtime's own timeout saw.
        "progressDeadlineSeconds": max(math.ceil(timeout), min_ready + 1),
        "template": template,
    }
    if min_ready:
        deployment_spec["minReadySeconds"] = min_ready
    meta = _metadata(fork_deployment_name(base_name, key), namespace, own, expires_at)
    meta["annotations"][BASELINE_ANNOTATION] = f"deployment/{base_name}"
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": deployment_spec}


APP_PROTOCOLS: dict[str, str] = {"grpc": "grpc", "http2": "kubernetes.io/h2c"}
"""The `appProtocol` a fork's Service port gets for a service speaking HTTP/2: what tells the mesh to
speak HTTP/2 to the fork's pod. `grpc` is Istio's name for gRPC; `kubernetes.io/h2c` is the Kubernetes
standard name for HTTP/2 with prior knowledge (KEP-3726), which Gateway API (GEP-1911) and Istio read."""
HTTP2_APP_PROTOCOLS = frozenset({"grpc", "grpc-web", "http2", "kubernetes.io/h2c"})
"""appProtocol values that already mean HTTP/2 upstream: a baseline Service port declaring one keeps it."""


def app_protocol(protocol: Protocol, declared: str | None) -> str | None:
    """The fork Service port's appProtocol for a service speaking `protocol`, given the baseline port's.

    An HTTP/1.1 service keeps whatever the baseline declares. An HTTP/2 or gRPC one keeps the baseline's
    own HTTP/2 value (the team's mesh reads it already), else gets `APP_PROTOCOLS`': a port named `http`
    or declared `http` would have the mesh speak HTTP/1.1 to the fork, which a gRPC server refuses."""
    if protocol == "http" or (declared is not None and declared.lower() in HTTP2_APP_PROTOCOLS):
        return declared
    return APP_PROTOCOLS[protocol]


def _service_port(
    pod_spec: Mapping[str, Any],
    spec: KubernetesService,
    baseline_service: Mapping[str, Any] | None,
    protocol: Protocol = "http",
) -> Obj:
    """The fork Service's port: `spec.port` → the same target the baseline Service uses when known,
    else the replaced container's port (the one equal to `spec.port`, else one named `http`, else its
    first), else `spec.port` itself; with the appProtocol `protocol` needs (`app_protocol`)."""
    port = _copied_port(pod_spec, spec, baseline_service)
    declared = app_protocol(protocol, port.get("appProtocol"))
    if declared is not None:
        port["appProtocol"] = declared
    return port


def _copied_port(
    pod_spec: Mapping[str, Any], spec: KubernetesService, baseline_service: Mapping[str, Any] | None
) -> Obj:
    for port in ((baseline_service or {}).get("spec") or {}).get("ports") or []:
        if port.get("port") == spec.port:
            keep = ("name", "protocol", "appProtocol", "targetPort")
            return {"port": spec.port, **{k: port[k] for k in keep if k in port}}
    container = _container(pod_spec, spec.container, "the fork's pod template")
    ports: list[Obj] = list(container.get("ports") or [])
    chosen = next((p for p in ports if p.get("containerPort") == spec.port), None)
    chosen = chosen or next((p for p in ports if p.get("name") == "http"), None)
    chosen = chosen or (ports[0] if ports else None)
    target = int(chosen["containerPort"]) if chosen else spec.port
    name = str(chosen.get("name")) if chosen and chosen.get("name") else "http"
    return {"name": name, "port": spec.port, "protocol": "TCP", "targetPort": target}


def fork_service(
    fork: dict[str, Any],
    *,
    service: str,
    spec: KubernetesService,
    key: str,
    expires_at: str,
    baseline_service: dict[str, Any] | None = None,
    protocol: Protocol = "http",
) -> dict[str, Any]:
    """A ClusterIP Service selecting exactly the fork's pods (its loopgate labels), on the port callers
    use, so the mesh can route a tagged request to `<service>-lg-<key>`; for an `http2` or `grpc`
    service, the port's appProtocol says HTTP/2. (The Deployment carries no protocol: a container port
    has no appProtocol field, and a sidecar learns the inbound protocol from the Service that selects
    its pod, which for a fork is this one alone.)"""
    _require_key(key)
    pod_spec = fork["spec"]["template"]["spec"]
    own = labels(key, "fork", service)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(
            fork_service_name(service, key), fork["metadata"]["namespace"], own, expires_at
        ),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(fork["spec"]["selector"]["matchLabels"]),
            "ports": [_service_port(pod_spec, spec, baseline_service, protocol)],
        },
    }
