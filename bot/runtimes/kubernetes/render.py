"""Every object the Kubernetes runtime would create or patch for one sandbox, for `loopgate render`.

A user reviews them, or checks them against the real cluster with `kubectl apply --dry-run=server`,
before letting loopgate near it. The objects come from the same builders the runtime uses
(`objects.py`). Offline there is no cluster to read, so each baseline Deployment and Service is a
skeleton made from `.loopgate.yml` (`skeleton_deployment`, `skeleton_service`); the YAML header says so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from bot.config.errors import ConfigError
from bot.config.kubernetes import KubernetesService, KubernetesSettings
from bot.config.schema import Config
from bot.runtimes.kubernetes import objects
from bot.runtimes.kubernetes import state as copies
from bot.runtimes.kubernetes.controlrecords import control_record
from bot.runtimes.kubernetes.renderyaml import header as header
from bot.runtimes.kubernetes.renderyaml import to_yaml as to_yaml

ROUTINGS = ("istio", "gateway-api", "none")
PLACEHOLDER_GIT_CONTEXT = "git://git.example.invalid/your/repository.git#{merge_sha}"
"""Where a build Job would fetch the merge commit; the runtime knows the repository, render does not."""


def settings_of(config: Config) -> KubernetesSettings:
    """`runtime.kubernetes` of a Kubernetes config; the defaults for a config written for `local`."""
    return config.runtime.kubernetes if config.runtime.kind == "kubernetes" else KubernetesSettings()


def kubernetes_spec(config: Config, service: str) -> KubernetesService:
    if service not in config.services:
        known = ", ".join(sorted(config.services))
        raise ConfigError(f"unknown service {service!r} (services: {known})")
    spec = config.services[service].kubernetes
    if spec is None:
        raise ConfigError(
            f"service {service!r} has no `kubernetes:` section, which the Kubernetes runtime needs"
        )
    return spec


def _skeleton_labels(spec: KubernetesService) -> dict[str, str]:
    return {"app": objects.bounded_name(spec.deployment)}


def skeleton_deployment(service: str, spec: KubernetesService) -> dict[str, Any]:
    """A stand-in for the baseline Deployment when rendering offline: one container named after the
    service (or `spec.container`), listening on `spec.port`, labelled `app: <deployment>`."""
    pod_labels = _skeleton_labels(spec)
    container = {
        "name": spec.container or service,
        "image": f"baseline/{service}:unknown",
        "ports": [{"name": "http", "containerPort": spec.port}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": spec.deployment, "namespace": spec.namespace, "labels": dict(pod_labels)},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": dict(pod_labels)},
            "template": {"metadata": {"labels": dict(pod_labels)}, "spec": {"containers": [container]}},
        },
    }


def skeleton_service(service: str, spec: KubernetesService) -> dict[str, Any]:
    """A stand-in for the baseline Service: named like the service, selecting the skeleton's pods."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": objects.baseline_service_name(service, spec), "namespace": spec.namespace},
        "spec": {
            "selector": _skeleton_labels(spec),
            "ports": [{"name": "http", "port": spec.port, "targetPort": "http"}],
        },
    }


def _selected(config: Config, services: Sequence[str] | None) -> list[str]:
    names = sorted(set(services)) if services else sorted(config.services)
    for name in names:
        kubernetes_spec(config, name)
    return names


def _offline_services(config: Config) -> dict[str, list[dict[str, Any]]]:
    """Namespace → the skeleton Services of every configured service in it."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, service in sorted(config.services.items()):
        if service.kubernetes is not None:
            out.setdefault(service.kubernetes.namespace, []).append(
                skeleton_service(name, service.kubernetes)
            )
    return out


def _services_near(
    in_namespace: Mapping[str, list[dict[str, Any]]], baseline_ns: str, fork_ns: str
) -> list[dict[str, Any]]:
    """The Services whose selectors a fork must escape: a Service selects pods of its own namespace only,
    so the fork's; the baseline's too (conservative: the same labels, should the fork move back)."""
    near = list(in_namespace.get(baseline_ns, []))
    return near + list(in_namespace.get(fork_ns, [])) if fork_ns != baseline_ns else near


def render_sandbox(
    config: Config,
    *,
    key: str,
    routing: str | None,
    services: list[str] | None,
    head_sha: str,
    base_sha: str,
    baselines: Mapping[str, dict[str, Any]] | None = None,
    merge_sha: str | None = None,
    services_in_namespace: Mapping[str, list[dict[str, Any]]] | None = None,
    now: datetime | None = None,
    nonce: str | None = None,
    git_context: str | None = None,
    controls: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Every object the runtime would create or patch for a sandbox forking `services` (default all):
    build Jobs, fork Deployments and Services, routes (`routing`, default the config's), suite Jobs.
    With `controls` (their routing keys), each control's too: its record first, then for every service
    its fork of the base commit beside the sandbox's, its data copy from the same copy Job, its routes,
    and the suites run against it.

    `baselines` (service → Deployment) and `services_in_namespace` (namespace → Services) are what the
    runtime reads from the cluster; missing, skeletons stand in. `merge_sha` defaults to `head_sha`."""
    for each in (key, *controls):
        if not objects.is_routing_key(each):
            raise ConfigError(f"sandbox key {each!r} is not a routing key: 6 to 16 of a-z and 0-9")
    settings = settings_of(config)
    routing = routing or settings.routing
    if routing not in ROUTINGS:
        raise ConfigError(f"routing {routing!r} is not one of {', '.join(ROUTINGS)}")
    merge = merge_sha or head_sha
    expires = objects.expires_at(settings.ttl, now or datetime.now(UTC))
    in_namespace = dict(services_in_namespace or _offline_services(config))
    # (routing key, owner, the commit its forks run): the sandbox runs the change, a control the base.
    sides = [(key, None, head_sha, merge), *((c, key, base_sha, base_sha) for c in controls)]
    records = [
        control_record(owner=key, key=c, namespace=objects.jobs_namespace(config), expires_at=expires)
        for c in controls
    ]
    builds: list[dict[str, Any]] = []
    forks: list[dict[str, Any]] = []
    routes: list[dict[str, Any]] = []
    for name in _selected(config, services):
        spec = kubernetes_spec(config, name)
        protocol = config.services[name].protocol
        namespace = objects.fork_namespace(spec, settings.sandbox_namespace)
        group: list[copies.Copy] = []
        workloads: list[dict[str, Any]] = []
        fork_services: list[tuple[str, str | None, dict[str, Any]]] = []
        for side, owner, sha, side_merge in sides:
            if spec.build is not None:
                destination = f"{spec.build.registry}:{sha}"  # the runtime builds the pushed head
                context = (git_context or PLACEHOLDER_GIT_CONTEXT).replace("{merge_sha}", sha)
                build = _build(config, name, spec, side, context, destination, expires)
                builds.append(objects.as_control(build, owner))
                image = destination
            else:
                assert spec.image is not None  # the schema requires exactly one of image and build
                image = objects.image_for(
                    spec.image, sha=sha, merge_sha=side_merge, base_sha=base_sha, service=name
                )
            baseline = (baselines or {}).get(name) or skeleton_deployment(name, spec)
            fork = objects.fork_deployment(
                baseline,
                service=name,
                spec=spec,
                key=side,
                image=image,
                namespace=namespace,
                expires_at=expires,
                services_in_namespace=_services_near(in_namespace, spec.namespace, namespace),
                ready_timeout_s=spec.ready_timeout or settings.ready_timeout,
            )
            copy = _state_copy(config, name, side, namespace, owner)
            if copy is not None:
                container = spec.container or str(fork["spec"]["template"]["spec"]["containers"][0]["name"])
                fork = copies.point_at_copy(fork, copy, container, spec.state_env)
                group.append(copy)
                forks += [
                    copies.record(copy, expires),
                    copies.password_secret(copy, COPY_PASSWORD_PLACEHOLDER, expires),
                ]
            fork_svc = objects.fork_service(
                fork, service=name, spec=spec, key=side, expires_at=expires, protocol=protocol
            )
            workloads += [objects.as_control(fork, owner), objects.as_control(fork_svc, owner)]
            fork_services.append((side, owner, fork_svc))
        if group:  # one Job: every side's copy from one dump of the baseline's database
            forks.append(copies.copy_job(group, expires))
        forks += workloads
        routes += _routes(config, routing, name, spec, fork_services, expires)
    suites = [
        objects.as_control(job, owner)
        for side, owner, _, _ in sides
        for job in _suite_jobs(config, side, head_sha, merge, base_sha, expires, nonce)
    ]
    return records + builds + forks + routes + _reference_grants(routes, sides, expires) + suites


def control_keys(key: str) -> list[str]:
    """The routing keys render shows for a sandbox's two controls (primary, secondary): made from the
    sandbox's key, so the same command prints the same objects. The runtime draws them at random."""
    return [hashlib.sha256(f"{key}/{side}".encode()).hexdigest()[:10] for side in ("primary", "secondary")]


COPY_PASSWORD_PLACEHOLDER = "generated-per-copy-at-fork-time"


def _state_copy(
    config: Config, service: str, key: str, namespace: str, owner: str | None = None
) -> copies.Copy | None:
    """The Postgres copy the runtime makes for this fork (DESIGN "Data"), when the service declares one
    and the config names the server; `owner` when the fork is a control's."""
    state = config.services[service].state
    server = config.runtime.kubernetes.postgres if config.runtime.kind == "kubernetes" else None
    if state is None or state.postgres is None or server is None:
        return None
    return copies.Copy(key, service, namespace, state.postgres.database, server, owner)


def _build(
    config: Config,
    service: str,
    spec: KubernetesService,
    key: str,
    git_context: str,
    destination: str,
    expires: str,
) -> dict[str, Any]:
    assert spec.build is not None
    return objects.build_job(
        name=objects.build_job_name(key, service),
        namespace=objects.jobs_namespace(config),
        key=key,
        service=service,
        build=spec.build,
        git_context=git_context,
        destination=destination,
        expires_at=expires,
    )


def _routes(
    config: Config,
    routing: str,
    service: str,
    spec: KubernetesService,
    sides: Sequence[tuple[str, str | None, dict[str, Any]]],
    expires: str,
) -> list[dict[str, Any]]:
    """The route objects for one service of each side (routing key, owner, fork Service). Istio: the
    VirtualService as it would be after every side's route is added (offline: the loopgate-owned one
    the runtime creates where none exists). Gateway API: an HTTPRoute each, a GRPCRoute for a gRPC
    service (offline, no HTTPRoute of the team's is known to be attached: `gateway_route_kind`)."""
    if routing == "istio":
        baseline_host = objects.service_host(objects.baseline_service_name(service, spec), spec.namespace)
        vs = objects.owned_virtual_service(service=service, spec=spec, baseline_host=baseline_host)
        for key, _, fork_svc in sides:
            fork_name, fork_ns = fork_svc["metadata"]["name"], fork_svc["metadata"]["namespace"]
            route = objects.istio_route(
                key=key,
                routing=config.routing,
                fork_host=objects.service_host(fork_name, fork_ns),
                port=spec.port,
            )
            vs = objects.with_route(vs, route)
        return [vs]
    if routing == "gateway-api":
        return [
            objects.as_control(
                objects.http_route(
                    service=service,
                    spec=spec,
                    key=key,
                    routing=config.routing,
                    fork_service=fork_svc["metadata"]["name"],
                    namespace=fork_svc["metadata"]["namespace"],
                    expires_at=expires,
                    kind=objects.gateway_route_kind(config.services[service].protocol),
                ),
                owner,
            )
            for key, owner, fork_svc in sides
        ]
    return []


def _reference_grants(
    routes: Iterable[dict[str, Any]], sides: Sequence[tuple[str, str | None, str, str]], expires: str
) -> list[dict[str, Any]]:
    """One ReferenceGrant per side per (route namespace, fork namespace) pair that differ."""
    pairs: set[tuple[str, str]] = set()
    for route in routes:
        if route["kind"] not in objects.ROUTE_KINDS:
            continue
        for rule in route["spec"]["rules"]:
            for ref in rule.get("backendRefs", []):
                if "namespace" in ref:
                    pairs.add((route["metadata"]["namespace"], ref["namespace"]))
    return [
        objects.as_control(
            objects.reference_grant(key=key, route_namespace=source, namespace=target, expires_at=expires),
            owner,
        )
        for key, owner, _, _ in sides
        for source, target in sorted(pairs)
    ]


def _suite_jobs(
    config: Config, key: str, head_sha: str, merge_sha: str, base_sha: str, expires: str, nonce: str | None
) -> list[dict[str, Any]]:
    """A Job per suite that says how it runs in a cluster (`verify.suites[].kubernetes`), tagged for the
    sandbox; `{service}` in a suite's image template stands for the suite's name."""
    jobs = []
    env = objects.suite_env(config, key)
    for suite in config.verify.suites:
        if suite.kubernetes is None:
            continue
        image = objects.image_for(
            suite.kubernetes.image, sha=head_sha, merge_sha=merge_sha, base_sha=base_sha, service=suite.name
        )
        job = objects.suite_job(
            name=objects.suite_job_name(key, suite.name),
            namespace=objects.jobs_namespace(config),
            key=key,
            suite_name=suite.name,
            image=image,
            command=list(suite.kubernetes.command),
            env=env,
            timeout_s=suite.timeout,
            nonce=nonce or objects.new_nonce(),
            expires_at=expires,
        )
        jobs.append(job)
    return jobs
