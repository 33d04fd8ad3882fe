"""Preparing a sandbox: the baseline, the changed services' builds, then their forks.

Why the overlap: a cold baseline (Envoy's and the services' start, the seed) and the change's builds
need nothing of each other, so on a runtime with `BaselineStarts` the builds run while the baseline
starts; the forks wait for both (a fork copies the baseline's data and is routed beside it). On a
runtime without (Kubernetes: the cluster's own Deployments are the baseline, nothing starts), or with
`LOOPGATE_OVERLAP=off`, the baseline comes first, as it always did.

When both sides end badly the baseline's failure wins, an infrastructure `error`: a build failure is
the change's fault (`fail`) only while the baseline is healthy. A build that fails while the baseline
starts lets the start finish rather than abandon it: the verdict needs a healthy baseline, and a
started one is kept for, or reused by, the next run of the same base. A baseline that fails stops what
was made on it, the builds running meanwhile included. Teardown follows only once both sides have
returned, so nothing either started is left running, also on cancellation or Ctrl-C.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass

from bot.config import Service
from bot.evidence import Evidence
from bot.pipeline.plan import Plan
from bot.pipeline.stages import StageRecorder, StageResult
from bot.runtimes.protocol import Baseline, BaselineStarts, Controls, Runtime, Sandbox, Source


@dataclass
class Held:
    """What a run holds, as soon as it holds it: teardown's to release, whatever way the run ends."""

    baseline: Baseline | None = None
    sandbox: Sandbox | None = None


class Preparation:
    """The pipeline's stages from the baseline to the forks (a part of `Pipeline`)."""

    runtime: Runtime
    controls: list[Sandbox]
    _checkpoint: Callable[[], None]
    _stage: Callable[[StageRecorder, str], AbstractContextManager[StageResult]]

    def _prepare(
        self,
        stages: StageRecorder,
        evidence: Evidence,
        plan: Plan,
        head: Source,
        held: Held,
        *,
        with_controls: bool,
    ) -> None:
        """Baseline and builds (at once where the runtime can), then the forks unless a build failed."""
        base = Source(head.repo, plan.base_sha)
        runtime = self.runtime
        if isinstance(runtime, BaselineStarts) and runtime.overlap and plan.affected:
            self._overlapped(runtime, stages, evidence, plan, head, held, with_controls=with_controls)
        else:
            with self._stage(stages, "baseline") as result:
                held.baseline = runtime.up_baseline(base, plan.config)
                result.detail = _started(held.baseline)
            self._new_sandbox(evidence, plan, head, held, with_controls=with_controls)
            assert held.sandbox is not None
            self._build(stages, evidence, plan, held.sandbox)
        if any(s.status == "build_failed" for s in evidence.forks):
            stages.skipped("fork", "a build failed")
        elif held.sandbox is not None and plan.affected:
            self._fork(stages, evidence, plan, held.sandbox)

    def _overlapped(
        self,
        runtime: BaselineStarts,
        stages: StageRecorder,
        evidence: Evidence,
        plan: Plan,
        head: Source,
        held: Held,
        *,
        with_controls: bool,
    ) -> None:
        """The baseline stage on its own thread: claimed (fast), then started; the sandbox is made on
        the claimed baseline and builds on this thread meanwhile."""
        self._checkpoint()
        claimed: Future[Baseline] = Future()
        base = Source(head.repo, plan.base_sha)

        def baseline_side() -> Baseline:
            with stages.stage("baseline") as result:
                try:
                    baseline = runtime.claim_baseline(base, plan.config)
                except BaseException as exc:
                    claimed.set_exception(exc)
                    raise
                claimed.set_result(baseline)
                started = runtime.start_baseline(baseline)
                result.detail = _started(started)
                return started

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="loopgate-baseline") as pool:
            starting = pool.submit(baseline_side)
            held.baseline = claimed.result()  # the claim's own error, if it failed
            building: Exception | None = None
            try:
                self._new_sandbox(evidence, plan, head, held, with_controls=with_controls)
                assert held.sandbox is not None
                self._build(stages, evidence, plan, held.sandbox)
            except Exception as exc:  # the baseline's outcome comes first: it decides whose fault it is
                building = exc
            held.baseline = starting.result()
        if building is not None:
            raise building

    def _new_sandbox(
        self, evidence: Evidence, plan: Plan, head: Source, held: Held, *, with_controls: bool
    ) -> None:
        assert held.baseline is not None
        held.sandbox = self.runtime.new_sandbox(held.baseline, plan.config, head)
        evidence.routing_key = held.sandbox.routing_key
        if with_controls:
            self._new_controls(evidence, plan, held.sandbox, Source(head.repo, plan.base_sha))

    def _specs(self, plan: Plan) -> dict[str, Service]:
        return {name: plan.config.services[name] for name in plan.affected}

    def _build(self, stages: StageRecorder, evidence: Evidence, plan: Plan, sandbox: Sandbox) -> None:
        names = list(plan.affected)
        if not names:
            stages.skipped("build", "no service is affected")
            stages.skipped("fork", "no service is affected")
            return
        specs = self._specs(plan)
        # Controls build and start beside the candidate's forks, in the same pool: they add no wait.
        jobs = [(box, name) for box in (sandbox, *self.controls) for name in names]
        with self._stage(stages, "build") as result, ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            built_all = list(pool.map(lambda job: self.runtime.build(job[0], job[1], specs[job[1]]), jobs))
            builds = dict(zip(names, built_all[: len(names)], strict=True))
            self._drop_controls(
                evidence, [b.detail or "build failed" for b in built_all[len(names) :] if not b.ok]
            )
            for name, built in builds.items():
                service = evidence.service(name)
                assert service is not None
                service.image_or_source, service.build_ms = built.source, built.duration_ms
                if not built.ok:
                    service.status, service.log_tail = "build_failed", built.log_tail
                    service.reason = f"{service.reason}; build failed: {built.detail}"
                    result.outcome = "failed"

    def _fork(self, stages: StageRecorder, evidence: Evidence, plan: Plan, sandbox: Sandbox) -> None:
        names, specs = list(plan.affected), self._specs(plan)
        jobs = [(box, name) for box in (sandbox, *self.controls) for name in names]
        with self._stage(stages, "fork") as result, ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            forked_all = list(pool.map(lambda job: self.runtime.fork(job[0], job[1], specs[job[1]]), jobs))
            failed = [f"{f.service} {f.detail}" for f in forked_all[len(names) :] if f.status != "ready"]
            self._drop_controls(evidence, failed)
            if self.controls:
                result.detail = f"with {len(self.controls)} controls per service"
            for forked in forked_all[: len(names)]:
                service = evidence.service(forked.service)
                assert service is not None
                service.status, service.ready_ms, service.url = forked.status, forked.ready_ms, forked.url
                if forked.status != "ready":
                    service.log_tail = forked.log_tail
                    service.reason = f"{service.reason}; fork {forked.detail}"
                    result.outcome = "failed"

    def _new_controls(self, evidence: Evidence, plan: Plan, sandbox: Sandbox, base: Source) -> None:
        """A primary and a secondary control beside the candidate (`verify.diff.control`)."""
        if not plan.config.verify.diff.control or not plan.affected:
            return
        if not isinstance(self.runtime, Controls):
            evidence.notes.append(
                f"the {self.runtime.kind} runtime starts no controls: forked services are compared"
                " baseline-vs-sandbox, without values"
            )
            return
        runtime = self.runtime
        self.controls = [runtime.new_control(sandbox, base) for _ in ("primary", "secondary")]
        evidence.control_keys = [c.routing_key for c in self.controls]

    def _drop_controls(self, evidence: Evidence, failures: list[str]) -> None:
        """A control that did not build or start leaves the comparison to the baseline; its sandbox is
        torn down with the candidate."""
        if failures and self.controls:
            self.controls = []
            evidence.notes.append(
                f"the controls did not start ({failures[0]}): forked services are compared"
                " baseline-vs-sandbox, without values"
            )


def _started(baseline: Baseline) -> str:
    return "reused a running baseline" if baseline.reused else "started"
