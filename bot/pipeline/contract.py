"""Contract probing from each forked service's own API description (the verify stage calls it).

For every forked service that publishes OpenAPI (`services.*.openapi`, FastAPI's `/openapi.json` by
default): the base document (asked untagged, from the baseline) and the head document (asked tagged,
from the fork) are compared by `bot.verify.openapi`; then every safe operation of the *base* document is
sent, as a concrete request, to both sides and the answers compared by shape, as the response diff
does. This reaches operations that no caller and no suite exercises. What is sent is bounded by
`verify.diff.max_requests`.

The runtime alone knows where a service lives: every request goes out through `Runtime.probe`, or
through `send` when the caller compares other sides (a control and the candidate).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from bot.config import Config
from bot.config.schema import SAFE_METHODS
from bot.evidence import DiffResult
from bot.runtimes.protocol import ProbeAnswer, ProbeError, ProbeRequest, Runtime, Sandbox
from bot.verify.compare import ComparePolicy, Response, compare
from bot.verify.diff import PARALLEL_PROBES
from bot.verify.observed import Observed
from bot.verify.openapi import Document, NotADescription, compare_documents, parse_document, plan_probes

__all__ = ["ContractCheck", "Send", "check_contracts"]

Send = Callable[[ProbeRequest, bool], ProbeAnswer]
"""Send one request to the service: `False` to the base side, `True` to the changed side; raises
ProbeError when it gets no answer."""

MAX_SEEN_PATHS = 2_000
"""Distinct paths of a service's traffic mined for parameter values."""

PROBE_SUFFIX = "(probed from OpenAPI)"


@dataclass
class ContractCheck:
    diff: list[DiffResult] = field(default_factory=list)
    """Document findings (request `OpenAPI GET /items/{sku}`) and probe results
    (`GET /items/sku-1 (probed from OpenAPI)`), for `Evidence.diff`."""
    notes: list[str] = field(default_factory=list)
    """One line each, for `Evidence.notes`: services without a description, what was not probed."""


def check_contracts(
    runtime: Runtime,
    sandbox: Sandbox,
    config: Config,
    forked: Sequence[str],
    observed: Sequence[Observed],
    *,
    send: Send | None = None,
) -> ContractCheck:
    """Compare the forked services' base and head OpenAPI documents and probe their safe operations.

    `forked`: the services whose fork is running. `observed`: what the data plane saw during the suites;
    the paths a service answered give real ids. `send`: how a request reaches each side; by default
    `runtime.probe`, untagged (the baseline, base code) and tagged (the fork). To compare a control
    with the candidate instead, pass e.g. `lambda r, to_candidate: runtime.probe(candidate if
    to_candidate else control, r, tagged=True)`.

    An id taken from traffic may name a record the suites made on one side only (the sandbox's own
    data, or a candidate's id a control never made): a probe with one that finds it on one side only
    (404 on the other) is skipped, as the response diff skips recorded requests.
    """

    def through_runtime(request: ProbeRequest, tagged: bool) -> ProbeAnswer:
        return runtime.probe(sandbox, request, tagged=tagged)

    sender = send or through_runtime
    settings = config.verify.diff
    policy = ComparePolicy(ignore=settings.ignore, headers=settings.headers)
    replayed = (
        {
            (r.service, r.path)
            for r in observed
            if r.routing_key == sandbox.routing_key and r.method in SAFE_METHODS
        }
        if settings.from_suites
        else set()
    )
    budget = settings.max_requests
    check = ContractCheck()
    described = [(n, p) for n in forked if (p := _described_at(config, n)) is not None]
    # Every request here is a read answered by another process: all of them side by side, results
    # in a fixed order (services as given, probes as planned).
    with ThreadPoolExecutor(max_workers=PARALLEL_PROBES) as pool:
        documents = {
            name: (
                pool.submit(_fetch, sender, name, path, tagged=False),
                pool.submit(_fetch, sender, name, path, tagged=True),
            )
            for name, path in described
        }
        sent: list[tuple[str, str, bool, Future[tuple[Response, Response] | str]]] = []
        for name, path in described:
            base, head = (future.result() for future in documents[name])
            if isinstance(base, str):
                check.notes.append(f"{name}: no OpenAPI description from the baseline at {path} ({base})")
                continue
            if isinstance(head, str):
                check.notes.append(
                    f"{name}: the fork's OpenAPI description at {path} was not compared ({head})"
                )
            else:
                results, notes = compare_documents(base, head, name)
                check.diff.extend(results)
                check.notes.extend(f"{name}: {note}" for note in notes)
            seen = list(dict.fromkeys(r.path for r in observed if r.service == name and r.status < 400))
            planned, notes = plan_probes(
                base,
                seen[-MAX_SEEN_PATHS:],
                limit=budget,
                exclude={p for s, p in replayed if s == name},
            )
            check.notes.extend(f"{name}: {note}" for note in notes)
            budget -= len(planned)
            for probe in planned:
                request = ProbeRequest(name, probe.method, probe.path, dict(probe.headers))
                label = f"{probe.method} {probe.path} {PROBE_SUFFIX}"
                sent.append((name, label, probe.from_traffic, pool.submit(_both_sides, sender, request)))
        for name, label, from_traffic, answers in sent:
            both = answers.result()
            if isinstance(both, str):
                check.diff.append(DiffResult(request=f"{label} (not sent: {both})", service=name))
                continue
            before, after = both
            one_sided = 404 in (before.status, after.status) and before.status != after.status
            if from_traffic and one_sided:
                continue  # an id the suites made on one side only
            check.diff.append(
                DiffResult(request=label, service=name, findings=compare(before, after, policy))
            )
    return check


def _described_at(config: Config, name: str) -> str | None:
    spec = config.services.get(name)
    return spec.openapi_path if spec is not None else None


def _both_sides(send: Send, request: ProbeRequest) -> tuple[Response, Response] | str:
    """The base side's answer, then the changed side's; or the one-line cause of no answer."""
    try:
        return _response(send(request, False)), _response(send(request, True))
    except ProbeError as exc:
        return str(exc).split(":", 1)[0]


def _fetch(send: Send, service: str, path: str, *, tagged: bool) -> Document | str:
    """The service's description, or why there is none (one line)."""
    request = ProbeRequest(service, "GET", path, {"accept": "application/json"})
    try:
        answer = send(request, tagged)
    except ProbeError as exc:
        return f"not answered: {str(exc).split(':', 1)[0]}"
    if answer.status != 200:
        return f"status {answer.status}"
    try:
        return parse_document(answer.body)
    except NotADescription as exc:
        return str(exc)


def _response(answer: ProbeAnswer) -> Response:
    return Response(answer.status, dict(answer.headers), answer.body)
