"""Forks: a changed service's Deployment copied from the baseline's with the change's image, its own
Service, and the wait until it is Available (a watch, not a poll) — or why it never got there.

A fork that never becomes Available is the change's fault (`start_failed`, with the pod's waiting
reason, the Warning events and the container's last log lines); the API refusing to create it is the
cluster's (InfrastructureError naming the cause).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bot.config import InfrastructureError
from bot.config.grpc import Protocol
from bot.config.kubernetes import KubernetesService
from bot.runtimes.kubernetes import objects
from bot.runtimes.kubernetes.client import (
    DEPLOYMENT,
    EVENT,
    POD,
    Conflict,
    Kube,
    NotFound,
    Obj,
    selector_string,
)
from bot.runtimes.protocol import ForkOutcome

LOG_TAIL_LINES = 60
LOG_TAIL_CHARS = 8_000
EVENTS_SHOWN = 5


@dataclass(frozen=True)
class Fork:
    """A fork as routes, probes and observation need it."""

    service: str
    namespace: str
    deployment: str
    service_name: str
    port: int

    @property
    def host(self) -> str:
        return objects.service_host(self.service_name, self.namespace)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def start_fork(
    kube: Kube,
    *,
    service: str,
    spec: KubernetesService,
    key: str,
    image: str,
    namespace: str,
    expires_at: str,
    baseline: Obj,
    baseline_service: Obj | None,
    services_in_namespace: list[Obj],
    timeout_s: float,
    adjust: Callable[[Obj], Obj] | None = None,
    owner: str | None = None,
    protocol: Protocol = "http",
) -> tuple[Fork, ForkOutcome]:
    """Create the fork's Deployment and Service (labelled and stamped with expires-at before they exist,
    so gc finds them whatever happens next) and wait for it to become Available. `adjust` edits the
    Deployment before it is created (e.g. pointing the fork at its own copy of the service's data);
    `owner` marks both as a control's of that sandbox; `protocol` sets the Service port's appProtocol."""
    deployment = objects.fork_deployment(
        baseline,
        service=service,
        spec=spec,
        key=key,
        image=image,
        namespace=namespace,
        expires_at=expires_at,
        services_in_namespace=services_in_namespace,
        ready_timeout_s=timeout_s,
    )
    if adjust is not None:
        deployment = adjust(deployment)
    fork_svc = objects.fork_service(
        deployment,
        service=service,
        spec=spec,
        key=key,
        expires_at=expires_at,
        baseline_service=baseline_service,
        protocol=protocol,
    )
    objects.as_control(deployment, owner)
    objects.as_control(fork_svc, owner)
    name = str(deployment["metadata"]["name"])
    fork = Fork(service, namespace, name, str(fork_svc["metadata"]["name"]), spec.port)
    started = time.monotonic()
    _create(kube, deployment)
    _create(kube, fork_svc)
    ready, last = wait_available(kube, namespace, name, timeout_s)
    ready_ms = int((time.monotonic() - started) * 1000)
    if ready:
        return fork, ForkOutcome(service, "ready", url=fork.url, ready_ms=ready_ms)
    why, log_tail = diagnose(kube, namespace, last or deployment, spec.container)
    detail = f"never became Available within {timeout_s:g}s: {why}"
    return fork, ForkOutcome(service, "start_failed", ready_ms=ready_ms, log_tail=log_tail, detail=detail)


def _create(kube: Kube, obj: Obj) -> None:
    try:
        kube.create(obj)
    except (Conflict, NotFound) as exc:  # a name taken, a namespace missing: the cluster's state
        raise InfrastructureError(str(exc)) from None


def available(deployment: Obj) -> bool:
    """The controller has seen the current spec and every wanted replica is updated and available."""
    status = deployment.get("status") or {}
    generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    if int(status.get("observedGeneration") or 0) < generation:
        return False
    want = int((deployment.get("spec") or {}).get("replicas", 1))
    return (
        int(status.get("availableReplicas") or 0) >= want and int(status.get("updatedReplicas") or 0) >= want
    )


def _stuck(deployment: Obj) -> bool:
    """The controller gave up (progressDeadlineSeconds passed): waiting longer changes nothing."""
    for condition in (deployment.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return True
    return False


def wait_available(kube: Kube, namespace: str, name: str, timeout_s: float) -> tuple[bool, Obj | None]:
    """Watch the Deployment (field selector on its name) until it is Available, it is deleted, its
    progress deadline passes or `timeout_s` runs out; (available, the last version seen)."""
    deadline = time.monotonic() + timeout_s
    last: Obj | None = None
    selector = f"metadata.name={name}"
    while True:
        listed = kube.list(DEPLOYMENT, namespace, field_selector=selector)
        if not listed.items:
            return False, last
        last = listed.items[0]
        if available(last):
            return True, last
        if _stuck(last):
            return False, last
        left = deadline - time.monotonic()
        if left <= 0:
            return False, last
        try:
            for type_, obj in kube.watch(
                DEPLOYMENT,
                namespace,
                field_selector=selector,
                resource_version=listed.resource_version,
                timeout_s=left,
            ):
                if type_ == "DELETED":
                    return False, last
                if type_ in ("ADDED", "MODIFIED"):
                    last = obj
                    if available(obj):
                        return True, obj
                    if _stuck(obj):
                        return False, obj
                if time.monotonic() >= deadline:
                    return False, last
        except Conflict:
            pass  # the watch's resourceVersion expired (410): list again
        if time.monotonic() >= deadline:
            return False, last


def pods_of(kube: Kube, namespace: str, deployment: Obj) -> list[Obj]:
    selector = selector_string((deployment.get("spec") or {}).get("selector"))
    if not selector:
        return []
    return kube.list(POD, namespace, label_selector=selector).items


def diagnose(kube: Kube, namespace: str, deployment: Obj, container: str | None) -> tuple[str, str | None]:
    """Why the Deployment's pods are not Available — waiting reasons (ImagePullBackOff, CrashLoopBackOff,
    last terminated as OOMKilled), the Warning events' messages — and the container's last log lines (the
    previous container's for one that restarted)."""
    pods = pods_of(kube, namespace, deployment)
    reasons: list[str] = []
    log_tail: str | None = None
    for pod in pods[:3]:
        status = _container_status(pod, container)
        if status is not None:
            reasons.extend(container_reasons(status))
            if log_tail is None:
                log_tail = _log_tail(kube, namespace, pod, status)
        elif (pod.get("status") or {}).get("phase") == "Pending":
            for condition in (pod.get("status") or {}).get("conditions") or []:
                if condition.get("status") == "False" and condition.get("message"):
                    reasons.append(
                        f"{condition.get('reason') or condition.get('type')}: {condition['message']}"
                    )
    if not pods:
        reasons.append(_deployment_conditions(deployment) or "no pod was created")
    events = warning_events(kube, namespace, [str(p["metadata"]["name"]) for p in pods[:3]])
    why = "; ".join(_unique(reasons)) or _deployment_conditions(deployment) or "its pod never became ready"
    if events:
        why += f"; events: {' | '.join(events)}"
    return why, log_tail


def _container_status(pod: Obj, container: str | None) -> Obj | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    if not statuses:
        return None
    if container is not None:
        for status in statuses:
            if status.get("name") == container:
                return dict(status)
    first = ((pod.get("spec") or {}).get("containers") or [{}])[0].get("name")
    for status in statuses:
        if status.get("name") == first:
            return dict(status)
    return dict(statuses[0])


def container_reasons(status: Obj) -> list[str]:
    """`ImagePullBackOff (Back-off pulling image "x")`, `last terminated: OOMKilled (exit 137)`, …"""
    out: list[str] = []
    state = status.get("state") or {}
    waiting = state.get("waiting")
    if waiting and waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
        message = waiting.get("message")
        out.append(f"{waiting['reason']}" + (f" ({_one_line(message)})" if message else ""))
    terminated = state.get("terminated")
    if terminated:
        out.append(f"terminated: {terminated.get('reason') or 'Error'} (exit {terminated.get('exitCode')})")
    last = (status.get("lastState") or {}).get("terminated")
    if last:
        out.append(f"last terminated: {last.get('reason') or 'Error'} (exit {last.get('exitCode')})")
    if not out and not status.get("ready"):
        if "running" in state:
            out.append("running but not ready (its readiness probe fails)")
        elif waiting:
            out.append(str(waiting.get("reason")))
    return out


def warning_events(kube: Kube, namespace: str, names: Iterable[str]) -> list[str]:
    """The Warning events' messages about these objects, distinct, newest last (at most EVENTS_SHOWN)."""
    messages: list[str] = []
    for name in names:
        listed = kube.list(EVENT, namespace, field_selector=f"involvedObject.name={name}")
        events = sorted(listed.items, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
        for event in events:
            if event.get("type") == "Warning":
                messages.append(f"{event.get('reason')}: {_one_line(str(event.get('message') or ''))}")
    return _unique(messages)[-EVENTS_SHOWN:]


def _log_tail(kube: Kube, namespace: str, pod: Obj, status: Obj) -> str | None:
    name = str(pod["metadata"]["name"])
    container = str(status.get("name"))
    crashed = int(status.get("restartCount") or 0) > 0 or bool(
        (status.get("lastState") or {}).get("terminated")
    )
    text = ""
    if crashed:
        text = kube.log(namespace, name, container, tail_lines=LOG_TAIL_LINES, previous=True)
    if not text:
        text = kube.log(namespace, name, container, tail_lines=LOG_TAIL_LINES)
    return clip(text) or None


def clip(text: str) -> str:
    lines = text.splitlines()[-LOG_TAIL_LINES:]
    return "\n".join(lines)[-LOG_TAIL_CHARS:]


def _deployment_conditions(deployment: Obj) -> str:
    out = []
    for condition in (deployment.get("status") or {}).get("conditions") or []:
        if condition.get("status") == "False" and condition.get("message"):
            out.append(f"{condition.get('reason')}: {condition['message']}")
    return "; ".join(out)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def _unique(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)
