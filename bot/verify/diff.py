"""The baseline-vs-sandbox response diff: the same request, sent without and with the routing key.

Requests come from `verify.diff.requests` and from the suites' own GET/HEAD traffic as the data plane
recorded it, at every service's listener: a finding on a fork's own listener names the service that
changed, and one at the entry shows what a caller would see. Writes are replayed only when the config
marks a request `unsafe`, since they write on both sides.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from bot.config.schema import SAFE_METHODS, Diff
from bot.evidence import DiffResult
from bot.verify.compare import ComparePolicy, Response, compare
from bot.verify.observed import Observed


@dataclass(frozen=True)
class Probe:
    service: str
    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    recorded: bool = False
    """Replayed from the suites' traffic: data made during the suite may exist on one side only."""

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"


Send = Callable[[Probe, bool], Response]
"""Send a probe to its service, tagged for the sandbox or not; raises NotSent when it gets no answer."""


class NotSent(Exception):
    """A probe got no answer; the message is the one-line cause."""


def probes(config: Diff, observed: Iterable[Observed], routing_key: str) -> list[Probe]:
    chosen: list[Probe] = []
    for request in config.requests or []:
        body = json.dumps(request.body).encode() if request.body is not None else None
        headers = dict(request.headers)
        if body is not None:
            headers.setdefault("content-type", "application/json")
        chosen.append(Probe(request.service, request.method, request.path, headers, body))
    if config.from_suites:
        seen = {(p.service, p.method, p.path) for p in chosen}
        for record in observed:
            key = (record.service, record.method, record.path)
            if record.routing_key != routing_key or record.method not in SAFE_METHODS or key in seen:
                continue
            seen.add(key)
            chosen.append(Probe(record.service, record.method, record.path, recorded=True))
    return chosen[: config.max_requests]


def run_diff(config: Diff, chosen: list[Probe], send: Send) -> list[DiffResult]:
    policy = ComparePolicy(ignore=config.ignore, headers=config.headers)
    results = []
    for probe in chosen:
        try:
            baseline, sandbox = send(probe, False), send(probe, True)
        except NotSent as exc:
            cause = str(exc).split(":", 1)[0]
            results.append(DiffResult(request=f"{probe.label} (not sent: {cause})", service=probe.service))
            continue
        if probe.recorded and 404 in (baseline.status, sandbox.status) and baseline.status != sandbox.status:
            continue  # a resource the suite made in the sandbox's own data: absent from the baseline's
        results.append(
            DiffResult(
                request=probe.label, service=probe.service, findings=compare(baseline, sandbox, policy)
            )
        )
    return results
