"""The baseline is the cluster's own Deployments: finding each service's Deployment and the Service that
selects its pods, their health and logs. Nothing is started or stopped."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from bot.config import Config, ConfigError, InfrastructureError
from bot.config.kubernetes import KubernetesService
from bot.runtimes.kubernetes.client import DEPLOYMENT, SANDBOX_LABEL, SERVICE, Obj
from bot.runtimes.kubernetes.core import KubeCore, infrastructure, kube_settings, kube_spec
from bot.runtimes.kubernetes.forks import available, diagnose
from bot.runtimes.kubernetes.names import service_host
from bot.runtimes.kubernetes.workloads import selects
from bot.runtimes.protocol import Baseline, BaselineError, Source


@dataclass(frozen=True)
class BaselineService:
    """A service's baseline: its Deployment and the Service that selects its pods."""

    name: str
    spec: KubernetesService
    deployment: Obj
    service: Obj
    """The baseline Service (whose selector picks the Deployment's pods)."""

    @property
    def service_name(self) -> str:
        return str(self.service["metadata"]["name"])

    @property
    def host(self) -> str:
        return service_host(self.service_name, self.spec.namespace)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.spec.port}"


@dataclass
class BaselineInfo:
    config: Config
    services: dict[str, BaselineService]


class Baselines(KubeCore):
    """The cluster's own Deployments as the baseline every sandbox forks from."""

    @infrastructure
    def up_baseline(self, base: Source, config: Config) -> Baseline:
        """The cluster's own Deployments are the baseline: each must exist and be Available. Nothing is
        started, so the baseline is always `reused`."""
        info = self._discover(config)
        problems: list[str] = []
        tails: dict[str, str] = {}
        for name, service in sorted(info.services.items()):
            if not available(service.deployment):
                why, tail = diagnose(
                    self.kube, service.spec.namespace, service.deployment, service.spec.container
                )
                problems.append(
                    f"{name} ({service.spec.workload} in {service.spec.namespace}) is not Available: {why}"
                )
                if tail:
                    tails[name] = tail
        if problems:
            raise BaselineError(f"baseline {'; '.join(problems)}", tails)
        namespaces = sorted({s.spec.namespace for s in info.services.values()})
        digest = hashlib.sha256(f"{self._context()}|{','.join(namespaces)}".encode()).hexdigest()[:16]
        env_id = f"k8s-{digest}"
        with self._lock:
            self._baselines[env_id] = info
        return Baseline(
            env_id=env_id,
            base=base,
            entry_urls={name: s.url for name, s in sorted(info.services.items())},
            reused=True,
        )

    def _discover(self, config: Config) -> BaselineInfo:
        """Each service's Deployment and the Service selecting its pods: one list per kind per namespace."""
        kube_settings(config)
        specs = {name: kube_spec(config, name) for name in sorted(config.services)}
        namespaces = sorted({spec.namespace for spec in specs.values()})
        not_forks = f"!{SANDBOX_LABEL}"
        deployments = {
            ns: {
                str(d["metadata"]["name"]): d
                for d in self.kube.list(DEPLOYMENT, ns, label_selector=not_forks).items
            }
            for ns in namespaces
        }
        services = {ns: self.kube.list(SERVICE, ns, label_selector=not_forks).items for ns in namespaces}
        found: dict[str, BaselineService] = {}
        for name, spec in specs.items():
            deployment = deployments[spec.namespace].get(spec.deployment)
            if deployment is None:
                raise ConfigError(
                    f"services.{name}.kubernetes.workload: {spec.workload} not found in namespace"
                    f" {spec.namespace}"
                )
            service = _selecting_service(services[spec.namespace], deployment, spec.port)
            if service is None:
                raise ConfigError(
                    f"services.{name}.kubernetes: no Service in namespace {spec.namespace} selects the pods"
                    f" of {spec.workload} on port {spec.port} (services.{name}.kubernetes.port)"
                )
            found[name] = BaselineService(name, spec, deployment, service)
        return BaselineInfo(config, found)

    def _info(self, baseline: Baseline, config: Config | None = None) -> BaselineInfo:
        with self._lock:
            info = self._baselines.get(baseline.env_id)
        if info is None:
            if config is None:
                raise InfrastructureError(f"baseline {baseline.env_id} is unknown to this loopgate")
            info = self._discover(config)
            with self._lock:
                self._baselines[baseline.env_id] = info
        return info

    @infrastructure
    def baseline_health(self, baseline: Baseline) -> str | None:
        info = self._info(baseline)
        problems = []
        for name, service in sorted(info.services.items()):
            current = self.kube.find(DEPLOYMENT, service.spec.namespace, service.spec.deployment)
            if current is None:
                problems.append(f"{name}: {service.spec.workload} in {service.spec.namespace} is gone")
            elif not available(current):
                problems.append(
                    f"{name}: {service.spec.workload} in {service.spec.namespace} is not Available"
                )
        return "; ".join(problems) or None

    @infrastructure
    def baseline_logs(self, baseline: Baseline) -> dict[str, str]:
        info = self._info(baseline)
        tails: dict[str, str] = {}
        for name, service in sorted(info.services.items()):
            current = self.kube.find(DEPLOYMENT, service.spec.namespace, service.spec.deployment)
            if current is not None and not available(current):
                _, tail = diagnose(self.kube, service.spec.namespace, current, service.spec.container)
                if tail:
                    tails[name] = tail
        return tails

    def release_baseline(self, baseline: Baseline) -> None:
        """Nothing to stop: the baseline is the cluster's own Deployments, which loopgate never started."""

    def retire_stale_baselines(self, current: Source) -> list[str]:
        """Nothing to retire: the cluster runs one baseline (its own), whatever the base commit."""
        return []


def _selecting_service(services: list[Obj], deployment: Obj, port: int) -> Obj | None:
    """The Service whose selector picks the Deployment's pods and that offers `port`: the one named like
    the Deployment first, then by name."""
    labels = (
        (((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels")
    ) or {}
    name = str(deployment["metadata"]["name"])
    matching: list[Obj] = []
    for service in services:
        spec = service.get("spec") or {}
        if spec.get("type") == "ExternalName" or not selects(spec.get("selector"), labels):
            continue
        if any(p.get("port") == port for p in spec.get("ports") or []):
            matching.append(service)
    matching.sort(key=lambda s: (s["metadata"]["name"] != name, str(s["metadata"]["name"])))
    return matching[0] if matching else None
