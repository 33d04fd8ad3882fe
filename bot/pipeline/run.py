"""The flow: plan, baseline and build (at once: prepare.py), fork, route, verify, decide, teardown.

Every stage extends the one Evidence; teardown runs on success, failure, exception and Ctrl-C. The
pipeline knows nothing of GitHub or terminals: callers (CLI, worker, action) report the Evidence.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from bot.config import Config, LoopgateError, Suite
from bot.evidence import (
    ErrorKind,
    Evidence,
    GitRef,
    ServiceResult,
    Verdict,
    decide,
    utcnow,
)
from bot.pipeline.choice import NotChosen, RuntimeChooser, only
from bot.pipeline.contract import check_contracts
from bot.pipeline.grpcprobes import add_grpc_probes
from bot.pipeline.plan import Plan, make_plan
from bot.pipeline.prepare import Held, Preparation
from bot.pipeline.protos import add_proto_findings
from bot.pipeline.sides import (
    Sides,
    on_the_baseline,
    repeated,
    run_beside_controls,
    set_aside_values_past_a_lost_tag,
)
from bot.pipeline.stages import Cancelled, StageListener, StageRecorder, StageResult
from bot.runtimes.protocol import (
    Baseline,
    BaselineError,
    ObservedRequest,
    ProbeAnswer,
    ProbeRequest,
    Runtime,
    Sandbox,
    SeedReads,
    Source,
    SuiteRequest,
)
from bot.verify import diagnose, judge_suite, last_tagged_hop, tagged_counts
from bot.verify.requestmap import request_map


@dataclass(frozen=True)
class VerifyRequest:
    repo: Path
    base_ref: str
    head_ref: str
    config_file: Path | None = None
    trigger: str = "cli"
    keep: bool = False
    run_id: str | None = None
    keep_baseline: bool = False
    """Leave a baseline this process started running for later runs (`loopgate zoo`)."""
    sandbox_only: bool = False
    """Stop once the forks are routed and keep them: `loopgate sandbox create`, the agent's inner loop."""
    on_verdict: Callable[[Evidence], None] | None = None
    """Called with the decided Evidence before teardown, so the verdict is reported without waiting for
    the cleanup; teardown's own outcome is added to the same Evidence afterwards."""


def _apart(evidence: Evidence, check: Callable[[Evidence], None]) -> Evidence:
    """`check` run on a copy of the Evidence with findings and notes of its own, so that checks running
    side by side never interleave theirs."""
    part = evidence.model_copy(update={"diff": [], "notes": []})
    check(part)
    return part


@dataclass
class Kept:
    """What `--keep` left running, so the caller can tell the user how to reach and delete it."""

    sandbox: Sandbox


def new_run_id() -> str:
    """Unguessable: run ids end up in URLs of private evidence pages."""
    return secrets.token_urlsafe(12).replace("-", "a").replace("_", "b").lower()


class Pipeline(Preparation):
    def __init__(
        self,
        runtime: Runtime | RuntimeChooser,
        listener: StageListener | None = None,
        should_stop: Callable[[], str | None] | None = None,
    ) -> None:
        """`runtime` is one runtime, or a chooser by the config's `runtime.kind`. `should_stop` returns
        why the run must stop, or None; it is polled between stages and while suites run."""
        self.choose: RuntimeChooser = runtime if callable(runtime) else only(runtime)
        self.runtime: Runtime = runtime if not callable(runtime) else cast(Runtime, NotChosen())
        self.listener = listener
        self.should_stop = should_stop or (lambda: None)
        self.kept: Kept | None = None

    def _checkpoint(self) -> None:
        why = self.should_stop()
        if why is not None:
            raise Cancelled(why)

    def _stage(self, stages: StageRecorder, name: str) -> AbstractContextManager[StageResult]:
        self._checkpoint()
        return stages.stage(name)

    def verify(self, request: VerifyRequest) -> Evidence:
        evidence = Evidence(
            run_id=request.run_id or new_run_id(),
            repo=str(request.repo),
            base=GitRef(ref=request.base_ref),
            head=GitRef(ref=request.head_ref),
            trigger=request.trigger,
        )
        stages = StageRecorder(evidence, self.listener)
        held = Held()
        self.controls: list[Sandbox] = []
        reported = False
        try:
            try:
                with stages.stage("plan") as result:
                    plan = make_plan(request.repo, request.base_ref, request.head_ref, request.config_file)
                    self._record_plan(evidence, plan)
                    result.detail = (
                        f"{len(plan.changed_files)} files changed, {len(plan.affected)} services affected"
                    )
                    self.runtime = self.choose(plan.config)
                    evidence.confined = self.runtime.confined
                if not plan.affected and not plan.run_head_suites:
                    for name in ("baseline", "build", "fork", "route", "verify"):
                        stages.skipped(name, "no service is affected by the change")
                else:
                    head = Source(request.repo, plan.merge_sha)
                    self._prepare(stages, evidence, plan, head, held, with_controls=not request.sandbox_only)
                    baseline, sandbox = held.baseline, held.sandbox
                    assert baseline is not None and sandbox is not None
                    if not any(s.status in ("build_failed", "start_failed") for s in evidence.forks):
                        with self._stage(stages, "route") as routed:
                            note = self.runtime.route(sandbox)
                            for control in self.controls:
                                self.runtime.route(control)
                            if note is not None:
                                routed.detail = note
                                evidence.notes.append(note)
                        if request.sandbox_only:
                            return evidence
                        self._verify(stages, evidence, plan, sandbox)
                    else:
                        stages.skipped("route", "a fork failed")
                        stages.skipped("verify", "a fork failed")
                    self._require_healthy_baseline(baseline)
                with stages.stage("decide"):
                    evidence.verdict, evidence.reasons = decide(evidence)
            except Cancelled as exc:
                evidence.verdict, evidence.cancelled = None, True
                evidence.reasons = [f"cancelled: {exc}"]
            except LoopgateError as exc:
                evidence.verdict = Verdict.ERROR
                evidence.error_kind = ErrorKind.CONFIG if exc.kind == "config" else ErrorKind.INFRASTRUCTURE
                evidence.reasons = [str(exc)]
                if exc.kind == "change":
                    evidence.verdict, evidence.error_kind = Verdict.FAIL, None
                if isinstance(exc, BaselineError):
                    _record_log_tails(evidence, exc.log_tails)
            except Exception as exc:
                # A bug or an unforeseen failure below: nobody's change is to blame, and the run still
                # ends with Evidence and a teardown rather than a traceback.
                evidence.verdict, evidence.error_kind = Verdict.ERROR, ErrorKind.INFRASTRUCTURE
                evidence.reasons = [f"internal error: {type(exc).__name__}: {exc}"]
            if request.on_verdict is not None and not self.kept_for(request, evidence):
                # The verdict is decided: the caller reports it now, while the sandbox is cleaned up.
                evidence.finished_at, reported = utcnow(), True
                request.on_verdict(evidence)
        finally:
            keep = self.kept_for(request, evidence)
            self._teardown(
                stages,
                evidence,
                held.baseline,
                held.sandbox,
                keep=keep,
                release=not request.keep_baseline,
                reported=reported,
            )
            if not reported:
                evidence.finished_at = utcnow()
        return evidence

    @staticmethod
    def kept_for(request: VerifyRequest, evidence: Evidence) -> bool:
        """Whether the sandbox stays up: `--keep`, or `sandbox create` that got its routed forks."""
        return request.keep or (request.sandbox_only and evidence.verdict is None and not evidence.cancelled)

    def _require_healthy_baseline(self, baseline: Baseline) -> None:
        """A failure is only the change's fault while the baseline is healthy; otherwise nobody's code is
        to blame and the verdict is an infrastructure error."""
        problem = self.runtime.baseline_health(baseline)
        if problem is not None:
            raise BaselineError(
                f"the baseline became unhealthy during the run: {problem}",
                self.runtime.baseline_logs(baseline),
            )

    def _stopping(self) -> bool:
        return self.should_stop() is not None

    def _record_plan(self, evidence: Evidence, plan: Plan) -> None:
        evidence.base.sha, evidence.head.sha, evidence.merge_sha = (
            plan.base_sha,
            plan.head_sha,
            plan.merge_sha,
        )
        evidence.changed_files = plan.changed_files
        evidence.notes.extend(plan.notes)
        for name in sorted(plan.config.services):
            hits = plan.affected.get(name)
            reason = f"changed: {', '.join(hits[:3])}{' …' if len(hits) > 3 else ''}" if hits else "unchanged"
            evidence.services.append(ServiceResult(name=name, forked=bool(hits), reason=reason))

    def _verify(self, stages: StageRecorder, evidence: Evidence, plan: Plan, sandbox: Sandbox) -> None:
        with self._stage(stages, "verify") as result:
            repeats: list[tuple[int, SuiteRequest, int]] = []
            for suite in plan.config.verify.suites:
                self._checkpoint()
                request = self._suite_request(suite, "base")
                outcome = run_beside_controls(
                    self.runtime, evidence, sandbox, self.controls, request, self._stopping
                )
                judged = judge_suite(suite.name, "base", suite.gating, outcome)
                # Not after a timeout: another full timeout, and a hang tells nothing about whose it is.
                if judged.gating and judged.status in ("failed", "errored"):
                    judged = on_the_baseline(self.runtime, judged, request, sandbox, self._checkpoint)
                if judged.gating and suite.repeat_failed and any(not f.pre_existing for f in judged.failures):
                    repeats.append((len(evidence.suites), request, suite.repeat_failed))
                evidence.suites.append(judged)
            if plan.run_head_suites:
                head_config: Config = plan.head_config or plan.config
                for suite in head_config.verify.suites:
                    self._checkpoint()
                    request = self._suite_request(suite, "head")
                    # Head's suites can only tighten the team's gate: a failure fails the change, a pass
                    # proves nothing (decide() counts only the base's suites as proof). Beside the
                    # controls too: what they write and then read exists on every side.
                    outcome = run_beside_controls(
                        self.runtime, evidence, sandbox, self.controls, request, self._stopping
                    )
                    evidence.suites.append(judge_suite(suite.name, "head", suite.gating, outcome))
            with ThreadPoolExecutor(max_workers=4, thread_name_prefix="loopgate-checks") as pool:
                self._compare(pool, evidence, plan, sandbox)
            for index, request, times in repeats:  # last: every comparison is made by now
                evidence.suites[index] = repeated(
                    self.runtime, evidence.suites[index], request, sandbox, times, self._checkpoint
                )
            if any(s.status != "passed" and not s.pre_existing for s in evidence.suites if s.gating):
                result.outcome = "failed"

    def _compare(self, pool: ThreadPoolExecutor, evidence: Evidence, plan: Plan, sandbox: Sandbox) -> None:
        """Every comparison after the suites, side by side where nothing orders them: the proto check
        sends nothing, so it runs beside everything; the seed's reads, the contract probes and the gRPC
        probes go out together once the suites' coverage is counted (a probe sent straight to a fork
        proves nothing about whether the suites' traffic reaches it). Findings and notes are added in a
        fixed order whatever finishes first."""
        repo = Path(evidence.repo)
        protos = pool.submit(
            _apart,
            evidence,
            lambda part: add_proto_findings(part, plan.config, repo, plan.base_sha, plan.merge_sha),
        )
        boxes = [sandbox, *self.controls] if len(self.controls) == 2 else [sandbox]
        observed, *seen = pool.map(self.runtime.observed_requests, boxes)  # each waits for the log to settle
        compared = [s.name for s in evidence.forks] if seen else []
        grpc = [name for name, spec in plan.config.services.items() if spec.protocol == "grpc"]
        sides = Sides(self.runtime, plan.config.verify.diff, sandbox, self.controls, compared, grpc)
        evidence.diff = sides.compare(observed, seen)
        suites_traffic = observed
        if evidence.diff:
            observed = self.runtime.observed_requests(sandbox)
        forked = [s.name for s in evidence.forks]
        counts = tagged_counts(sandbox.routing_key, observed, forked=forked)
        for service in evidence.services:
            service.tagged_requests = counts.get(service.name, 0)
        evidence.request_map = request_map(sandbox.routing_key, observed)
        # After the coverage count, as contract probes: the seed's reads are loopgate's traffic, not
        # the suites', and prove nothing about whether the suites reach a fork.
        seeded = self.runtime.seed_reads(sandbox.baseline) if isinstance(self.runtime, SeedReads) else []
        replayed = pool.submit(sides.replay, seeded)
        contract_traffic = [*suites_traffic, *seeded]  # the seed's reads name data that exists
        contracts = pool.submit(
            _apart, evidence, lambda part: self._check_contracts(part, plan, sandbox, contract_traffic)
        )
        probed = pool.submit(
            _apart,
            evidence,
            lambda part: add_grpc_probes(
                part, plan.config, repo, plan.base_sha, self.runtime, sandbox, self.controls
            ),
        )
        evidence.diff += replayed.result()
        if any(counts.get(name, 0) == 0 for name in forked):
            evidence.propagation = diagnose(sandbox.routing_key, observed)
            last = last_tagged_hop(sandbox.routing_key, observed)
            if not evidence.propagation and last is not None:
                evidence.notes.append(f"the sandbox's tag was last seen at {last}")
            set_aside_values_past_a_lost_tag(evidence)
        for part in (contracts.result(), protos.result(), probed.result()):
            evidence.diff += part.diff
            evidence.notes += part.notes

    def _check_contracts(
        self, evidence: Evidence, plan: Plan, sandbox: Sandbox, observed: list[ObservedRequest]
    ) -> None:
        """Each forked service's OpenAPI description, base against head, and its safe operations probed:
        the base side is the primary control where there is one (the base code on the same data), else
        the baseline."""
        forked = [s.name for s in evidence.forks if s.status == "ready"]
        if not forked:
            return
        send = None
        if self.controls:
            primary = self.controls[0]

            def send(request: ProbeRequest, to_candidate: bool) -> ProbeAnswer:
                return self.runtime.probe(sandbox if to_candidate else primary, request, tagged=True)

        contracts = check_contracts(self.runtime, sandbox, plan.config, forked, observed, send=send)
        if self.controls:
            for result in contracts.diff:
                result.against = "control"
        evidence.diff += contracts.diff
        evidence.notes += contracts.notes

    def _suite_request(self, suite: Suite, source: Literal["base", "head"]) -> SuiteRequest:
        return SuiteRequest(
            suite.name,
            suite.run,
            suite.timeout,
            source,
            should_stop=self._stopping,
            kubernetes=suite.kubernetes,
        )

    def _teardown(
        self,
        stages: StageRecorder,
        evidence: Evidence,
        baseline: Baseline | None,
        sandbox: Sandbox | None,
        *,
        keep: bool,
        release: bool,
        reported: bool = False,
    ) -> None:
        if baseline is None:
            return
        if keep and sandbox is not None:
            self.runtime.keep(sandbox)
            self.kept = Kept(sandbox)
            stages.skipped("teardown", "--keep: the sandbox stays up")
            return
        try:
            with stages.stage("teardown"):
                if sandbox is not None:
                    self.runtime.teardown(sandbox)
                if release:
                    self.runtime.release_baseline(baseline)
        except Exception as exc:
            evidence.notes.append(f"teardown: {exc}")
            # Once reported, the verdict stands: what was left is gc's (every part carries its expiry).
            if not reported and evidence.verdict in (None, Verdict.PASS):
                evidence.verdict, evidence.error_kind = Verdict.ERROR, ErrorKind.INFRASTRUCTURE
                evidence.reasons = [f"teardown failed: {exc}"]


def _record_log_tails(evidence: Evidence, log_tails: dict[str, str]) -> None:
    """Each failed baseline process's log tail on its service, or as a note when it is no service
    (Envoy): an infrastructure error says why, not only that."""
    for name, text in sorted(log_tails.items()):
        service = evidence.service(name)
        if service is not None:
            service.log_tail = text
        else:
            evidence.notes.append(f"{name} log:\n{text}")
