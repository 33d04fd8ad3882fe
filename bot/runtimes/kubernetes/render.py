"""Every object the Kubernetes runtime would create or patch for one sandbox, for `loopgate render`.

A user reviews them, or checks them against the real cluster with `kubectl apply --dry-run=server`,
before letting loopgate near it. The objects come from the same builders the runtime uses
(`objects.py`). Offline there is no cluster to read, so each baseline Deployment and Service is a
skeleton made from `.loopgate.yml` (`skeleton_deployment`, `skeleton_service`); the YAML header says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml

from bot.config.errors import ConfigError
from bot.config.kubernetes import KubernetesService, KubernetesSettings
from bot.config.schema import Config
from bot.runtimes.kubernetes import objects
from bot.runtimes.kubernetes import state as copies

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
) -> list[dict[str, Any]]:
    """Every object the runtime would create or patch for a sandbox forking `services` (default all):
    build Jobs, fork Deployments and Services, routes (`routing`, default the config's), suite Jobs.

    `baselines` (service → Deployment) and `services_in_namespace` (namespace → Services) are what the
    runtime reads from the cluster; missing, skeletons stand in. `merge_sha` defaults to `head_sha`."""
    if not objects.is_routing_key(key):
        raise ConfigError(f"sandbox key {key!r} is not a routing key: 6 to 16 of a-z and 0-9")
    settings = settings_of(config)
    routing = routing or settings.routing
    if routing not in ROUTINGS:
        raise ConfigError(f"routing {routing!r} is not one of {', '.join(ROUTINGS)}")
    merge = merge_sha or head_sha
    expires = objects.expires_at(settings.ttl, now or datetime.now(UTC))
    in_namespace = dict(services_in_namespace or _offline_services(config))
    builds: list[dict[str, Any]] = []
    forks: list[dict[str, Any]] = []
    routes: list[dict[str, Any]] = []
    for name in _selected(config, services):
        spec = kubernetes_spec(config, name)
        namespace = objects.fork_namespace(spec, settings.sandbox_namespace)
        if spec.build is not None:
            destination = f"{spec.build.registry}:{head_sha}"  # the runtime builds the pushed head
            context = (git_context or PLACEHOLDER_GIT_CONTEXT).replace("{merge_sha}", head_sha)
            builds.append(_build(config, name, spec, key, context, destination, expires))
            image = destination
        else:
            assert spec.image is not None  # the schema requires exactly one of image and build
            image = objects.image_for(
                spec.image, sha=head_sha, merge_sha=merge, base_sha=base_sha, service=name
            )
        baseline = (baselines or {}).get(name) or skeleton_deployment(name, spec)
        fork = objects.fork_deployment(
            baseline,
            service=name,
            spec=spec,
            key=key,
            image=image,
            namespace=namespace,
            expires_at=expires,
            services_in_namespace=_services_near(in_namespace, spec.namespace, namespace),
            ready_timeout_s=spec.ready_timeout or settings.ready_timeout,
        )
        copy = _state_copy(config, name, key, namespace)
        if copy is not None:
            container = spec.container or str(fork["spec"]["template"]["spec"]["containers"][0]["name"])
            fork = copies.point_at_copy(fork, copy, container, spec.state_env)
            forks += [
                copies.record(copy, expires),
                copies.password_secret(copy, COPY_PASSWORD_PLACEHOLDER, expires),
                copies.copy_job(copy, expires),
            ]
        fork_svc = objects.fork_service(fork, service=name, spec=spec, key=key, expires_at=expires)
        forks += [fork, fork_svc]
        routes += _routes(config, routing, name, spec, key, fork_svc, expires)
    suites = _suite_jobs(config, key, head_sha, merge, base_sha, expires, nonce)
    return builds + forks + routes + _reference_grants(routes, key, expires) + suites


COPY_PASSWORD_PLACEHOLDER = "generated-per-copy-at-fork-time"


def _state_copy(config: Config, service: str, key: str, namespace: str) -> copies.Copy | None:
    """The Postgres copy the runtime makes for this fork (DESIGN "Data"), when the service declares one
    and the config names the server."""
    state = config.services[service].state
    server = config.runtime.kubernetes.postgres if config.runtime.kind == "kubernetes" else None
    if state is None or state.postgres is None or server is None:
        return None
    return copies.Copy(key, service, namespace, state.postgres.database, server)


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
    key: str,
    fork_svc: dict[str, Any],
    expires: str,
) -> list[dict[str, Any]]:
    """The sandbox's route objects for one service. Istio: the VirtualService as it would be after the
    route is added (offline: the loopgate-owned one the runtime creates where none exists)."""
    fork_name, fork_ns = fork_svc["metadata"]["name"], fork_svc["metadata"]["namespace"]
    if routing == "istio":
        baseline_host = objects.service_host(objects.baseline_service_name(service, spec), spec.namespace)
        vs = objects.owned_virtual_service(service=service, spec=spec, baseline_host=baseline_host)
        route = objects.istio_route(
            key=key,
            routing=config.routing,
            fork_host=objects.service_host(fork_name, fork_ns),
            port=spec.port,
        )
        return [objects.with_route(vs, route)]
    if routing == "gateway-api":
        http_route = objects.http_route(
            service=service,
            spec=spec,
            key=key,
            routing=config.routing,
            fork_service=fork_name,
            namespace=fork_ns,
            expires_at=expires,
        )
        return [http_route]
    return []


def _reference_grants(routes: Iterable[dict[str, Any]], key: str, expires: str) -> list[dict[str, Any]]:
    """One ReferenceGrant per (route namespace, fork namespace) pair that differ."""
    pairs: set[tuple[str, str]] = set()
    for route in routes:
        if route["kind"] != "HTTPRoute":
            continue
        for rule in route["spec"]["rules"]:
            for ref in rule.get("backendRefs", []):
                if "namespace" in ref:
                    pairs.add((route["metadata"]["namespace"], ref["namespace"]))
    return [
        objects.reference_grant(key=key, route_namespace=source, namespace=target, expires_at=expires)
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


def header(*, key: str, routing: str, services: Sequence[str], head_sha: str, base_sha: str) -> str:
    """The YAML comment that says what the documents are, and what offline rendering could not know."""
    lines = [
        f"loopgate render: the objects the Kubernetes runtime would create or patch for sandbox {key}",
        f"(routing {routing}; forked services {', '.join(services)}; head {head_sha}, base {base_sha}).",
        "Rendered offline: each baseline Deployment is a SKELETON made from .loopgate.yml (one container,",
        "the configured port, pods labelled app=<deployment>, a Service named like the service); the runtime",
        "copies the real pod template and rewrites the labels the real Services select by.",
    ]
    if routing == "istio":
        lines += [
            "Istio: where the service already has a VirtualService the runtime adds its loopgate-<key> route",
            "to it; the loopgate-owned VirtualService shown here is what it creates where none exists.",
        ]
    if routing == "none":
        lines.append(
            "Routing none: no routes; the mesh must send tagged requests to the fork Services itself."
        )
    lines += [
        "Suite Jobs carry a random nonce per run. Check against your cluster:",
        "  loopgate render ... | kubectl apply --dry-run=server -f -",
    ]
    return "".join(f"# {line}\n" for line in lines)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the suite wrapper script) as literal blocks, so people can read them."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(documents: Sequence[dict[str, Any]], comment: str = "") -> str:
    """Multi-document YAML (`---` before each object), keys in the builders' order, after `comment`."""
    body = yaml.dump_all(
        documents, Dumper=_Dumper, sort_keys=False, explicit_start=True, width=4096, allow_unicode=True
    )
    return comment + body
