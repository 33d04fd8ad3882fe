"""A sandbox's own state and the objects it adds: its routing key and expiry, the images it runs (named
by the team's CI or built by Kaniko), its forks and their copies of the baseline's data; a sandbox
another process made is adopted from the labels its objects carry."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from bot.config import Config, ConfigError, InfrastructureError, LoopgateError, Service
from bot.runtimes.git import Git
from bot.runtimes.kubernetes import gc as sweeper
from bot.runtimes.kubernetes import objects
from bot.runtimes.kubernetes import state as copies
from bot.runtimes.kubernetes.baselines import Baselines
from bot.runtimes.kubernetes.client import (
    DEPLOYMENT,
    EXPIRES_AT,
    MANAGED,
    ROLE_LABEL,
    SANDBOX_LABEL,
    SERVICE,
    SERVICE_LABEL,
    Obj,
)
from bot.runtimes.kubernetes.core import infrastructure, kube_settings, kube_spec, new_routing_key
from bot.runtimes.kubernetes.forks import Fork, start_fork
from bot.runtimes.protocol import Baseline, BuildOutcome, ForkOutcome, Sandbox, Source


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
    control_of: str | None = None
    """The sandbox this one is a control of: its forks run the base commit, its copies come from its
    owner's snapshot, and every object it makes says whose control it is."""
    controls: list[str] = field(default_factory=list)
    """The routing keys of this sandbox's controls, in the order made (recorded in the cluster first)."""

    @property
    def code_sha(self) -> str:
        """The commit its forks run: the pushed head (what an `image:` template's {sha} names and Kaniko
        builds), or the base for a control."""
        return self.base_sha if self.control_of else self.head_sha


class Sandboxes(Baselines):
    """Making sandboxes, adopting them, and building and forking their services."""

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
        """Routing keys with an unexpired fork Deployment anywhere in the cluster: one list call. Controls
        are not counted: they come and go with their sandbox, which is what `max_sandboxes` limits."""
        selector = f"{MANAGED},{ROLE_LABEL}=fork,!{objects.CONTROL_OF_LABEL}"
        forks = self.kube.list(DEPLOYMENT, None, label_selector=selector).items
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
        owner: str | None = None
        for deployment in deployments:
            metadata = deployment["metadata"]
            owner = (metadata.get("labels") or {}).get(objects.CONTROL_OF_LABEL) or owner
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
        return SandboxState(key, created, expires, base, base, base, forks=forks, control_of=owner)

    def _image(self, state: SandboxState, template: str, service: str) -> str:
        """A suite's image: a control runs its owner's suites, so the same test code reaches every side."""
        return objects.image_for(
            template, sha=state.head_sha, merge_sha=state.merge_sha, base_sha=state.base_sha, service=service
        )

    def _fork_image(self, state: SandboxState, template: str, service: str) -> str:
        """A fork's image: the change's, or the base commit's everywhere for a control."""
        if state.control_of is None:
            return self._image(state, template, service)
        base = state.base_sha
        return objects.image_for(template, sha=base, merge_sha=base, base_sha=base, service=service)

    @infrastructure
    def build(self, sandbox: Sandbox, service: str, spec: Service) -> BuildOutcome:
        """An `image` template names what the team's CI built (no build here); `build:` runs Kaniko."""
        from bot.runtimes.kubernetes import builds

        state = self._state(sandbox)
        kspec = kube_spec(sandbox.config, service)
        if kspec.image is not None:
            image = self._fork_image(state, kspec.image, service)
            with self._lock:
                state.images[service] = image
            return BuildOutcome(service, True, image)
        assert kspec.build is not None
        # The pushed head, not the merge: Kaniko fetches from the remote, where no merge commit exists
        # (the same commit an `image:` template's {sha} names, built by the team's CI); a control's base.
        destination = f"{kspec.build.registry}:{state.code_sha}"
        job = objects.build_job(
            name=objects.build_job_name(state.key, service),
            namespace=objects.jobs_namespace(sandbox.config),
            key=state.key,
            service=service,
            build=kspec.build,
            git_context=_git_context(sandbox.baseline.base.repo, state.code_sha),
            destination=destination,
            expires_at=state.expires_at,
        )
        objects.as_control(job, state.control_of)
        timeout_s = kspec.build.timeout

        def run() -> BuildOutcome:
            return builds.run_build(
                self.api, job, service=service, destination=destination, timeout_s=timeout_s
            )

        outcome = run() if state.control_of is None else self._base_build(state.control_of, service, run)
        if outcome.ok:
            with self._lock:
                state.images[service] = destination
        return outcome

    def _base_build(self, owner: str, service: str, run: Callable[[], BuildOutcome]) -> BuildOutcome:
        """The base commit's image, built once for all of `owner`'s controls: the first control to ask
        runs the build, the others wait for its outcome (the same image, pushed to the same tag)."""
        with self._lock:
            shared = self._base_builds.get((owner, service))
            first = shared is None
            if shared is None:
                shared = self._base_builds[(owner, service)] = Future()
        if not first:
            return shared.result()
        try:
            outcome = run()
        except BaseException as exc:
            shared.set_exception(exc)
            raise
        shared.set_result(outcome)
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
            image = self._fork_image(state, kspec.image, service)
        namespace = objects.fork_namespace(kspec, settings.sandbox_namespace)
        info = self._info(sandbox.baseline, sandbox.config)
        baseline = self.kube.get(DEPLOYMENT, kspec.namespace, kspec.deployment)
        adjust = self._copy_state(sandbox, service, spec, namespace, state)
        fork, outcome = start_fork(
            self.kube,
            service=service,
            spec=kspec,
            key=state.key,
            owner=state.control_of,
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
            protocol=spec.protocol,
        )
        with self._lock:
            state.forks[service] = fork
        return outcome

    def _copy_state(
        self, sandbox: Sandbox, service: str, spec: Service, namespace: str, state: SandboxState
    ) -> Callable[[Obj], Obj] | None:
        """The fork's own copy of the service's Postgres state, made now (DESIGN "Data") from the one
        snapshot its sandbox and controls share; returns how the fork's Deployment points at it. SQLite
        state lives in the pod's own files: a fork starts from its image's, never the baseline's volume
        (the route note says so)."""
        if spec.state is None or spec.state.postgres is None:
            return None
        server = kube_settings(sandbox.config).postgres
        if server is None:  # the loader refuses such a config; a hand-made Config gets the same words
            raise ConfigError(f"services.{service}.state: a postgres state needs runtime.kubernetes.postgres")
        kspec = kube_spec(sandbox.config, service)
        database = spec.state.postgres.database
        copy = copies.Copy(state.key, service, namespace, database, server, state.control_of)
        self._copy_from_snapshot(state, copy)
        container = kspec.container

        def point(deployment: Obj) -> Obj:
            containers = deployment["spec"]["template"]["spec"]["containers"]
            name = container or str(containers[0].get("name"))
            return copies.point_at_copy(deployment, copy, name, kspec.state_env)

        return point

    def _copy_from_snapshot(self, state: SandboxState, copy: copies.Copy) -> None:
        """Make `copy`, with the copies of every other side of its group (the sandbox and its controls)
        from one dump: whichever side's fork gets here first runs the one copy Job, the others wait for
        it. A side this process did not make (adopted) copies on its own."""
        group_key = state.control_of or state.key
        with self._lock:
            owner = self._sandboxes.get(group_key)
            members = [group_key, *owner.controls] if owner is not None else [state.key]
            if state.key not in members or len(members) == 1:
                snapshot, first, members = None, True, [state.key]
            else:
                snapshot = self._snapshots.get((group_key, copy.service))
                first = snapshot is None
                snapshot = self._snapshots.setdefault((group_key, copy.service), copies.Snapshot())
        if not first:
            assert snapshot is not None
            snapshot.wait(copy)
            return
        group = [replace(copy, key=k, owner=None if k == group_key else group_key) for k in members]
        try:
            copies.make_copies(self.kube, self.api, group, owner.expires_at if owner else state.expires_at)
        except Exception as exc:
            if snapshot is not None:
                snapshot.error = str(exc)
            raise
        finally:
            if snapshot is not None:
                snapshot.done.set()

    def keep(self, sandbox: Sandbox) -> None:
        """Nothing to do: every object carries its expires-at, after which gc removes it."""


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
