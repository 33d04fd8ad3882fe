"""The sides the verify stage compares: the candidate sandbox, its controls (the base code on copies of
the same data) and the baseline. Suites run on every side at once, and the diff's probes go out through
the runtime, which alone knows where a service lives."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from bot.evidence import Evidence
from bot.evidence.verdict import STATUS_TALLIES
from bot.runtimes.protocol import ProbeError, ProbeRequest, Runtime, Sandbox, SuiteOutcome, SuiteRequest
from bot.verify.compare import Response
from bot.verify.diff import NotSent, Probe, Send, SendTo

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


def set_aside_values_past_a_lost_tag(evidence: Evidence) -> None:
    """A candidate fork that drops the tag reads the baseline's data where its controls read their own
    copies: the values (and statuses) it answers differ for that reason alone. Those findings are kept,
    but do not count; the lost tag itself is what the verdict reports (nothing proved the change)."""
    dropping = {p.service for p in evidence.propagation if p.drops_baggage_to}
    set_aside = 0
    for result in evidence.diff:
        if result.against != "control" or result.service not in dropping:
            continue
        for finding in result.findings:
            if (finding.kind == "value_changed" or finding.kind in STATUS_TALLIES) and finding.breaking:
                finding.breaking, set_aside = False, set_aside + 1
    if set_aside:
        evidence.notes.append(
            f"{set_aside} value difference(s) at {', '.join(sorted(dropping))} not counted: its fork drops"
            " the sandbox's tag, so it read the baseline's data where the controls read their own copies"
        )
