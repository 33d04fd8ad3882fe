"""Suites against a sandbox (or its baseline), and the requests they were seen to make."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import httpx

from bot.runtimes.local import grpcprobe, loopback, pause
from bot.runtimes.local.accesslog import read_access_log
from bot.runtimes.local.allowlist import child_env, env_var_name, suite_section
from bot.runtimes.local.envoy import ACCESS_LOG_WAIT_S, DataPlane
from bot.runtimes.local.helpers import _wait, infrastructure
from bot.runtimes.local.processes import ProcessRef, stop_group, tail
from bot.runtimes.local.sandboxes import Sandboxes
from bot.runtimes.protocol import (
    JUNIT_MAX_BYTES,
    GrpcAnswer,
    ObservedRequest,
    ProbeAnswer,
    ProbeError,
    ProbeRequest,
    Sandbox,
    SuiteOutcome,
    SuiteRequest,
)

PROBE_TIMEOUT_S = 30.0

ACCESS_LOG_SETTLE_S = ACCESS_LOG_WAIT_S
"""The longest `observed_requests` waits for Envoy's access log to hold every answered request (it
returns as soon as it does, within milliseconds: `DataPlane.await_access_log`)."""


class Suites(Sandboxes):
    """Running a suite addressed to a sandbox, and reading what Envoy logged of it."""

    def suite_env(
        self, sandbox: Sandbox, target: Literal["sandbox", "baseline"] = "sandbox"
    ) -> dict[str, str]:
        """What a suite (or an agent by hand) needs to address the sandbox; untagged for the baseline,
        so the same entry URLs reach the baseline's services."""
        env = {env_var_name(name): url for name, url in sandbox.baseline.entry_urls.items()}
        if target == "sandbox":
            member = sandbox.config.routing.baggage_member
            env["LOOPGATE_ROUTING_KEY"] = sandbox.routing_key
            env["LOOPGATE_BAGGAGE"] = f"{member}={sandbox.routing_key}"
        return env

    @infrastructure
    def run_suite(self, sandbox: Sandbox, suite: SuiteRequest) -> SuiteOutcome:
        if suite.command is None:
            raise ValueError(f"suite {suite.name!r} has no `run:` command for the local runtime")
        sandbox_dir = self._sandbox_dir(sandbox)
        if suite.source == "base":
            # Never the baseline's worktree: a fork could have rewritten the suite there.
            cwd = self.registry.env_dir(sandbox.baseline.env_id) / "pristine"
        else:
            cwd = self.source_dir(sandbox)
        slug = f"{suite.name}-{suite.source}" + ("-baseline" if suite.target == "baseline" else "")
        junit = sandbox_dir / "junit" / f"{slug}.xml"
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit.unlink(missing_ok=True)
        log = sandbox_dir / "logs" / f"suite-{slug}.log"
        extra = {
            **self.suite_env(sandbox, suite.target),
            "LOOPGATE_JUNIT_XML": str(junit),
            **suite.extra_env,
        }
        home = sandbox_dir / "home" / f"suite-{slug}"
        env = child_env(home, extra, suite_section(sandbox.config, suite.name))
        self.confinement.give(home, junit.parent)
        started = time.monotonic()
        process = self._spawn(
            suite.command,
            journal=self._journal(sandbox),
            cwd=cwd,
            env=env,
            log=log,
            writable=[home, junit.parent],
            readonly=[cwd],
        )
        ref = ProcessRef.of(process.pid)
        timed_out = False
        with self._job(sandbox, ref):
            try:
                pause.point("suite-running", suite.should_stop)
                timed_out = not _wait(process, suite.timeout, suite.should_stop)
            finally:
                stop_group(ref)  # also ends what the suite left running in its group
                process.wait()
        return SuiteOutcome(
            exit_code=None if timed_out else process.returncode,
            timed_out=timed_out,
            duration_ms=int((time.monotonic() - started) * 1000),
            junit_xml=_report(junit),
            log_tail=tail(log) + ("" if _fits(junit) else f"\n[loopgate] {junit.name} over 64 MiB: ignored"),
        )

    def probe(self, sandbox: Sandbox, request: ProbeRequest, *, tagged: bool) -> ProbeAnswer:
        """Straight to the service's Envoy listener: the same hop every caller of the service takes."""
        member = sandbox.config.routing.baggage_member
        headers = {**request.headers, **({"baggage": f"{member}={sandbox.routing_key}"} if tagged else {})}
        url = sandbox.baseline.entry_urls[request.service] + request.path
        try:
            answer = loopback.client().request(
                request.method, url, headers=headers, content=request.body, timeout=PROBE_TIMEOUT_S
            )
        except httpx.HTTPError as exc:
            raise ProbeError(f"{type(exc).__name__}: {exc}") from None
        lowered = {name.lower(): value for name, value in answer.headers.items()}
        return ProbeAnswer(answer.status_code, lowered, answer.content)

    def probe_grpc(self, sandbox: Sandbox, request: ProbeRequest, *, tagged: bool) -> GrpcAnswer:
        """As `probe`, as a gRPC call (`grpcprobe`): the same listener, the same baggage."""
        member = sandbox.config.routing.baggage_member
        headers = {**request.headers, **({"baggage": f"{member}={sandbox.routing_key}"} if tagged else {})}
        target = sandbox.baseline.entry_urls[request.service].removeprefix("http://")
        return grpcprobe.call(target, request.path, request.body or b"", headers, PROBE_TIMEOUT_S)

    @infrastructure
    def observed_requests(self, sandbox: Sandbox) -> list[ObservedRequest]:
        record = self._record(sandbox)
        plane = DataPlane(self.registry.env_dir(sandbox.baseline.env_id) / "envoy")
        # Every request the suite made was answered before it exited: Envoy's counters say when its
        # access log holds them all (a log read too early would miss the last ones).
        plane.await_access_log(ACCESS_LOG_SETTLE_S)
        raw, _ = read_access_log(
            plane.access_log,
            offset=record.log_offset,
            baggage_member=sandbox.config.routing.baggage_member,
            header=sandbox.config.routing.header,
        )
        key = sandbox.routing_key
        # Untagged requests too (never other sandboxes'): in the sandbox's traces they show where the
        # tag was lost.
        return [r for r in raw if r.routing_key in (key, None) or r.target == key]


def _fits(junit: Path) -> bool:
    return not junit.is_file() or junit.stat().st_size <= JUNIT_MAX_BYTES


def _report(junit: Path) -> bytes | None:
    """The suite's JUnit report, when it wrote one of a sane size."""
    if not junit.is_file() or not _fits(junit):
        return None
    return junit.read_bytes()
