"""What loopgate calls the things it makes, and how it marks them: names bounded to DNS label length,
the labels teardown and gc select by, the expires-at stamp, and where a sandbox's objects live.

Plain data, no API calls: the builders (`workloads`, `routeobjects`, `jobobjects`) and the runtime name
things through these alone, so the runtime finds again what it named.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.config.errors import ConfigError
from bot.config.kubernetes import KubernetesService
from bot.config.schema import Config

Obj = dict[str, Any]

SANDBOX_LABEL = "loopgate.dev/sandbox"
ROLE_LABEL = "loopgate.dev/role"
SERVICE_LABEL = "loopgate.dev/service"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "loopgate"
EXPIRES_AT = "loopgate.dev/expires-at"
CONTROL_OF_LABEL = "loopgate.dev/control-of"
"""On every object of a control: the routing key of the sandbox it is a control of. The owner's
teardown finds the control's objects by it, and gc removes a control whose owner's record is gone."""
CONTROL_LABEL = "loopgate.dev/control"
"""On a control record (role `control`): the control's routing key."""
BASELINE_ANNOTATION = "loopgate.dev/baseline"
"""On a fork Deployment: `deployment/<name>` it was forked from (for people and gc, never for routing)."""

ROLES = ("fork", "suite", "build", "route", "state", "control")
KEY_RE = re.compile(r"[a-z0-9]{6,16}")
"""A routing key (DESIGN "Routing"): DNS-1123 safe, so it can end any name."""

ROUTE_PREFIX = "loopgate-"
OWNED_VS_SUFFIX = "-loopgate"

MAX_NAME = 63
"""DNS-1123 / DNS-1035 label length: Services, Jobs (their name becomes a label value) and pods' hosts."""


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


def as_control(obj: Obj, owner: str | None) -> Obj:
    """`obj` labelled as an object of a control of sandbox `owner` (unchanged when `owner` is None).

    One label beside the control's own sandbox label: the control stays a sandbox of its own routing key
    for every selector, and its owner's teardown and gc still find it."""
    if owner is None:
        return obj
    _require_key(owner)
    metadata = obj.setdefault("metadata", {})
    metadata["labels"] = {**(metadata.get("labels") or {}), CONTROL_OF_LABEL: owner}
    return obj


def control_record_name(owner: str, key: str) -> str:
    return bounded_name(f"lg-{owner}-control-{key}")


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


# ---- where things live ----


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
