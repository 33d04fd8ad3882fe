"""The Runtime protocol: the one interface the pipeline drives, whatever runs the services.

A runtime runs things and reports raw outcomes; `bot.verify` judges them. The local runtime implements
it with processes and one Envoy; the Kubernetes runtime will implement it with Deployments and mesh
routes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from bot.config import Config, InfrastructureError, Service
from bot.config.kubernetes import KubernetesSuite

JUNIT_MAX_BYTES = 64 * 1024 * 1024
"""A suite's JUnit report above this is a runaway log, not a test result: not carried back."""


class BaselineError(InfrastructureError):
    """The baseline failed, not the change; `log_tails` holds the end of the log of each process of it
    that exited (by service name), so the Evidence can say why."""

    def __init__(self, message: str, log_tails: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.log_tails = dict(log_tails or {})


@dataclass(frozen=True)
class Source:
    """A commit of a repository, as the pipeline resolved it."""

    repo: Path
    sha: str


@dataclass(frozen=True)
class Baseline:
    env_id: str
    base: Source
    entry_urls: Mapping[str, str]
    """Service name -> the data plane's address for it, as a suite reaches it (locally a loopback URL,
    in a cluster the Service's DNS name): for people and suites, never dialled by the pipeline."""
    reused: bool
    """True when an already running baseline (e.g. from `loopgate env up`) was attached."""


@dataclass(frozen=True)
class Sandbox:
    routing_key: str
    baseline: Baseline
    config: Config


@dataclass(frozen=True)
class BuildOutcome:
    service: str
    ok: bool
    source: str
    """What was built, e.g. `<merge sha>:<dir>` locally or an image reference."""
    duration_ms: int = 0
    log_tail: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class ForkOutcome:
    service: str
    status: Literal["ready", "start_failed"]
    url: str | None = None
    ready_ms: int | None = None
    log_tail: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class SuiteRequest:
    name: str
    command: str | None
    """The local runtime's `sh -c` command (`verify.suites[].run`)."""
    timeout: float
    source: Literal["base", "head"]
    extra_env: Mapping[str, str] = field(default_factory=dict)
    target: Literal["sandbox", "baseline"] = "sandbox"
    """Whose services the suite's requests reach: the sandbox's (tagged) or the baseline's (untagged,
    to tell a failure the change caused from one the base commit already has)."""
    should_stop: Callable[[], bool] | None = None
    """Polled while the suite runs; True stops it (the run was superseded or cancelled)."""
    kubernetes: KubernetesSuite | None = None
    """The suite as a Job (`verify.suites[].kubernetes`), for the Kubernetes runtime."""


@dataclass(frozen=True)
class SuiteOutcome:
    exit_code: int | None
    timed_out: bool
    duration_ms: int
    junit_xml: bytes | None
    """The report's bytes (at most JUNIT_MAX_BYTES), however the runtime carried them back."""
    log_tail: str


@dataclass(frozen=True)
class ProbeRequest:
    """One request of the response diff, addressed to a service, not to a place: the runtime knows how
    to reach the service's baseline and, tagged, its sandbox (locally through Envoy, in a cluster from
    inside it)."""

    service: str
    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None


@dataclass(frozen=True)
class ProbeAnswer:
    status: int
    headers: Mapping[str, str]
    """Lower-cased names."""
    body: bytes


class ProbeError(Exception):
    """The probe could not be sent or got no answer (connection refused, timeout): a one-line cause."""


@dataclass(frozen=True)
class ObservedRequest:
    """One request as the data plane saw it."""

    service: str
    routing_key: str | None
    """The sandbox the request was tagged for, None when untagged."""
    target: str | None
    """The routing key of the fork that served it; None when the baseline did."""
    method: str
    path: str
    status: int
    traceparent: str | None
    started_at: str
    duration_ms: int
    grpc_status: int | None = None
    """A gRPC call's status code (0 OK, 5 NOT_FOUND, ...; `path` is its `/package.Service/Method`);
    None for a response that is not gRPC, or from a runtime that cannot see it."""


class Runtime(Protocol):
    kind: str
    """`runtime.kind` of the configs this runtime runs: `local` or `kubernetes`."""

    @property
    def confined(self) -> bool:
        """Whether code from the agent's branch (builds, forks, head suites) runs isolated from loopgate,
        its secrets and other sandboxes; False is reported first in every report."""

    def up_baseline(self, base: Source, config: Config) -> Baseline: ...

    def baseline_health(self, baseline: Baseline) -> str | None:
        """None when the baseline and data plane are healthy, else what is wrong with them."""

    def baseline_logs(self, baseline: Baseline) -> dict[str, str]:
        """The end of the log of each baseline service that is no longer running, by name."""

    def release_baseline(self, baseline: Baseline) -> None:
        """Stop the baseline if this process started it and no live sandbox still uses it."""

    def retire_stale_baselines(self, current: Source) -> list[str]:
        """Stop baselines of `current.repo` at other base commits that this process started and no
        live sandbox uses: a long-running App would otherwise keep one per commit the base ever had."""

    def new_sandbox(self, baseline: Baseline, config: Config, head: Source) -> Sandbox: ...

    def build(self, sandbox: Sandbox, service: str, spec: Service) -> BuildOutcome: ...

    def fork(self, sandbox: Sandbox, service: str, spec: Service) -> ForkOutcome: ...

    def keep(self, sandbox: Sandbox) -> None:
        """Let the sandbox and its baseline outlive this process (`--keep`)."""

    def route(self, sandbox: Sandbox) -> str | None:
        """Send the sandbox's tagged requests to its forks; returns a note for the report, if any (e.g.
        that routing is left to the team's mesh)."""

    def unroute(self, sandbox: Sandbox) -> None: ...

    def run_suite(self, sandbox: Sandbox, suite: SuiteRequest) -> SuiteOutcome: ...

    def probe(self, sandbox: Sandbox, request: ProbeRequest, *, tagged: bool) -> ProbeAnswer:
        """Send one diff request to the service, tagged for the sandbox or not; ProbeError when it gets
        no answer."""

    def observed_requests(self, sandbox: Sandbox) -> list[ObservedRequest]:
        """Since the sandbox was made: its own requests and untagged ones, never other sandboxes'."""

    def teardown(self, sandbox: Sandbox) -> None: ...

    def gc(self) -> list[str]: ...


class SandboxUpdates(Protocol):
    """A runtime whose sandboxes can follow their source (`loopgate sandbox update`): the routing key,
    the routes and the data copies stay; only the services whose files changed are started again."""

    def sandbox_source(self, sandbox: Sandbox) -> str:
        """The merge commit the sandbox's forks run now."""

    def forked_services(self, sandbox: Sandbox) -> list[str]:
        """The services the sandbox has forked, by name."""

    def move_sandbox(self, sandbox: Sandbox, merge_sha: str) -> None:
        """Make `merge_sha` the sandbox's source: what later builds and forks run. Running forks are not
        touched."""

    def refork(self, sandbox: Sandbox, service: str, spec: Service) -> ForkOutcome:
        """Start the service from the sandbox's current source beside its running fork (or as its first
        fork, then with a fresh state copy), route the sandbox to it once healthy, then stop the old
        one: tagged requests never fall back to the baseline meanwhile. A state copy is kept. On a
        failed start the old fork keeps serving."""

    def unfork(self, sandbox: Sandbox, service: str) -> None:
        """Route the service back to the baseline for this sandbox and stop its fork."""


@runtime_checkable
class BaselineStarts(Protocol):
    """A runtime whose baseline is claimed first and started next, so that the change's builds run
    while it starts (the pipeline's overlap). `up_baseline` is the two in one. A runtime without (the
    Kubernetes runtime: the cluster's own Deployments are the baseline, nothing starts) is driven in
    order: baseline, then builds."""

    @property
    def overlap(self) -> bool:
        """False when the operator asked for the older order (`LOOPGATE_OVERLAP=off`)."""

    def claim_baseline(self, base: Source, config: Config) -> Baseline:
        """A running baseline of `base` (`reused`), else one recorded as this run's to start, whose
        addresses are known: sandboxes may be made on it and build, not fork, until it is started. A
        claim is always followed by `start_baseline` or `release_baseline`."""

    def start_baseline(self, baseline: Baseline) -> Baseline:
        """Start a claimed baseline; a reused one is returned as it is. On a failure everything made on
        it meanwhile is stopped too, builds included, and BaselineError says why."""


@runtime_checkable
class SeedReads(Protocol):
    """A runtime that recorded what `verify.seed` read from its baseline: reads of data that existed
    before the change, which the diff replays on every side."""

    def seed_reads(self, baseline: Baseline) -> list[ObservedRequest]:
        """The seed's GET/HEAD requests the baseline answered below 400, in order, one per path."""


@runtime_checkable
class Controls(Protocol):
    """A runtime that can start controls beside a sandbox's forks (`verify.diff.control`); the pipeline
    skips them, with a note, on a runtime without."""

    def new_control(self, sandbox: Sandbox, base: Source) -> Sandbox:
        """A control of `sandbox`: its own routing key, whose forks (`build`, `fork`, `route` as for any
        sandbox) run `base` on copies of the data made from the same snapshot as the sandbox's. It is
        recorded with the sandbox before it exists, kept and torn down with it."""


@dataclass(frozen=True)
class GrpcAnswer:
    """A gRPC call's outcome: its status code (0 OK), the status message, and the answer message's
    bytes (empty unless OK)."""

    code: int
    message: str
    body: bytes


@runtime_checkable
class GrpcProbes(Protocol):
    """A runtime that can send the diff's probes to a gRPC service as gRPC calls (HTTP/2 with trailers);
    the pipeline probes gRPC methods only on such a runtime, and says so on the others."""

    def probe_grpc(self, sandbox: Sandbox, request: ProbeRequest, *, tagged: bool) -> GrpcAnswer:
        """One unary call: `request.path` is the method (`/package.Service/Method`), `request.body` the
        serialized request message, `request.headers` its metadata. Reaches the service as `probe` does
        (tagged for the sandbox or not). A status, whatever it is, is an answer; ProbeError only when
        there is none."""
