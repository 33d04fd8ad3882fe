"""The Kubernetes runtime: the cluster's own Deployments are the baseline; a sandbox forks the changed
ones beside them, routes its tagged requests to the forks through the mesh, runs suites and builds as
Jobs, and is deleted by label. Everything loopgate makes is labelled and stamped with its expiry before it
exists, so `gc` (cluster-wide, by label) removes what any crash left behind.

Agent code (builds, forks, head suites) runs in its own pods: confined by the cluster, never in
loopgate's process or with its credentials.
"""

from __future__ import annotations

import hashlib
import secrets
import string
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.config import Config, ConfigError, InfrastructureError, LoopgateError, RuntimeSettings, Service
from bot.config.kubernetes import KubernetesService, KubernetesSettings
from bot.runtimes.git import Git
from bot.runtimes.guard import infrastructure_errors
from bot.runtimes.kubernetes import gc as sweeper
from bot.runtimes.kubernetes import objects, routes
from bot.runtimes.kubernetes import state as copies
from bot.runtimes.kubernetes.client import (
    DEPLOYMENT,
    EXPIRES_AT,
    HTTP_ROUTE,
    JOB,
    MANAGED,
    POD,
    REFERENCE_GRANT,
    ROLE_LABEL,
    SANDBOX_LABEL,
    SERVICE,
    SERVICE_LABEL,
    Kube,
    Obj,
    api_client,
    context_name,
)
from bot.runtimes.kubernetes.forks import Fork, available, diagnose, pods_of, start_fork
from bot.runtimes.protocol import (
    Baseline,
    BaselineError,
    BuildOutcome,
    ForkOutcome,
    ObservedRequest,
    ProbeAnswer,
    ProbeRequest,
    Sandbox,
    Source,
    SuiteOutcome,
    SuiteRequest,
)

_KEY_ALPHABET = string.ascii_lowercase + string.digits


infrastructure = infrastructure_errors("kubernetes runtime")


def new_routing_key() -> str:
    return "".join(secrets.choice(_KEY_ALPHABET) for _ in range(10))


def kube_settings(config: Config) -> KubernetesSettings:
    if config.runtime.kind != "kubernetes":
        raise ConfigError(f"runtime.kind is {config.runtime.kind}; this is the kubernetes runtime")
    return config.runtime.kubernetes


def kube_spec(config: Config, service: str) -> KubernetesService:
    spec = config.services[service].kubernetes
    if spec is None:
        raise ConfigError(f"services.{service}.kubernetes is required by the Kubernetes runtime")
    return spec


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
        return f"{self.service_name}.{self.spec.namespace}.svc.cluster.local"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.spec.port}"


@dataclass
class BaselineInfo:
    config: Config
    services: dict[str, BaselineService]


@dataclass
class SandboxState:
    """What this process knows of a sandbox it made; the cluster's labels are the durable record."""

    key: str
    created: datetime
    expires_at: str
    head_sha: str
    merge_sha: str
    base_sha: str
    images: dict[str, str] = field(default_factory=dict)
    forks: dict[str, Fork] = field(default_factory=dict)


class KubernetesRuntime:
    kind = "kubernetes"

    def __init__(self, settings: RuntimeSettings, api_client: Any | None = None) -> None:
        self.settings = settings
        self._api = api_client
        self._lock = threading.Lock()
        self._baselines: dict[str, BaselineInfo] = {}
        self._sandboxes: dict[str, SandboxState] = {}

    @property
    def confined(self) -> bool:
        """Builds, forks and suites run in their own pods, never in loopgate's process."""
        return True

    # -- the cluster ---------------------------------------------------------------------------------

    @property
    def api(self) -> Any:
        """The official client's ApiClient (untyped), made on first use from the operator's kubeconfig."""
        with self._lock:
            if self._api is None:
                self._api = api_client(self.settings.kubeconfig, self.settings.kube_context)
            return self._api

    @property
    def kube(self) -> Kube:
        return Kube(self.api)

    def _context(self) -> str:
        if self.settings.kubeconfig is None and self._api is not None and self.settings.kube_context is None:
            return self.kube.host  # a client handed in (tests, embedding): its server names the cluster
        return context_name(self.settings.kubeconfig, self.settings.kube_context)

    # -- baseline ------------------------------------------------------------------------------------

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

    # -- sandboxes -----------------------------------------------------------------------------------

    @infrastructure
    def new_sandbox(self, baseline: Baseline, config: Config, head: Source) -> Sandbox:
        settings = kube_settings(config)
        self._info(baseline, config)
        live = self.live_sandboxes()
        if len(live) >= settings.max_sandboxes:
            raise InfrastructureError(
                f"the cluster already holds {len(live)} sandboxes (runtime.kubernetes.max_sandboxes ="
                f" {settings.max_sandboxes}): wait for them to finish, delete some, or raise the limit;"
                " `loopgate gc --runtime kubernetes` removes expired ones"
            )
        key = new_routing_key()
        now = datetime.now(UTC)
        state = SandboxState(
            key=key,
            created=now,
            expires_at=objects.expires_at(settings.ttl, now),
            head_sha=_head_of(head, baseline.base.sha),
            merge_sha=head.sha,
            base_sha=baseline.base.sha,
        )
        with self._lock:
            self._sandboxes[key] = state
        return Sandbox(routing_key=key, baseline=baseline, config=config)

    def live_sandboxes(self) -> set[str]:
        """Routing keys with an unexpired fork Deployment anywhere in the cluster: one list call."""
        forks = self.kube.list(DEPLOYMENT, None, label_selector=f"{MANAGED},{ROLE_LABEL}=fork").items
        return sweeper.live_sandboxes(forks, datetime.now(UTC))

    def _state(self, sandbox: Sandbox) -> SandboxState:
        with self._lock:
            state = self._sandboxes.get(sandbox.routing_key)
        if state is not None:
            return state
        adopted = self._adopt(sandbox)
        with self._lock:
            return self._sandboxes.setdefault(sandbox.routing_key, adopted)

    def _adopt(self, sandbox: Sandbox) -> SandboxState:
        """A sandbox another process made: its forks, creation time and expiry as the labels record them
        (two cluster-wide list calls); commits it no longer knows are taken as the base's."""
        settings = kube_settings(sandbox.config)
        key = sandbox.routing_key
        selector = f"{SANDBOX_LABEL}={key},{ROLE_LABEL}=fork"
        deployments = self.kube.list(DEPLOYMENT, None, label_selector=selector).items
        services = {
            (s["metadata"]["namespace"], ((s["metadata"].get("labels") or {}).get(SERVICE_LABEL))): s
            for s in self.kube.list(SERVICE, None, label_selector=selector).items
        }
        now = datetime.now(UTC)
        created, expires = now, objects.expires_at(settings.ttl, now)
        forks: dict[str, Fork] = {}
        for deployment in deployments:
            metadata = deployment["metadata"]
            name = (metadata.get("labels") or {}).get(SERVICE_LABEL)
            service = services.get((metadata.get("namespace"), name))
            if name not in sandbox.config.services or service is None:
                continue
            spec = kube_spec(sandbox.config, name)
            namespace = str(metadata["namespace"])
            forks[name] = Fork(
                name, namespace, str(metadata["name"]), str(service["metadata"]["name"]), spec.port
            )
            stamp = metadata.get("creationTimestamp")
            if stamp:
                created = min(created, datetime.fromisoformat(str(stamp).replace("Z", "+00:00")))
            expires = str((metadata.get("annotations") or {}).get(EXPIRES_AT) or expires)
        base = sandbox.baseline.base.sha
        return SandboxState(key, created, expires, base, base, base, forks=forks)

    def _image(self, state: SandboxState, template: str, service: str) -> str:
        return objects.image_for(
            template, sha=state.head_sha, merge_sha=state.merge_sha, base_sha=state.base_sha, service=service
        )

    @infrastructure
    def build(self, sandbox: Sandbox, service: str, spec: Service) -> BuildOutcome:
        """An `image` template names what the team's CI built (no build here); `build:` runs Kaniko."""
        from bot.runtimes.kubernetes import builds

        state = self._state(sandbox)
        kspec = kube_spec(sandbox.config, service)
        if kspec.image is not None:
            image = self._image(state, kspec.image, service)
            with self._lock:
                state.images[service] = image
            return BuildOutcome(service, True, image)
        assert kspec.build is not None
        # The pushed head, not the merge: Kaniko fetches from the remote, where no merge commit exists
        # (the same commit an `image:` template's {sha} names, built by the team's CI).
        destination = f"{kspec.build.registry}:{state.head_sha}"
        job = objects.build_job(
            name=objects.build_job_name(state.key, service),
            namespace=objects.jobs_namespace(sandbox.config),
            key=state.key,
            service=service,
            build=kspec.build,
            git_context=_git_context(sandbox.baseline.base.repo, state.head_sha),
            destination=destination,
            expires_at=state.expires_at,
        )
        outcome = builds.run_build(
            self.api, job, service=service, destination=destination, timeout_s=kspec.build.timeout
        )
        if outcome.ok:
            with self._lock:
                state.images[service] = destination
        return outcome

    @infrastructure
    def fork(self, sandbox: Sandbox, service: str, spec: Service) -> ForkOutcome:
        state = self._state(sandbox)
        settings = kube_settings(sandbox.config)
        kspec = kube_spec(sandbox.config, service)
        image = state.images.get(service)
        if image is None:
            if kspec.image is None:
                raise InfrastructureError(f"{service} has no image: its build did not run")
            image = self._image(state, kspec.image, service)
        namespace = objects.fork_namespace(kspec, settings.sandbox_namespace)
        info = self._info(sandbox.baseline, sandbox.config)
        baseline = self.kube.get(DEPLOYMENT, kspec.namespace, kspec.deployment)
        adjust = self._copy_state(sandbox, service, spec, namespace, state.key, state.expires_at)
        fork, outcome = start_fork(
            self.kube,
            service=service,
            spec=kspec,
            key=state.key,
            image=image,
            namespace=namespace,
            expires_at=state.expires_at,
            baseline=baseline,
            baseline_service=info.services[service].service,
            # Other sandboxes' Services select only their own forks: the baseline's are what matter.
            services_in_namespace=self.kube.list(
                SERVICE, namespace, label_selector=f"!{SANDBOX_LABEL}"
            ).items,
            timeout_s=kspec.ready_timeout or settings.ready_timeout,
            adjust=adjust,
        )
        with self._lock:
            state.forks[service] = fork
        return outcome

    def _copy_state(
        self, sandbox: Sandbox, service: str, spec: Service, namespace: str, key: str, expires_at: str
    ) -> Callable[[Obj], Obj] | None:
        """The fork's own copy of the service's Postgres state, made now (DESIGN "Data"); returns how
        the fork's Deployment points at it. SQLite state lives in the pod's own files: a fork starts
        from its image's, never the baseline's volume (the route note says so)."""
        if spec.state is None or spec.state.postgres is None:
            return None
        server = kube_settings(sandbox.config).postgres
        if server is None:  # the loader refuses such a config; a hand-made Config gets the same words
            raise ConfigError(f"services.{service}.state: a postgres state needs runtime.kubernetes.postgres")
        kspec = kube_spec(sandbox.config, service)
        copy = copies.Copy(key, service, namespace, spec.state.postgres.database, server)
        copies.make_copy(self.kube, self.api, copy, expires_at)
        container = kspec.container

        def point(deployment: Obj) -> Obj:
            containers = deployment["spec"]["template"]["spec"]["containers"]
            name = container or str(containers[0].get("name"))
            return copies.point_at_copy(deployment, copy, name, kspec.state_env)

        return point

    def keep(self, sandbox: Sandbox) -> None:
        """Nothing to do: every object carries its expires-at, after which gc removes it."""

    # -- routes --------------------------------------------------------------------------------------

    @infrastructure
    def route(self, sandbox: Sandbox) -> str | None:
        settings = kube_settings(sandbox.config)
        state = self._state(sandbox)
        notes = [_sqlite_note(name) for name in sorted(state.forks) if _has_sqlite(sandbox.config, name)]
        if settings.routing == "none":
            return "; ".join([routes.NONE_NOTE, *notes])
        self._add_routes(sandbox, settings, state)
        return "; ".join(notes) or None

    def _add_routes(self, sandbox: Sandbox, settings: KubernetesSettings, state: SandboxState) -> None:
        info = self._info(sandbox.baseline, sandbox.config)
        for service, fork in sorted(state.forks.items()):
            spec = kube_spec(sandbox.config, service)
            if settings.routing == "istio":
                routes.add_istio_route(
                    self.kube,
                    service=service,
                    spec=spec,
                    routing=sandbox.config.routing,
                    key=state.key,
                    fork=fork,
                    baseline_host=info.services[service].host,
                )
            else:
                routes.add_http_route(
                    self.kube,
                    service=service,
                    spec=spec,
                    routing=sandbox.config.routing,
                    key=state.key,
                    fork=fork,
                    parent_service=info.services[service].service_name,
                    expires_at=state.expires_at,
                )

    @infrastructure
    def unroute(self, sandbox: Sandbox) -> None:
        settings = kube_settings(sandbox.config)
        if settings.routing == "none":
            return
        key = sandbox.routing_key
        namespaces = sorted({kube_spec(sandbox.config, s).namespace for s in sandbox.config.services})
        for namespace in namespaces:
            if settings.routing == "istio":
                routes.remove_istio_routes(self.kube, namespace, {key})
            else:
                self.kube.delete_collection(HTTP_ROUTE, namespace, f"{SANDBOX_LABEL}={key}")

    # -- suites, probes, observation -----------------------------------------------------------------

    @infrastructure
    def run_suite(self, sandbox: Sandbox, suite: SuiteRequest) -> SuiteOutcome:
        from bot.runtimes.kubernetes import jobs

        if suite.kubernetes is None:
            raise ConfigError(
                f"suite {suite.name} has no `kubernetes:` section (verify.suites[].kubernetes: image and"
                " command), which the Kubernetes runtime needs"
            )
        state = self._state(sandbox)
        info = self._info(sandbox.baseline, sandbox.config)
        names = {name: s.service_name for name, s in info.services.items()}
        tagged = suite.target == "sandbox"
        env = objects.suite_env(sandbox.config, state.key if tagged else None, names)
        env.update(suite.extra_env)
        variant = suite.name + ("-head" if suite.source == "head" else "") + ("" if tagged else "-baseline")
        nonce = objects.new_nonce()
        job = objects.suite_job(
            name=objects.suite_job_name(state.key, variant),
            namespace=objects.jobs_namespace(sandbox.config),
            key=state.key,
            suite_name=suite.name,
            image=self._image(state, suite.kubernetes.image, ""),
            command=list(suite.kubernetes.command),
            env=env,
            timeout_s=suite.timeout,
            nonce=nonce,
            expires_at=state.expires_at,
        )
        outcome = jobs.run_job(
            self.api, job, timeout_s=suite.timeout, should_stop=suite.should_stop, nonce=nonce
        )
        return jobs.suite_outcome(outcome, nonce)

    def probe(self, sandbox: Sandbox, request: ProbeRequest, *, tagged: bool) -> ProbeAnswer:
        """Through the API server's service proxy: tagged to the service's fork when it has one (its
        own calls carry the baggage on), else to the baseline Service, tagged or not."""
        from bot.runtimes.kubernetes import probes

        info = self._info(sandbox.baseline, sandbox.config)
        baseline = info.services.get(request.service)
        if baseline is None:
            raise ConfigError(f"verify.diff names unknown service {request.service!r}")
        headers: dict[str, str] = {}
        sent = request
        if tagged:
            member = f"{sandbox.config.routing.baggage_member}={sandbox.routing_key}"
            existing = [v for k, v in request.headers.items() if k.lower() == "baggage" and v]
            headers["baggage"] = ",".join([*existing, member])
            sent = replace(
                request, headers={k: v for k, v in request.headers.items() if k.lower() != "baggage"}
            )
        fork = self._state(sandbox).forks.get(request.service) if tagged else None
        if fork is not None:
            where = (fork.namespace, fork.service_name, fork.port)
        else:
            where = (baseline.spec.namespace, baseline.service_name, baseline.spec.port)
        return probes.send(
            self.api, namespace=where[0], service_name=where[1], port=where[2], request=sent, headers=headers
        )

    @infrastructure
    def observed_requests(self, sandbox: Sandbox) -> list[ObservedRequest]:
        from bot.runtimes.kubernetes import observed

        settings = kube_settings(sandbox.config)
        state = self._state(sandbox)
        info = self._info(sandbox.baseline, sandbox.config)
        pods: list[tuple[Obj, str, str | None]] = []
        fork_selector = f"{SANDBOX_LABEL}={state.key},{ROLE_LABEL}=fork"
        for namespace in sorted({f.namespace for f in state.forks.values()}):
            for pod in self.kube.list(POD, namespace, label_selector=fork_selector).items:
                service = ((pod.get("metadata") or {}).get("labels") or {}).get(SERVICE_LABEL)
                if service:
                    pods.append((pod, str(service), state.key))
        for name, service in sorted(info.services.items()):
            for pod in pods_of(self.kube, service.spec.namespace, service.deployment):
                if SANDBOX_LABEL not in ((pod.get("metadata") or {}).get("labels") or {}):
                    pods.append((pod, name, None))
        return observed.read(
            self.api,
            pods=pods,
            container=settings.access_log_container,
            since=state.created,
            routing=sandbox.config.routing,
            key=state.key,
        )

    # -- teardown and gc -----------------------------------------------------------------------------

    @infrastructure
    def teardown(self, sandbox: Sandbox) -> None:
        """Routes first (tagged requests go back to the baseline), then everything labelled with the
        sandbox's key, kind by kind and namespace by namespace (Background: pods go on their own)."""
        settings = kube_settings(sandbox.config)
        errors: list[str] = []
        try:
            self.unroute(sandbox)
        except LoopgateError as exc:
            errors.append(str(exc))
        namespaces = {kube_spec(sandbox.config, s).namespace for s in sandbox.config.services}
        namespaces.add(objects.jobs_namespace(sandbox.config))
        if settings.sandbox_namespace:
            namespaces.add(settings.sandbox_namespace)
        kinds = [DEPLOYMENT, SERVICE, JOB]
        if settings.routing == "gateway-api":
            kinds += [HTTP_ROUTE, REFERENCE_GRANT]
        selector = f"{SANDBOX_LABEL}={sandbox.routing_key}"
        for namespace in sorted(namespaces):
            for kind in kinds:
                try:
                    self.kube.delete_collection(kind, namespace, selector)
                except LoopgateError as exc:
                    errors.append(str(exc))
        errors += self._drop_copies(copies.recorded_copies(self.kube, sandbox.routing_key))
        with self._lock:
            self._sandboxes.pop(sandbox.routing_key, None)
        if errors:
            raise InfrastructureError(f"teardown of sandbox {sandbox.routing_key}: {errors[0]}")

    def _drop_copies(self, recorded: list[copies.Copy]) -> list[str]:
        """Drop each copy; what fails stays recorded for the next gc and is returned as an error."""
        errors = []
        for copy in recorded:
            try:
                copies.drop_copy(self.kube, self.api, copy)
            except LoopgateError as exc:
                errors.append(str(exc))
        return errors

    @infrastructure
    def gc(self) -> list[str]:
        removed = sweeper.sweep(self.kube)
        now = datetime.now(UTC)
        live = sweeper.live_sandboxes(self.kube.list(DEPLOYMENT, None, label_selector=MANAGED).items, now)
        for copy in copies.recorded_copies(self.kube):
            if copy.key not in live and not self._drop_copies([copy]):
                removed.append(f"dropped database {copy.database} (sandbox {copy.key} is gone)")
        return removed

    def sweep_every(self, interval_s: float, stop: threading.Event) -> None:
        """`gc()` every `interval_s` until `stop` is set (run it in a thread of `loopgate serve`)."""
        sweeper.sweep_every(self.gc, interval_s, stop)


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
        selector = spec.get("selector") or {}
        if not selector or spec.get("type") == "ExternalName":
            continue
        if all(labels.get(k) == v for k, v in selector.items()) and any(
            p.get("port") == port for p in spec.get("ports") or []
        ):
            matching.append(service)
    matching.sort(key=lambda s: (s["metadata"]["name"] != name, str(s["metadata"]["name"])))
    return matching[0] if matching else None


def _head_of(merge: Source, base_sha: str) -> str:
    """The head commit of the merge `merge.sha` of head into base (its second parent); the merge itself
    when it is a fast-forward (head) or no merge commit at all."""
    try:
        done = Git(merge.repo).run("rev-list", "--parents", "-n", "1", merge.sha, check=False)
    except LoopgateError:
        return merge.sha
    parts = done.stdout.split()
    if done.returncode == 0 and len(parts) == 3 and parts[1] == base_sha:
        return parts[2]
    return merge.sha


def _has_sqlite(config: Config, service: str) -> bool:
    state = config.services[service].state
    return state is not None and state.sqlite is not None


def _sqlite_note(service: str) -> str:
    return (
        f"{service} declares SQLite state: in a cluster its fork starts from its image's own file, not a"
        " copy of the baseline's (a pod's files are its own, and a fork never mounts the baseline's volumes)"
    )


def _git_context(repo: Path, sha: str) -> str:
    """Kaniko's git context for `sha` of the repository's `origin` (`git://host/path.git#<ref>#<sha>`)."""
    try:
        done = Git(repo).run("remote", "get-url", "origin", check=False)
        url = done.stdout.strip() if done.returncode == 0 else ""
    except LoopgateError:
        url = ""
    if not url:
        raise ConfigError(
            "an in-cluster build (services.*.kubernetes.build) needs the repository's `origin` remote, which"
            " Kaniko fetches the commit from"
        )
    for prefix in ("https://", "http://", "ssh://", "git://"):
        url = url.removeprefix(prefix)
    if url.startswith("git@"):
        url = url.removeprefix("git@").replace(":", "/", 1)
    host, _, path = url.partition("/")
    # Never a credential in a pod spec: `https://user:token@host/…` keeps only the host.
    return f"git://{host.rpartition('@')[2]}/{path}##{sha}"
