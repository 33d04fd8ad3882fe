"""The fake cluster's object store: what etcd plus the API server's registry do, in memory.

Semantics the code under test relies on, and so the Store keeps:
- every write is validated strictly (`validate.validate_object`) and raises `Invalid`;
- `metadata.resourceVersion` is one global counter (a string, as on a real server), bumped by every write;
  a replace carrying a stale one raises `Conflict` (optimistic concurrency);
- `metadata.generation` starts at 1 and is bumped when anything but metadata and status changes;
- `status` is owned by controllers (`set_status`): a replace keeps the stored status, as the main
  resource endpoint of a kind with a status subresource does;
- deleting an owner deletes its dependents (ownerReferences) unless propagation is "Orphan"; deleting a
  Namespace deletes everything in it;
- subscribers see ("ADDED" | "MODIFIED" | "DELETED", object) in resourceVersion order, delivered outside
  the store's lock, so a callback may write to the store;
- a short history of changes lets a watch resume from a resourceVersion (older ones are `Gone`).

Objects are plain dicts; every dict handed out is a deep copy, so nobody mutates the store by accident.
"""

from __future__ import annotations

import builtins
import copy
import itertools
import random
import string
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tests.kube_fake.errors import AlreadyExists, BadRequest, Conflict, Gone, Invalid, NotFound
from tests.kube_fake.validate import split_api_version, validate_object

Obj = dict[str, Any]
Callback = Callable[[str, Obj], None]


@dataclass(frozen=True)
class Resource:
    """How a kind is served: group, versions, plural, and whether it lives in a namespace."""

    kind: str
    group: str
    versions: tuple[str, ...]
    plural: str
    namespaced: bool = True

    @property
    def name(self) -> str:
        """`deployments.apps`, `pods`: how the server names the resource in messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES: dict[str, Resource] = {
    r.kind: r
    for r in (
        Resource("Namespace", "", ("v1",), "namespaces", namespaced=False),
        Resource("Pod", "", ("v1",), "pods"),
        Resource("Service", "", ("v1",), "services"),
        Resource("Event", "", ("v1",), "events"),
        Resource("Secret", "", ("v1",), "secrets"),
        Resource("ConfigMap", "", ("v1",), "configmaps"),
        Resource("ServiceAccount", "", ("v1",), "serviceaccounts"),
        Resource("Deployment", "apps", ("v1",), "deployments"),
        Resource("Job", "batch", ("v1",), "jobs"),
        Resource("Role", "rbac.authorization.k8s.io", ("v1",), "roles"),
        Resource("RoleBinding", "rbac.authorization.k8s.io", ("v1",), "rolebindings"),
        Resource("ClusterRole", "rbac.authorization.k8s.io", ("v1",), "clusterroles", namespaced=False),
        Resource(
            "ClusterRoleBinding",
            "rbac.authorization.k8s.io",
            ("v1",),
            "clusterrolebindings",
            namespaced=False,
        ),
        Resource("VirtualService", "networking.istio.io", ("v1", "v1beta1", "v1alpha3"), "virtualservices"),
        Resource("DestinationRule", "networking.istio.io", ("v1", "v1beta1", "v1alpha3"), "destinationrules"),
        Resource("HTTPRoute", "gateway.networking.k8s.io", ("v1", "v1beta1"), "httproutes"),
        Resource("GRPCRoute", "gateway.networking.k8s.io", ("v1",), "grpcroutes"),
    )
}
# The status a new object starts with (kinds with a status subresource; custom resources start without).
INITIAL_STATUS: dict[str, dict[str, Any]] = {
    "Namespace": {"phase": "Active"},
    "Pod": {"phase": "Pending", "qosClass": "BestEffort"},
    "Service": {"loadBalancer": {}},
    "Deployment": {},
    "Job": {},
}
HISTORY = 20_000  # changes kept for watches that resume from a resourceVersion


def resource_of(kind: str) -> Resource:
    """The served resource of `kind`; a kind the fake does not serve is a 404 as on a real server."""
    resource = RESOURCES.get(kind)
    if resource is None:
        raise NotFound("resources", kind)
    return resource


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- label and field selectors ----

Requirement = tuple[str, str, frozenset[str]]  # (key, op, values): op in = != in notin exists !exists


def parse_label_selector(selector: str | None) -> list[Requirement]:
    """The API server's label selector syntax: `a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`,
    `a notin (x)`, comma-separated. Anything else raises `BadRequest`."""
    out: list[Requirement] = []
    text = (selector or "").strip()
    if not text:
        return out
    for part in _split_top(text):
        part = part.strip()
        if not part:
            raise BadRequest(f"unable to parse requirement: empty requirement in {selector!r}")
        words = part.split(None, 1)
        if len(words) == 2 and words[1].lstrip().split(None, 1)[0] in ("in", "notin"):
            op, rest = (
                words[1].lstrip().split(None, 1) if len(words[1].split(None, 1)) == 2 else (words[1], "")
            )
            rest = rest.strip()
            if not (rest.startswith("(") and rest.endswith(")")):
                raise BadRequest(f"unable to parse requirement: {part!r}: expected '(' values ')'")
            values = frozenset(v.strip() for v in rest[1:-1].split(",") if v.strip())
            out.append((_label_key(words[0], selector), op, values))
        elif "!=" in part:
            key, value = part.split("!=", 1)
            out.append((_label_key(key, selector), "!=", frozenset({_label_value(value, selector)})))
        elif "=" in part:
            key, value = part.split("==", 1) if "==" in part else part.split("=", 1)
            out.append((_label_key(key, selector), "=", frozenset({_label_value(value, selector)})))
        elif part.startswith("!"):
            out.append((_label_key(part[1:], selector), "!exists", frozenset()))
        else:
            out.append((_label_key(part, selector), "exists", frozenset()))
    return out


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise BadRequest(f"unable to parse requirement: unbalanced ')' in {text!r}")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise BadRequest(f"unable to parse requirement: unbalanced '(' in {text!r}")
    parts.append(current)
    return parts


def _label_key(key: str, selector: str | None) -> str:
    key = key.strip()
    if not key or any(c in key for c in " ()!=,") or len(key) > 317:
        raise BadRequest(f"unable to parse requirement: invalid label key {key!r} in {selector!r}")
    return key


def _label_value(value: str, selector: str | None) -> str:
    value = value.strip()
    if any(c in value for c in " ()!=,") or len(value) > 63:
        raise BadRequest(f"unable to parse requirement: invalid label value {value!r} in {selector!r}")
    return value


def labels_match(requirements: Iterable[Requirement], labels: dict[str, str] | None) -> bool:
    labels = labels or {}
    for key, op, values in requirements:
        present = key in labels
        if op == "=" and labels.get(key) not in values:
            return False
        if op == "!=" and present and labels[key] in values:
            return False
        if op == "in" and (not present or labels[key] not in values):
            return False
        if op == "notin" and present and labels[key] in values:
            return False
        if op == "exists" and not present:
            return False
        if op == "!exists" and present:
            return False
    return True


_FIELDS_ALL = {"metadata.name", "metadata.namespace"}
_FIELDS = {
    "Event": {
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    },
    "Pod": {
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    },
    "Job": {"status.successful"},
    "Secret": {"type"},
    "Namespace": {"status.phase"},
}


def parse_field_selector(kind: str, selector: str | None) -> list[tuple[str, bool, str]]:
    """`a=b`, `a==b`, `a!=b`, comma-separated, on the fields the real server indexes for `kind`."""
    out = []
    for part in (selector or "").split(","):
        part = part.strip()
        if not part:
            continue
        if "!=" in part:
            key, value = part.split("!=", 1)
            equal = False
        elif "=" in part:
            key, value = part.split("==", 1) if "==" in part else part.split("=", 1)
            equal = True
        else:
            raise BadRequest(f"invalid selector: {selector!r}; can't understand {part!r}")
        key = key.strip()
        if key not in _FIELDS_ALL and key not in _FIELDS.get(kind, set()):
            raise BadRequest(
                f'"{key}" is not a known field selector: only "{", ".join(sorted(_FIELDS_ALL))}"'
            )
        out.append((key, equal, value.strip()))
    return out


def fields_match(requirements: Iterable[tuple[str, bool, str]], obj: Obj) -> bool:
    for key, equal, value in requirements:
        current: Any = obj
        for part in key.split("."):
            current = current.get(part) if isinstance(current, dict) else None
        if key == "source" and isinstance(current, dict):
            current = current.get("component")
        text = "" if current is None else str(current).lower() if isinstance(current, bool) else str(current)
        if (text == value) != equal:
            return False
    return True


# ---- the store ----


class Store:
    """Thread-safe in-memory objects keyed by (kind, namespace, name). See the module docstring."""

    def __init__(self, history: int = HISTORY) -> None:
        self._lock = threading.RLock()
        self._objects: dict[tuple[str, str, str], Obj] = {}
        self._rv = itertools.count(1)
        self._last_rv = 0
        self._subscribers: list[Callback] = []
        self._pending: deque[tuple[str, Obj]] = deque()
        self._delivering = threading.Lock()
        self._history: deque[tuple[int, str, Obj]] = deque(maxlen=history)
        self._logs: dict[tuple[str, str, str], list[tuple[float, str]]] = {}

    # -- reads --

    def get(self, kind: str, namespace: str | None, name: str) -> Obj:
        resource = resource_of(kind)
        with self._lock:
            obj = self._objects.get(self._key(resource, namespace, name))
            if obj is None:
                raise NotFound(resource.name, name)
            return copy.deepcopy(obj)

    def list(
        self,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[Obj]:
        """Objects of `kind` (in `namespace`, or everywhere when None) matching both selectors, by name."""
        resource = resource_of(kind)
        labels = parse_label_selector(label_selector)
        fields = parse_field_selector(kind, field_selector)
        with self._lock:
            found = [
                copy.deepcopy(obj)
                for (k, ns, _), obj in sorted(self._objects.items())
                if k == kind
                and (namespace is None or not resource.namespaced or ns == namespace)
                and labels_match(labels, obj["metadata"].get("labels"))
                and fields_match(fields, obj)
            ]
        return found

    @property
    def resource_version(self) -> str:
        """The newest resourceVersion (what a list answers in its metadata)."""
        with self._lock:
            return str(self._last_rv)

    # -- writes --

    def create(self, obj: Obj) -> Obj:
        """Store a new object: validated strictly; uid, resourceVersion, creationTimestamp and generation
        filled; a missing Namespace is created (a seeding convenience: the HTTP API refuses instead)."""
        with self._lock:
            stored = self._create(obj)
        self._flush()
        return stored

    def _create(self, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        resource = resource_of(str(obj.get("kind")))
        meta = obj.setdefault("metadata", {}) if isinstance(obj.get("metadata", {}), dict) else None
        if meta is None:
            raise Invalid(["metadata: must be an object"], kind=resource.kind)
        if not meta.get("name") and isinstance(meta.get("generateName"), str):
            suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            meta["name"] = f"{meta['generateName']}{suffix}"
        for field in ("resourceVersion", "creationTimestamp", "generation", "deletionTimestamp"):
            meta.pop(field, None)
        meta["uid"] = str(uuid.uuid4())
        if resource.namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        apply_defaults(obj)
        initial = INITIAL_STATUS.get(resource.kind)
        if initial is not None:  # a client cannot set status on create: the server starts it
            obj["status"] = copy.deepcopy(initial)
        self._validate(obj, resource)
        key = self._key(resource, meta.get("namespace"), meta["name"])
        if key in self._objects:
            raise AlreadyExists(resource.name, meta["name"])
        if resource.namespaced and ("Namespace", "", meta["namespace"]) not in self._objects:
            self._put_new({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": meta["namespace"]}})
        return self._put_new(obj)

    def replace(self, obj: Obj) -> Obj:
        """Replace an object. `metadata.resourceVersion` must be the stored one (`Conflict` otherwise;
        `Invalid` when missing, as for custom resources on a real server). Status is kept."""
        with self._lock:
            stored = self._replace(obj)
        self._flush()
        return stored

    def _replace(self, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        resource = resource_of(str(obj.get("kind")))
        meta = obj.get("metadata")
        if not isinstance(meta, dict) or not meta.get("name"):
            raise Invalid(["metadata.name: Required value"], kind=resource.kind)
        if resource.namespaced:
            meta.setdefault("namespace", "default")
        name = meta["name"]
        key = self._key(resource, meta.get("namespace"), name)
        current = self._objects.get(key)
        if current is None:
            raise NotFound(resource.name, name)
        given = meta.get("resourceVersion")
        if not given:
            raise Invalid(
                ["metadata.resourceVersion: Invalid value: 0: must be specified for an update"],
                kind=resource.kind,
                name=name,
                resource=resource.name,
            )
        if str(given) != current["metadata"]["resourceVersion"]:
            raise Conflict(resource.name, name)
        for field in ("uid", "creationTimestamp", "generation"):
            meta[field] = current["metadata"][field]
        meta.pop("deletionTimestamp", None)
        if "status" in current:
            obj["status"] = copy.deepcopy(current["status"])
        else:
            obj.pop("status", None)
        apply_defaults(obj)
        self._validate(obj, resource)
        if _spec_of(obj) != _spec_of(current):
            meta["generation"] = current["metadata"]["generation"] + 1
        return self._put(key, obj, "MODIFIED")

    def mutate(self, kind: str, namespace: str | None, name: str, change: Callable[[Obj], Obj]) -> Obj:
        """Read, change and replace one object atomically (what a PATCH does). `change` gets a copy and
        returns the new object; a resourceVersion it sets is a precondition, else the current one is used."""
        with self._lock:
            stored = self._mutate(kind, namespace, name, change)
        self._flush()
        return stored

    def _mutate(self, kind: str, namespace: str | None, name: str, change: Callable[[Obj], Obj]) -> Obj:
        current = self.get(kind, namespace, name)
        rv = current["metadata"]["resourceVersion"]
        new = change(copy.deepcopy(current))
        if not isinstance(new, dict):
            raise Invalid(["<root>: must be an object"], kind=kind, name=name)
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            raise Invalid(["metadata: must be an object"], kind=kind, name=name)
        if meta.get("name") != name or (resource_of(kind).namespaced and meta.get("namespace") != namespace):
            raise BadRequest("the name and namespace of a patched object cannot change")
        if new.get("kind") != kind:
            raise BadRequest(f"the kind of a patched object cannot change (was {kind})")
        meta.setdefault("resourceVersion", rv)
        return self._replace(new)

    def set_status(self, kind: str, namespace: str, name: str, status: Obj) -> Obj:
        """Replace an object's status (controllers only: the kubelet, the Job and Deployment controllers)."""
        resource = resource_of(kind)
        with self._lock:
            key = self._key(resource, namespace, name)
            current = self._objects.get(key)
            if current is None:
                raise NotFound(resource.name, name)
            obj = copy.deepcopy(current)
            obj["status"] = copy.deepcopy(status)
            self._validate(obj, resource)
            stored = self._put(key, obj, "MODIFIED")
        self._flush()
        return stored

    def set_annotations(
        self, kind: str, namespace: str | None, name: str, annotations: dict[str, Any]
    ) -> Obj:
        """Merge `annotations` into an object's (a value of None removes one). Controllers only."""
        resource = resource_of(kind)
        with self._lock:
            key = self._key(resource, namespace, name)
            current = self._objects.get(key)
            if current is None:
                raise NotFound(resource.name, name)
            obj = copy.deepcopy(current)
            merged = dict(obj["metadata"].get("annotations") or {})
            for k, v in annotations.items():
                if v is None:
                    merged.pop(k, None)
                else:
                    merged[k] = str(v)
            obj["metadata"]["annotations"] = merged
            self._validate(obj, resource)
            stored = self._put(key, obj, "MODIFIED")
        self._flush()
        return stored

    def delete(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        propagation: str = "Background",
        preconditions: dict[str, Any] | None = None,
    ) -> Obj:
        """Delete an object; its dependents go too ("Background", "Foreground") or lose their owner
        reference ("Orphan"). A Namespace takes everything in it. Returns the deleted object.

        `preconditions` (DeleteOptions' `uid`, `resourceVersion`) must hold, else `Conflict`: a delete
        that must not remove an object someone else changed meanwhile."""
        if propagation not in ("Background", "Foreground", "Orphan"):
            raise BadRequest(
                f'propagationPolicy: Unsupported value: "{propagation}": supported values: "Orphan", '
                '"Background", "Foreground"'
            )
        resource = resource_of(kind)
        with self._lock:
            key = self._key(resource, namespace, name)
            if key not in self._objects:
                raise NotFound(resource.name, name)
            meta = self._objects[key]["metadata"]
            for field in ("uid", "resourceVersion"):
                wanted = (preconditions or {}).get(field)
                if wanted is not None and str(wanted) != meta[field]:
                    raise Conflict(
                        resource.name,
                        name,
                        f"Precondition failed: {field}: {wanted}, {field} in object meta: {meta[field]}",
                    )
            deleted = self._delete(key, propagation)
        self._flush()
        return deleted

    def delete_collection(
        self,
        kind: str,
        namespace: str | None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        propagation: str = "Background",
    ) -> builtins.list[Obj]:
        """Delete every object `list` would return; the deleted objects."""
        out = []
        with self._lock:
            resource = resource_of(kind)
            for obj in self.list(kind, namespace, label_selector, field_selector):
                key = self._key(resource, obj["metadata"].get("namespace"), obj["metadata"]["name"])
                if key in self._objects:  # else already gone with an owner deleted just before
                    out.append(self._delete(key, propagation))
        self._flush()
        return out

    # -- subscriptions and watches --

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        """Call `callback(type, obj)` for every change from now on; returns the unsubscribe function."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def watch(
        self, kind: str, namespace: str | None, resource_version: str | None, callback: Callback
    ) -> tuple[builtins.list[tuple[str, Obj]], Callable[[], None]]:
        """Start a watch of `kind`: the events to send first and the unsubscribe function. Without a
        resourceVersion (or "0") the first events are ADDED for every object; with one, the changes after
        it from the history (`Gone` when it is older than the history). `callback` then gets every later
        change of `kind` in `namespace`, never one already in the first events."""
        resource = resource_of(kind)
        with self._lock:
            since = self._parse_rv(resource_version)
            if since is None:
                first = [
                    ("ADDED", copy.deepcopy(obj))
                    for (k, ns, _), obj in sorted(self._objects.items())
                    if k == kind and (namespace is None or not resource.namespaced or ns == namespace)
                ]
            else:
                oldest = self._history[0][0] if self._history else self._last_rv + 1
                if since < oldest - 1 and since < self._last_rv:
                    raise Gone(f"too old resource version: {since} ({oldest - 1})")
                first = [
                    (kind_, copy.deepcopy(obj))
                    for rv, kind_, obj in self._history
                    if rv > since
                    and obj["kind"] == kind
                    and (
                        namespace is None
                        or not resource.namespaced
                        or obj["metadata"].get("namespace") == namespace
                    )
                ]
            horizon = self._last_rv

            def relay(type_: str, obj: Obj) -> None:
                if obj["kind"] != kind or int(obj["metadata"]["resourceVersion"]) <= horizon:
                    return
                if (
                    namespace is not None
                    and resource.namespaced
                    and obj["metadata"].get("namespace") != namespace
                ):
                    return
                callback(type_, obj)

            unsubscribe = self.subscribe(relay)
        return first, unsubscribe

    # -- logs and events --

    def append_log(self, namespace: str, pod: str, container: str, text: str) -> None:
        """Append `text` (one or more lines) to a container's log."""
        stamp = time.time()
        with self._lock:
            lines = self._logs.setdefault((namespace, pod, container), [])
            for line in text.splitlines():
                lines.append((stamp, line))

    def read_log(
        self,
        namespace: str,
        pod: str,
        container: str,
        tail_lines: int | None = None,
        since_seconds: float | None = None,
    ) -> str:
        """A container's log, the last `tail_lines` lines / the lines of the last `since_seconds`."""
        with self._lock:
            lines = list(self._logs.get((namespace, pod, container), []))
        if since_seconds is not None:
            cutoff = time.time() - since_seconds
            lines = [entry for entry in lines if entry[0] >= cutoff]
        if tail_lines is not None:
            lines = lines[-tail_lines:] if tail_lines > 0 else []
        return "".join(line + "\n" for _, line in lines)

    def add_event(
        self,
        namespace: str,
        involved: Obj,
        reason: str,
        message: str,
        type_: str = "Warning",
        component: str = "kubelet",
    ) -> Obj:
        """Record a core/v1 Event about `involved` (an object or an ObjectReference). The same reason and
        message about the same object again bumps `count` and `lastTimestamp`, as the server's event
        aggregation does."""
        ref = _object_reference(involved)
        stamp = now_rfc3339()
        with self._lock:
            for (k, ns, name), event in self._objects.items():
                if (
                    k == "Event"
                    and ns == namespace
                    and _same_object(event.get("involvedObject") or {}, ref)
                    and event.get("reason") == reason
                    and event.get("message") == message
                ):
                    updated = copy.deepcopy(event)
                    updated["count"] = int(updated.get("count") or 1) + 1
                    updated["lastTimestamp"] = stamp
                    stored = self._put((k, ns, name), updated, "MODIFIED")
                    break
            else:
                suffix = "%x" % (time.time_ns() + random.getrandbits(16))
                event = {
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": {"name": f"{ref.get('name', 'object')}.{suffix}", "namespace": namespace},
                    "involvedObject": ref,
                    "reason": reason,
                    "message": message,
                    "type": type_,
                    "count": 1,
                    "firstTimestamp": stamp,
                    "lastTimestamp": stamp,
                    "source": {"component": component},
                    "reportingComponent": component,
                    "reportingInstance": "",
                }
                stored = self._create(event)
        self._flush()
        return stored

    # -- internals --

    @staticmethod
    def _key(resource: Resource, namespace: str | None, name: str) -> tuple[str, str, str]:
        if resource.namespaced and not namespace:
            raise BadRequest(f"a namespace is required for {resource.name}")
        return (resource.kind, (namespace or "") if resource.namespaced else "", name)

    @staticmethod
    def _validate(obj: Obj, resource: Resource) -> None:
        group, version = split_api_version(str(obj.get("apiVersion", "")))
        if group != resource.group or version not in resource.versions:
            raise Invalid(
                [
                    f"apiVersion: Invalid value: {obj.get('apiVersion')!r}: {resource.kind} is served as "
                    f"{resource.group + '/' if resource.group else ''}{resource.versions[0]}"
                ],
                kind=resource.kind,
                name=str((obj.get("metadata") or {}).get("name", "")),
                resource=resource.name,
            )
        messages = validate_object(obj)
        if messages:
            raise Invalid(
                messages,
                kind=resource.kind,
                name=str((obj.get("metadata") or {}).get("name", "")),
                resource=resource.name,
            )

    @staticmethod
    def _parse_rv(value: str | None) -> int | None:
        if value in (None, "", "0"):
            return None
        try:
            return int(str(value))
        except ValueError as exc:
            raise BadRequest(f"invalid resource version {value!r}") from exc

    def _next_rv(self) -> int:
        self._last_rv = next(self._rv)
        return self._last_rv

    def _put_new(self, obj: Obj) -> Obj:
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        key = self._key(resource_of(obj["kind"]), meta.get("namespace"), meta["name"])
        return self._put(key, obj, "ADDED")

    def _put(self, key: tuple[str, str, str], obj: Obj, type_: str) -> Obj:
        rv = self._next_rv()
        obj["metadata"]["resourceVersion"] = str(rv)
        self._objects[key] = obj
        self._record(rv, type_, obj)
        return copy.deepcopy(obj)

    def _record(self, rv: int, type_: str, obj: Obj) -> None:
        snapshot = copy.deepcopy(obj)
        self._history.append((rv, type_, snapshot))
        self._pending.append((type_, snapshot))

    def _delete(self, key: tuple[str, str, str], propagation: str) -> Obj:
        obj = self._objects.pop(key)
        uid = obj["metadata"]["uid"]
        dependents = [
            k
            for k, other in self._objects.items()
            if any(ref.get("uid") == uid for ref in other["metadata"].get("ownerReferences") or [])
        ]
        if key[0] == "Namespace":
            dependents += [k for k in self._objects if k[1] == key[2] and k[0] != "Namespace"]
        for dep in dependents:
            if dep not in self._objects:
                continue
            if propagation == "Orphan" and key[0] != "Namespace":
                orphan = copy.deepcopy(self._objects[dep])
                refs = [r for r in orphan["metadata"]["ownerReferences"] if r.get("uid") != uid]
                if refs:
                    orphan["metadata"]["ownerReferences"] = refs
                else:
                    orphan["metadata"].pop("ownerReferences")
                self._put(dep, orphan, "MODIFIED")
            else:
                self._delete(dep, "Background")
        if key[0] == "Pod":
            for log_key in [k for k in self._logs if k[0] == key[1] and k[1] == key[2]]:
                del self._logs[log_key]
        rv = self._next_rv()
        obj["metadata"]["resourceVersion"] = str(rv)
        obj["metadata"]["deletionTimestamp"] = now_rfc3339()
        self._record(rv, "DELETED", obj)
        return copy.deepcopy(obj)

    def _flush(self) -> None:
        """Deliver pending changes in order, outside the store's lock. One thread delivers at a time; a
        write made by a callback (on the delivering thread or another) is delivered by the same loop."""
        while True:
            if not self._delivering.acquire(blocking=False):
                return
            try:
                while True:
                    with self._lock:
                        if not self._pending:
                            break
                        type_, obj = self._pending.popleft()
                        subscribers = list(self._subscribers)
                    for callback in subscribers:
                        try:
                            callback(type_, copy.deepcopy(obj))
                        except Exception:
                            import traceback

                            traceback.print_exc()
            finally:
                self._delivering.release()
            with self._lock:
                if not self._pending:
                    return


def _spec_of(obj: Obj) -> Obj:
    """What bumps `generation`: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _same_object(a: Obj, b: Obj) -> bool:
    """Two references name one object (their resourceVersions may differ)."""
    return all(a.get(k) == b.get(k) for k in ("kind", "namespace", "name", "uid"))


def _object_reference(involved: Obj) -> Obj:
    if "metadata" in involved:
        meta = involved["metadata"]
        ref = {
            "apiVersion": involved.get("apiVersion"),
            "kind": involved.get("kind"),
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        }
    else:
        ref = dict(involved)
    return {k: v for k, v in ref.items() if v is not None}


# ---- defaults the real API server fills in, which code reading objects back will see ----


def apply_defaults(obj: Obj) -> None:
    """The defaulting a real API server does for the kinds loopgate reads back (a subset)."""
    kind = obj.get("kind")
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    if kind == "Deployment":
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        spec.setdefault(
            "strategy",
            {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
        )
        _pod_template_defaults(spec.get("template"), "Always")
    elif kind == "Job":
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completions", 1)
        spec.setdefault("parallelism", 1)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        _job_labels(obj)
        _pod_template_defaults(spec.get("template"), None)
    elif kind == "Service":
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if spec["type"] != "ExternalName":
            spec.setdefault("clusterIP", f"10.96.{random.randint(0, 255)}.{random.randint(1, 254)}")
            spec.setdefault("clusterIPs", [spec["clusterIP"]])
        for port in spec.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")
                if "port" in port:
                    port.setdefault("targetPort", port["port"])
    elif kind == "Pod":
        _pod_spec_defaults(spec, "Always")


def _job_labels(job: Obj) -> None:
    """A Job's pods carry `job-name` and `controller-uid` labels and its selector is generated: code
    that finds a Job's pods by `job-name=<name>` relies on it."""
    name = (job.get("metadata") or {}).get("name")
    template = job["spec"].get("template")
    if not name or not isinstance(template, dict) or job["spec"].get("manualSelector"):
        return
    uid = job["metadata"].get("uid") or str(uuid.uuid4())
    labels = template.setdefault("metadata", {}).setdefault("labels", {})
    if isinstance(labels, dict) and "batch.kubernetes.io/controller-uid" not in labels:
        labels.update(
            {
                "batch.kubernetes.io/controller-uid": uid,
                "controller-uid": uid,
                "batch.kubernetes.io/job-name": name,
                "job-name": name,
            }
        )
        job["spec"].setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})


def _pod_template_defaults(template: Any, restart: str | None) -> None:
    if isinstance(template, dict) and isinstance(template.get("spec"), dict):
        _pod_spec_defaults(template["spec"], restart)


def _pod_spec_defaults(spec: Obj, restart: str | None) -> None:
    if restart:
        spec.setdefault("restartPolicy", restart)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("securityContext", {})
    for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        if not isinstance(container, dict):
            continue
        image = str(container.get("image", ""))
        tag = image.rsplit("/", 1)[-1]
        latest = "@" not in image and (":" not in tag or tag.endswith(":latest"))
        container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        for port in container.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")
