"""Every object the Kubernetes runtime creates or patches, built as plain data: no API calls here.

The runtime and `loopgate render` share these builders, so what a user dry-runs against their cluster is
exactly what the runtime would send, and tests validate the objects without a cluster. Names, labels and
the routing contract are those of docs/kubernetes.md and DESIGN "Routing".

Routes are edited as data too: `with_route` / `without_route` touch only routes named `loopgate-<key>`, so
removing every loopgate route gives back the VirtualService's `spec` exactly as it was.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import math
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.config.errors import ConfigError
from bot.config.kubernetes import KubernetesBuild, KubernetesService
from bot.config.schema import Config, Routing
from bot.runtimes.protocol import JUNIT_MAX_BYTES

Obj = dict[str, Any]

# ---- names, labels, annotations ----

SANDBOX_LABEL = "loopgate.dev/sandbox"
ROLE_LABEL = "loopgate.dev/role"
SERVICE_LABEL = "loopgate.dev/service"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "loopgate"
EXPIRES_AT = "loopgate.dev/expires-at"
BASELINE_ANNOTATION = "loopgate.dev/baseline"
"""On a fork Deployment: `deployment/<name>` it was forked from (for people and gc, never for routing)."""

ROLES = ("fork", "suite", "build", "route", "state")
KEY_RE = re.compile(r"[a-z0-9]{6,16}")
"""A routing key (DESIGN "Routing"): DNS-1123 safe, so it can end any name."""
NONCE_RE = re.compile(r"[A-Za-z0-9]{8,64}")

ROUTE_PREFIX = "loopgate-"
LOOPGATE_ROUTE_RE = re.compile(r"loopgate-([a-z0-9]{6,16})")
OWNED_VS_SUFFIX = "-loopgate"
DEFAULT_ROUTE_NAME = "baseline"
"""The default route of a loopgate-owned VirtualService: not `loopgate-<key>`-shaped, so never removed."""

MAX_NAME = 63
"""DNS-1123 / DNS-1035 label length: Services, Jobs (their name becomes a label value) and pods' hosts."""

JUNIT_DIR = "/tmp/loopgate"
JUNIT_PATH = f"{JUNIT_DIR}/junit.xml"
KANIKO_IMAGE = "gcr.io/kaniko-project/executor:v1.23.2"
JOB_TTL_S = 300
"""Finished Jobs stay this long for people to read; the runtime deletes them itself when done."""
DEFAULT_READY_TIMEOUT_S = 180.0


def is_routing_key(key: str) -> bool:
    return KEY_RE.fullmatch(key) is not None


def _require_key(key: str) -> None:
    """Keys end up in names, label values and regexes: anything else must never get that far."""
    if not is_routing_key(key):
        raise ValueError(f"routing key {key!r} is not [a-z0-9]{{6,16}}")


def _digest(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def bounded_name(name: str, limit: int = MAX_NAME, *, suffix: str = "") -> str:
    """`name + suffix` when it fits `limit`; else `name` cut short plus a hash of the whole, then `suffix`.

    Deterministic, so the runtime finds again what it named; the hash keeps two long names that share a
    prefix apart; `suffix` (e.g. `-lg-<key>`) stays whole so people can still read whose object it is."""
    if len(name) + len(suffix) <= limit:
        return name + suffix
    digest = _digest(name + suffix)
    head = name[: max(0, limit - len(suffix) - len(digest) - 1)].rstrip("-.")
    return f"{head}-{digest}{suffix}" if head else f"{digest}{suffix}"


def fork_deployment_name(baseline_name: str, key: str) -> str:
    """`<baseline deployment name>-lg-<key>`, at most 63 characters (its pods' hostnames derive from it)."""
    return bounded_name(baseline_name, suffix=f"-lg-{key}")


def fork_service_name(service: str, key: str) -> str:
    """`<service>-lg-<key>`: a Service name is a DNS-1035 label, so one starting with a digit gets `lg-`."""
    name = bounded_name(service, suffix=f"-lg-{key}")
    return name if name[:1].isalpha() else bounded_name("lg-" + service, suffix=f"-lg-{key}")


def http_route_name(service: str, key: str) -> str:
    return bounded_name(service, suffix=f"-lg-{key}")


def route_name(key: str) -> str:
    """The name of a sandbox's route inside a VirtualService's `http[]`."""
    return f"{ROUTE_PREFIX}{key}"


def owned_virtual_service_name(service: str) -> str:
    return bounded_name(service, suffix=OWNED_VS_SUFFIX)


def _slug(text: str) -> str:
    """Lowercased, every character outside [a-z0-9-] turned into `-`, no trailing `-`."""
    return re.sub(r"[^a-z0-9-]", "-", text.lower()).strip("-") or "x"


def suite_job_name(key: str, suite_name: str) -> str:
    return bounded_name(f"lg-{key}-{_slug(suite_name)}")


def build_job_name(key: str, service: str) -> str:
    return bounded_name(f"lg-{key}-build-{service}")


def labels(key: str, role: str, service: str | None = None) -> dict[str, str]:
    """The labels of everything loopgate makes for a sandbox: teardown and gc select by them.

    `service` is None for objects of no one service (suite Jobs)."""
    _require_key(key)
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
    out = {SANDBOX_LABEL: key, ROLE_LABEL: role}
    if service is not None:
        out[SERVICE_LABEL] = service
    out[MANAGED_BY_LABEL] = MANAGED_BY
    return out


def expires_at(ttl_s: float, now: datetime) -> str:
    """RFC 3339 UTC, whole seconds (`2026-11-29T17:00:00Z`): gc compares it with its own clock.

    A naive `now` is taken as UTC."""
    aware = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    moment = (aware + timedelta(seconds=ttl_s)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_expires_at(value: str) -> datetime | None:
    """The moment an `expires-at` annotation names; None when it is not one (gc then decides)."""
    try:
        moment = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError):
        return None
    return moment.replace(tzinfo=UTC)


def _metadata(name: str, namespace: str, label_set: Mapping[str, str], expires: str | None) -> Obj:
    meta: Obj = {"name": name, "namespace": namespace, "labels": dict(label_set)}
    if expires is not None:
        meta["annotations"] = {EXPIRES_AT: expires}
    return meta


_IMAGE_FIELD = re.compile(r"{(sha|merge_sha|base_sha|service)}")


def image_for(template: str, *, sha: str, merge_sha: str, base_sha: str, service: str) -> str:
    """An image reference from a config template (`registry/app:{sha}`); the schema already refused any
    other `{name}`, and no `str.format` is used, so other braces never raise."""
    values = {"sha": sha, "merge_sha": merge_sha, "base_sha": base_sha, "service": service}
    return _IMAGE_FIELD.sub(lambda m: values[m.group(1)], template)


# ---- where things live and how suites reach services ----


def fork_namespace(spec: KubernetesService, sandbox_namespace: str | None) -> str:
    """Forks live beside their baseline unless `runtime.kubernetes.sandbox_namespace` is set."""
    return sandbox_namespace or spec.namespace


def jobs_namespace(config: Config) -> str:
    """Suite and build Jobs: `sandbox_namespace` if set, else the namespace of the first service (sorted)
    that has a `kubernetes:` section."""
    runtime = config.runtime
    if runtime.kind == "kubernetes" and runtime.kubernetes.sandbox_namespace:
        return runtime.kubernetes.sandbox_namespace
    for _name, service in sorted(config.services.items()):
        if service.kubernetes is not None:
            return service.kubernetes.namespace
    raise ConfigError("no service has a `kubernetes:` section, which the Kubernetes runtime needs")


def baseline_service_name(service: str, spec: KubernetesService) -> str:
    """The baseline Service callers dial, when nothing better is known: named as in `.loopgate.yml`.

    The runtime, which can read the cluster, may find the Service whose selector selects the baseline's
    pods instead (`selecting_services`); offline this convention is all there is."""
    return service


def service_host(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.svc.cluster.local"


def env_name(service: str) -> str:
    """`LOOPGATE_<SERVICE>_URL`: upper-cased, non-alphanumerics → `_` (DESIGN "Names")."""
    return "LOOPGATE_" + "".join(c if c.isalnum() else "_" for c in service.upper()) + "_URL"


def suite_env(
    config: Config, key: str | None, service_names: Mapping[str, str] | None = None
) -> dict[str, str]:
    """What a suite Job is told: routing key and baggage (none for a baseline-targeted, untagged run),
    every service's in-cluster URL (the mesh routes the tagged request), and where to write JUnit.

    `service_names` maps a service to its baseline Service's name when the runtime knows it."""
    env: dict[str, str] = {}
    if key is not None:
        _require_key(key)
        env["LOOPGATE_ROUTING_KEY"] = key
        env["LOOPGATE_BAGGAGE"] = f"{config.routing.baggage_member}={key}"
    for name, service in sorted(config.services.items()):
        spec = service.kubernetes
        if spec is None:
            continue
        svc = (service_names or {}).get(name) or baseline_service_name(name, spec)
        env[env_name(name)] = f"http://{service_host(svc, spec.namespace)}:{spec.port}"
    env["LOOPGATE_JUNIT_XML"] = JUNIT_PATH
    return env


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


def _service_port(
    pod_spec: Mapping[str, Any], spec: KubernetesService, baseline_service: Mapping[str, Any] | None
) -> Obj:
    """The fork Service's port: `spec.port` → the same target the baseline Service uses when known,
    else the replaced container's port (the one equal to `spec.port`, else one named `http`, else its
    first), else `spec.port` itself."""
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
) -> dict[str, Any]:
    """A ClusterIP Service selecting exactly the fork's pods (its loopgate labels), on the port callers
    use, so the mesh can route a tagged request to `<service>-lg-<key>`."""
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
            "ports": [_service_port(pod_spec, spec, baseline_service)],
        },
    }


# ---- routing: the baggage member, Istio routes, Gateway API routes ----


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
) -> dict[str, Any]:
    """The sandbox's GAMMA HTTPRoute for one service, in the baseline Service's namespace (a producer
    route: it applies to every caller) with the Service as parent.

    Rule 1 sends a request tagged by baggage member or header to the fork Service (`namespace` is the
    fork's; a cross-namespace backendRef needs `reference_grant`). Rule 2 sends everything else to the
    baseline Service itself: with a route attached, a mesh may answer unmatched requests 404, and a
    header rule outranks it. `parent_service` is the baseline Service's name when known."""
    _require_key(key)
    parent = parent_service or baseline_service_name(service, spec)
    fork_ns = namespace if namespace != spec.namespace else None
    tagged = {
        "matches": [
            {
                "headers": [
                    {
                        "type": "RegularExpression",
                        "name": "baggage",
                        "value": baggage_regex(routing.baggage_member, key),
                    }
                ]
            },
            {"headers": [{"type": "Exact", "name": routing.header, "value": key}]},
        ],
        "backendRefs": [_service_ref(fork_service, spec.port, fork_ns)],
    }
    untagged = {"backendRefs": [_service_ref(parent, spec.port)]}
    meta = _metadata(http_route_name(service, key), spec.namespace, labels(key, "route", service), expires_at)
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": meta,
        "spec": {"parentRefs": [_service_ref(parent, spec.port)], "rules": [tagged, untagged]},
    }


def reference_grant(*, key: str, route_namespace: str, namespace: str, expires_at: str) -> dict[str, Any]:
    """Lets the sandbox's HTTPRoutes in `route_namespace` send to fork Services in `namespace` (only
    needed when forks live in `sandbox_namespace`): Gateway API refuses cross-namespace backends
    otherwise."""
    meta = _metadata(
        bounded_name(f"lg-{key}-from-{route_namespace}"), namespace, labels(key, "route"), expires_at
    )
    return {
        "apiVersion": "gateway.networking.k8s.io/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": meta,
        "spec": {
            "from": [
                {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": route_namespace}
            ],
            "to": [{"group": "", "kind": "Service"}],
        },
    }


# ---- suites and builds as Jobs ----


def new_nonce() -> str:
    """Random per run: test output cannot know it, so it cannot forge the JUnit delimiters."""
    return secrets.token_hex(16)


def junit_begin(nonce: str) -> str:
    return f"----- loopgate junit begin {nonce} -----"


def junit_end(nonce: str) -> str:
    return f"----- loopgate junit end {nonce} -----"


def suite_script(nonce: str) -> str:
    """The `sh -c` wrapper of a suite's command (given as "$@"): run it, print the JUnit file base64
    between the nonce's delimiter lines (after a newline, in case the output did not end with one),
    ask an Istio sidecar to quit so the Job can complete, and exit with the suite's own code.

    Needs only `sh` and `base64`; `mkdir`, `curl` and `wget` are used when present. No `$(` or `$$`:
    Kubernetes expands those in a container's command."""
    if NONCE_RE.fullmatch(nonce) is None:
        raise ValueError("nonce must be 8-64 letters or digits")
    return "\n".join(
        [
            'dir="${LOOPGATE_JUNIT_XML%/*}"',
            '[ -d "$dir" ] || mkdir -p "$dir" 2>/dev/null',
            '"$@"',
            "code=$?",
            'if [ -s "$LOOPGATE_JUNIT_XML" ]; then',
            f"  printf '\\n%s\\n' '{junit_begin(nonce)}'",
            '  base64 "$LOOPGATE_JUNIT_XML"',
            f"  printf '%s\\n' '{junit_end(nonce)}'",
            "fi",
            "quit=http://127.0.0.1:15020/quitquitquit",
            "if command -v curl >/dev/null 2>&1; then curl -fsS -m 2 -X POST $quit >/dev/null 2>&1",
            "elif command -v wget >/dev/null 2>&1; then wget -q -T 2 --post-data= -O /dev/null $quit"
            " >/dev/null 2>&1",
            "fi",
            "exit $code",
        ]
    )


def _job(
    *,
    name: str,
    namespace: str,
    label_set: Mapping[str, str],
    expires: str,
    timeout_s: float,
    pod_spec: Obj,
    pod_annotations: Mapping[str, str] | None = None,
    pod_labels: Mapping[str, str] | None = None,
) -> Obj:
    """A run-once Job: no retry (a second attempt would hide the first one's failure), killed at the
    timeout, kept a while after it ends; no service account token: suites and builds need no API."""
    template_meta: Obj = {"labels": {**label_set, **(pod_labels or {})}}
    if pod_annotations:
        template_meta["annotations"] = dict(pod_annotations)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(name, namespace, label_set, expires),
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": max(1, math.ceil(timeout_s)),
            "ttlSecondsAfterFinished": JOB_TTL_S,
            "template": {
                "metadata": template_meta,
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    **pod_spec,
                },
            },
        },
    }


def suite_job(
    *,
    name: str,
    namespace: str,
    key: str,
    suite_name: str,
    image: str,
    command: list[str],
    env: Mapping[str, str],
    timeout_s: float,
    nonce: str,
    expires_at: str,
) -> dict[str, Any]:
    """A suite as a Job: its command wrapped by `suite_script` so the JUnit report comes back in the log.

    The pod joins the mesh (its requests must be routed by the sandbox's routes), and waits for the
    sidecar before starting; `/tmp/loopgate` is an emptyDir, writable even on a read-only root."""
    full_env = dict(env)
    full_env.setdefault("LOOPGATE_JUNIT_XML", JUNIT_PATH)
    container = {
        "name": "suite",
        "image": image,
        "command": ["sh", "-c", suite_script(nonce), "loopgate-suite", *command],
        "env": [{"name": k, "value": v} for k, v in full_env.items()],
        "volumeMounts": [{"name": "loopgate", "mountPath": JUNIT_DIR}],
    }
    pod_spec = {"containers": [container], "volumes": [{"name": "loopgate", "emptyDir": {}}]}
    return _job(
        name=name,
        namespace=namespace,
        label_set=labels(key, "suite"),
        expires=expires_at,
        timeout_s=timeout_s,
        pod_spec=pod_spec,
        pod_annotations={
            "proxy.istio.io/config": '{"holdApplicationUntilProxyStarts": true}',
            "loopgate.dev/suite": suite_name,
        },
    )


def build_job(
    *,
    name: str,
    namespace: str,
    key: str,
    service: str,
    build: KubernetesBuild,
    git_context: str,
    destination: str,
    expires_at: str,
) -> dict[str, Any]:
    """A Kaniko build of the service's image from the git context at the merge commit, pushed to
    `destination`; the registry Secret (`.dockerconfigjson`) becomes Kaniko's `config.json`. No mesh
    sidecar: a sidecar that never exits would keep the Job from completing."""
    args = [f"--context={git_context}", f"--dockerfile={build.dockerfile}", f"--destination={destination}"]
    if build.context not in ("", "."):
        args.append(f"--context-sub-path={build.context}")
    container: Obj = {"name": "kaniko", "image": KANIKO_IMAGE, "args": args}
    pod_spec: Obj = {"containers": [container]}
    if build.secret:
        container["volumeMounts"] = [{"name": "registry", "mountPath": "/kaniko/.docker", "readOnly": True}]
        pod_spec["volumes"] = [
            {
                "name": "registry",
                "secret": {
                    "secretName": build.secret,
                    "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                },
            }
        ]
    return _job(
        name=name,
        namespace=namespace,
        label_set=labels(key, "build", service),
        expires=expires_at,
        timeout_s=build.timeout,
        pod_spec=pod_spec,
        pod_labels={"sidecar.istio.io/inject": "false"},
    )


def junit_from_log(log: str, nonce: str) -> tuple[bytes | None, str]:
    """The JUnit report the wrapper printed (None when none, or when it does not decode, or exceeds
    JUNIT_MAX_BYTES) and the log without the block. Only delimiters with this run's nonce count, and the
    last complete block wins; a begin line must start a line."""
    begin, end = junit_begin(nonce), junit_end(nonce)
    start = log.rfind(begin + "\n")
    while start > 0 and log[start - 1] != "\n":
        start = log.rfind(begin + "\n", 0, start)
    if start < 0:
        return None, log
    payload_at = start + len(begin) + 1
    stop = log.find("\n" + end, payload_at - 1)
    if stop < 0:
        return None, log
    after = stop + 1 + len(end)
    if after < len(log) and log[after] == "\n":
        after += 1
    try:
        report = base64.b64decode("".join(log[payload_at:stop].split()), validate=True)
    except (binascii.Error, ValueError):
        return None, log
    cut = start - 1 if start > 0 else 0  # the newline the wrapper printed before `begin`
    rest = log[:cut] + log[after:]
    return (report if len(report) <= JUNIT_MAX_BYTES else None), rest
