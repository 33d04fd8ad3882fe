"""The Kubernetes runtime: the cluster's own Deployments are the baseline; a sandbox forks the changed
ones beside them, routes its tagged requests to the forks through the mesh, runs suites and builds as
Jobs, and is deleted by label. Everything loopgate makes is labelled and stamped with its expiry before it
exists, so `gc` (cluster-wide, by label) removes what any crash left behind.

Agent code (builds, forks, head suites) runs in its own pods: confined by the cluster, never in
loopgate's process or with its credentials.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial

from bot.config import Config, ConfigError, InfrastructureError, LoopgateError
from bot.config.kubernetes import KubernetesSettings
from bot.runtimes.kubernetes import gc as sweeper
from bot.runtimes.kubernetes import objects, routes
from bot.runtimes.kubernetes import state as copies
from bot.runtimes.kubernetes.baselines import BaselineInfo, BaselineService
from bot.runtimes.kubernetes.client import (
    CONFIG_MAP,
    DEPLOYMENT,
    JOB,
    MANAGED,
    POD,
    REFERENCE_GRANT,
    ROLE_LABEL,
    SANDBOX_LABEL,
    SERVICE,
    SERVICE_LABEL,
    Obj,
)
from bot.runtimes.kubernetes.controls import ControlSandboxes
from bot.runtimes.kubernetes.core import infrastructure, kube_settings, kube_spec, new_routing_key
from bot.runtimes.kubernetes.forks import pods_of
from bot.runtimes.kubernetes.kinds import GATEWAY_ROUTES
from bot.runtimes.kubernetes.sandboxes import SandboxState
from bot.runtimes.kubernetes.sandboxes import _git_context as _git_context  # tests import it from here
from bot.runtimes.protocol import (
    ObservedRequest,
    ProbeAnswer,
    ProbeRequest,
    Sandbox,
    SuiteOutcome,
    SuiteRequest,
)

DROPS_AT_ONCE = 4
"""Drop Jobs run side by side at teardown: a sandbox and its two controls' copies of one database at once."""

__all__ = [
    "BaselineInfo",
    "BaselineService",
    "KubernetesRuntime",
    "SandboxState",
    "infrastructure",
    "kube_settings",
    "kube_spec",
    "new_routing_key",
]


class KubernetesRuntime(ControlSandboxes):
    """Every part of the Kubernetes runtime, and a sandbox's routes, suites, probes, observation and
    teardown (its controls' with it)."""

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
            baseline = info.services[service]
            add = (
                partial(routes.add_istio_route, baseline_host=baseline.host)
                if settings.routing == "istio"
                else partial(
                    routes.add_http_route,
                    parent_service=baseline.service_name,
                    expires_at=state.expires_at,
                    owner=state.control_of,
                    protocol=sandbox.config.services[service].protocol,
                )
            )
            add(
                self.kube,
                service=service,
                spec=kube_spec(sandbox.config, service),
                routing=sandbox.config.routing,
                key=state.key,
                fork=fork,
            )

    @infrastructure
    def unroute(self, sandbox: Sandbox) -> None:
        self._unroute(sandbox.config, [sandbox.routing_key])

    def _unroute(self, config: Config, keys: list[str]) -> None:
        """The routes of every key in `keys` (a sandbox and its controls: one write per VirtualService)."""
        settings = kube_settings(config)
        if settings.routing == "none":
            return
        namespaces = sorted({kube_spec(config, s).namespace for s in config.services})
        for namespace in namespaces:
            if settings.routing == "istio":
                routes.remove_istio_routes(self.kube, namespace, set(keys))
            else:
                for kind in GATEWAY_ROUTES:  # an HTTPRoute, or a GRPCRoute for a gRPC service
                    self.kube.delete_collection(kind, namespace, _of_keys(keys))

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
        objects.as_control(job, state.control_of)
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
        """The sandbox with its controls, then the controls' records (last: until then gc knows the
        controls belong to a sandbox being torn down). Each step runs even when an earlier one failed;
        the first error is raised at the end."""
        errors: list[str] = []
        try:
            controls = self._controls_of(sandbox)
        except LoopgateError as exc:
            errors.append(str(exc))
            with self._lock:
                state = self._sandboxes.get(sandbox.routing_key)
                controls = list(state.controls) if state is not None else []
        errors += self._remove(sandbox.config, [sandbox.routing_key, *controls])
        namespace = objects.jobs_namespace(sandbox.config)
        for key in controls:  # by name: the RBAC grants ConfigMaps no deletecollection
            try:
                self.kube.delete(CONFIG_MAP, namespace, objects.control_record_name(sandbox.routing_key, key))
            except LoopgateError as exc:
                errors.append(str(exc))
        self._forget(sandbox.routing_key, controls)
        if errors:
            raise InfrastructureError(f"teardown of sandbox {sandbox.routing_key}: {errors[0]}")

    def _remove(self, config: Config, keys: list[str]) -> list[str]:
        """Routes first (tagged requests go back to the baseline), then everything labelled with one of
        the keys, kind by kind and namespace by namespace (one call each, Background: pods go on their
        own), then their data copies; returns what failed."""
        settings = kube_settings(config)
        errors: list[str] = []
        try:
            self._unroute(config, keys)
        except LoopgateError as exc:
            errors.append(str(exc))
        namespaces = {kube_spec(config, s).namespace for s in config.services}
        namespaces.add(objects.jobs_namespace(config))
        if settings.sandbox_namespace:
            namespaces.add(settings.sandbox_namespace)
        kinds = [DEPLOYMENT, SERVICE, JOB]
        if settings.routing == "gateway-api":
            kinds += [*GATEWAY_ROUTES, REFERENCE_GRANT]
        for namespace in sorted(namespaces):
            for kind in kinds:
                try:
                    self.kube.delete_collection(kind, namespace, _of_keys(keys))
                except LoopgateError as exc:
                    errors.append(str(exc))
        try:
            recorded = copies.recorded_copies(self.kube, keys)
        except LoopgateError as exc:
            return [*errors, str(exc)]
        return errors + self._drop_copies(recorded)

    def _drop_copies(self, recorded: list[copies.Copy]) -> list[str]:
        """Drop each copy, side by side (each its own Job); what fails stays recorded for the next gc
        and is returned as an error."""

        def drop(copy: copies.Copy) -> str | None:
            try:
                copies.drop_copy(self.kube, self.api, copy)
            except LoopgateError as exc:
                return str(exc)
            return None

        if len(recorded) <= 1:
            failed = [drop(copy) for copy in recorded]
        else:
            with ThreadPoolExecutor(max_workers=min(len(recorded), DROPS_AT_ONCE)) as pool:
                failed = list(pool.map(drop, recorded))
        return [error for error in failed if error is not None]

    @infrastructure
    def gc(self) -> list[str]:
        """The sweep, expired control records, then every data copy whose sandbox has no fork: unless
        it may still be in the making (its fork comes after it), where its sandbox is a control whose
        owner is gone (the sweep removed its forks)."""
        removed = sweeper.sweep(self.kube)
        now = datetime.now(UTC)
        removed += sweeper.expired_control_records(self.kube, now)
        live = sweeper.live_sandboxes(self.kube.list(DEPLOYMENT, None, label_selector=MANAGED).items, now)
        recorded = copies.recorded_copies(self.kube)
        standing = sweeper.standing_controls(self.kube, now) if any(c.owner for c in recorded) else set()
        for copy in recorded:
            ownerless = copy.owner is not None and (copy.owner, copy.key) not in standing
            if copy.key in live or (copy.being_made(now) and not ownerless):
                continue
            if not self._drop_copies([copy]):
                removed.append(f"dropped database {copy.database} (sandbox {copy.key} is gone)")
        return removed

    def sweep_every(self, interval_s: float, stop: threading.Event) -> None:
        """`gc()` every `interval_s` until `stop` is set (run it in a thread of `loopgate serve`)."""
        sweeper.sweep_every(self.gc, interval_s, stop)


def _of_keys(keys: list[str]) -> str:
    """The label selector of everything of these sandboxes."""
    if len(keys) == 1:
        return f"{SANDBOX_LABEL}={keys[0]}"
    return f"{SANDBOX_LABEL} in ({','.join(sorted(set(keys)))})"


def _has_sqlite(config: Config, service: str) -> bool:
    state = config.services[service].state
    return state is not None and state.sqlite is not None


def _sqlite_note(service: str) -> str:
    return (
        f"{service} declares SQLite state: in a cluster its fork starts from its image's own file, not a"
        " copy of the baseline's (a pod's files are its own, and a fork never mounts the baseline's volumes)"
    )
