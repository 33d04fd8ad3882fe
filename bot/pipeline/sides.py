"""The sides the verify stage compares: the candidate sandbox, its controls (the base code on copies of
the same data) and the baseline. Suites run on every side at once, and the diff's probes go out through
the runtime, which alone knows where a service lives."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from bot.config.schema import Diff
from bot.evidence import DiffResult, Evidence, SuiteResult
from bot.evidence.verdict import STATUS_TALLIES
from bot.runtimes.protocol import ProbeError, ProbeRequest, Runtime, Sandbox, SuiteOutcome, SuiteRequest
from bot.verify import blame, judge_suite, with_repeats
from bot.verify.compare import Response
from bot.verify.diff import (
    NotSent,
    Pair,
    Probe,
    Send,
    SendTo,
    control_pairs,
    probes,
    run_control_diff,
    run_diff,
)
from bot.verify.listener import listener_findings
from bot.verify.observed import Observed

SIDES = ("primary", "secondary")


def probe_through(runtime: Runtime, box: Sandbox, probe: Probe, *, tagged: bool) -> Response:
    """One diff probe to `box` (tagged with its key or not), as verify compares answers."""
    request = ProbeRequest(probe.service, probe.method, probe.path, probe.headers, probe.body)
    try:
        answer = runtime.probe(box, request, tagged=tagged)
    except ProbeError as exc:
        raise NotSent(str(exc)) from None
    return Response(answer.status, dict(answer.headers), answer.body)


def sender(runtime: Runtime, sandbox: Sandbox) -> Send:
    """Baseline (untagged) against sandbox (tagged)."""
    return lambda probe, tagged: probe_through(runtime, sandbox, probe, tagged=tagged)


def sender_to(runtime: Runtime, sandbox: Sandbox, controls: Sequence[Sandbox]) -> SendTo:
    """The control diff's sides: `candidate` is the sandbox, `primary` and `secondary` its controls,
    each tagged with its own routing key."""
    boxes = {"candidate": sandbox, **dict(zip(SIDES, controls, strict=True))}
    return lambda probe, side: probe_through(runtime, boxes[side], probe, tagged=True)


class Sides:
    """The diffs of one verify: control-vs-candidate at the forked services (`compared`), with every
    exchange at their listeners; baseline-vs-sandbox at the others."""

    def __init__(
        self,
        runtime: Runtime,
        config: Diff,
        sandbox: Sandbox,
        controls: Sequence[Sandbox],
        compared: list[str],
        grpc: Sequence[str] = (),
    ) -> None:
        self.runtime, self.config, self.sandbox, self.controls = runtime, config, sandbox, controls
        self.compared, self.grpc = compared, grpc

    def compare(self, observed: Sequence[Observed], seen: Sequence[Sequence[Observed]]) -> list[DiffResult]:
        """The suites' traffic (`observed` the candidate's, `seen` each control's) and the configured
        requests."""
        pairs: list[Pair] = []
        at_listeners: list[DiffResult] = []
        if seen:
            keys = (self.sandbox.routing_key, *(c.routing_key for c in self.controls))
            assert len(keys) == 3 and len(seen) == 2
            both = (seen[0], seen[1])
            pairs = control_pairs(self.config, observed, both, (keys[0], keys[1], keys[2]), self.compared)
            at_listeners = listener_findings(
                observed, both, (keys[0], keys[1], keys[2]), self.compared, self.grpc
            )
        chosen = probes(self.config, observed, self.sandbox.routing_key, exclude=self.compared)
        by_control, by_baseline = self._send(pairs, chosen)
        return [*by_control, *at_listeners, *by_baseline]

    def replay(self, seeded: Sequence[Observed]) -> list[DiffResult]:
        """The seed's reads, the same path on every side: that data existed before the copies."""
        if not seeded:
            return []
        only_seed = self.config.model_copy(update={"requests": None, "from_suites": False})
        no_traffic: tuple[list[Observed], list[Observed]] = ([], [])
        keys = (self.sandbox.routing_key, *(c.routing_key for c in self.controls), "", "")[:3]
        pairs = control_pairs(only_seed, [], no_traffic, (keys[0], keys[1], keys[2]), self.compared, seeded)
        chosen = probes(only_seed, [], self.sandbox.routing_key, exclude=self.compared, seeded=seeded)
        by_control, by_baseline = self._send(pairs, chosen)
        return [*by_control, *by_baseline]

    def _send(self, pairs: list[Pair], chosen: list[Probe]) -> tuple[list[DiffResult], list[DiffResult]]:
        """The two diffs side by side."""
        with ThreadPoolExecutor(max_workers=2) as pool:
            by_control = (
                pool.submit(
                    run_control_diff, self.config, pairs, sender_to(self.runtime, self.sandbox, self.controls)
                )
                if pairs
                else None
            )
            by_baseline = (
                pool.submit(run_diff, self.config, chosen, sender(self.runtime, self.sandbox))
                if chosen
                else None
            )
            return (by_control.result() if by_control else []), (by_baseline.result() if by_baseline else [])


def run_beside_controls(
    runtime: Runtime,
    evidence: Evidence,
    sandbox: Sandbox,
    controls: Sequence[Sandbox],
    request: SuiteRequest,
    stopping: Callable[[], bool],
) -> SuiteOutcome:
    """The suite against the candidate and, at the same time, against each control (tagged with its
    key, on its own data), so the writes happen on every side; only the candidate's outcome is
    judged."""
    if not controls:
        return runtime.run_suite(sandbox, request)
    # The candidate's run stays on this thread, where Ctrl-C lands; the controls' runs stop with it.
    interrupted = threading.Event()
    beside = replace(request, should_stop=lambda: interrupted.is_set() or stopping())
    pool = ThreadPoolExecutor(max_workers=len(controls))
    try:
        on_controls = [pool.submit(runtime.run_suite, box, beside) for box in controls]
        outcomes = [runtime.run_suite(sandbox, request), *(f.result() for f in on_controls)]
    except BaseException:
        interrupted.set()
        raise
    finally:
        pool.shutdown(wait=True)
    for side, outcome in zip(SIDES, outcomes[1:], strict=True):
        # A head suite may well fail on the base code: it tests the change. Only the base's says.
        if request.source == "base" and (outcome.timed_out or outcome.exit_code != 0):
            note = (
                f"suite {request.name} did not pass on the {side} control (the base code): its"
                " failures are the base's, not the change's"
            )
            if note not in evidence.notes:  # once, however often the suite runs
                evidence.notes.append(note)
            break
    return outcomes[0]


def on_the_baseline(
    runtime: Runtime,
    judged: SuiteResult,
    request: SuiteRequest,
    sandbox: Sandbox,
    checkpoint: Callable[[], None],
) -> SuiteResult:
    """The failed suite again, untagged against the baseline: what fails there too is pre-existing,
    not the change's. Only on failure, so a passing change pays nothing."""
    checkpoint()
    outcome = runtime.run_suite(sandbox, replace(request, target="baseline"))
    return blame(judged, judge_suite(judged.name, "base", judged.gating, outcome))


def repeated(
    runtime: Runtime,
    judged: SuiteResult,
    request: SuiteRequest,
    sandbox: Sandbox,
    times: int,
    checkpoint: Callable[[], None],
) -> SuiteResult:
    """A suite with sandbox-only failures again, on the candidate alone: how often each failure
    shows. Only on failure, and after every comparison, so the controls' data never diverges
    from the candidate's before it is compared, and no control reruns a suite."""
    again = []
    for _ in range(times):
        checkpoint()
        again.append(judge_suite(judged.name, "base", judged.gating, runtime.run_suite(sandbox, request)))
    return with_repeats(judged, again)


def set_aside_values_past_a_lost_tag(evidence: Evidence) -> None:
    """A candidate fork that drops the tag reads the baseline's data where its controls read their own
    copies, and a fork the suites never reached did not take the writes its controls took: the values
    (and statuses) they answer differ for that reason alone. Those findings are kept, but do not
    count; the lost tag itself is what the verdict reports (nothing proved the change)."""
    dropping = {p.service for p in evidence.propagation if p.drops_baggage_to}
    unreached = {s.name for s in evidence.forks if s.tagged_requests == 0}
    set_aside: dict[str, int] = {}
    for result in evidence.diff:
        if result.against != "control" or result.service not in dropping | unreached:
            continue
        for finding in result.findings:
            if (finding.kind == "value_changed" or finding.kind in STATUS_TALLIES) and finding.breaking:
                finding.breaking = False
                set_aside[result.service] = set_aside.get(result.service, 0) + 1
    for service, count in sorted(set_aside.items()):
        why = (
            "its fork drops the sandbox's tag, so it read the baseline's data where the controls read their"
            " own copies"
            if service in dropping
            else "the sandbox's requests never reached its fork, so it did not take the writes its"
            " controls took"
        )
        evidence.notes.append(f"{count} value difference(s) at {service} not counted: {why}")
