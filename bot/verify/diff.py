"""The response diffs.

Control-vs-candidate (`run_control_diff`), at a forked service's own listener: each request the suites
made there (and each configured one) goes to the primary control, the secondary control and the
candidate — each side asked for its own path, since a record the suite made has its own id on each
side. What differs between the two controls is noise; beyond it, status, listed headers, shape and
values are compared.

Baseline-vs-sandbox (`run_diff`), for the services not forked: the same request, sent without and with
the routing key — what a caller of the service sees.

Requests come from `verify.diff.requests` and from the suites' own GET/HEAD traffic as the data plane
recorded it. Writes are replayed only when the config marks a request `unsafe`, since they write on
both sides.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TypeVar

from bot.config.schema import SAFE_METHODS, Diff
from bot.evidence import DiffResult, Finding
from bot.verify.compare import ComparePolicy, Response, compare
from bot.verify.noise import generalise, noise_pointers, value_findings
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
    seeded: bool = False
    """A read `verify.seed` made: of data written before the change, which every side holds."""

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}" + (" (the seed's read)" if self.seeded else "")


PARALLEL_PROBES = 8
"""Probes in flight at once: independent reads, each answered by another process."""

_T = TypeVar("_T")
_R = TypeVar("_R")

Send = Callable[[Probe, bool], Response]
"""Send a probe to its service, tagged for the sandbox or not; raises NotSent when it gets no answer."""


class NotSent(Exception):
    """A probe got no answer; the message is the one-line cause."""


def probes(
    config: Diff,
    observed: Iterable[Observed],
    routing_key: str,
    exclude: Iterable[str] = (),
    seeded: Iterable[Observed] = (),
) -> list[Probe]:
    """Baseline-vs-sandbox probes; `exclude`: services compared control-vs-candidate instead."""
    skip = set(exclude)
    configured = [p for p in _configured(config) if p.service not in skip]
    suites = [p for p in _suites_reads(config, observed, routing_key) if p.service not in skip]
    seed = [p for p in _seed_reads(seeded) if p.service not in skip]
    return _within_budget(config, configured, suites, seed, lambda probe: probe)


def _configured(config: Diff) -> list[Probe]:
    chosen: list[Probe] = []
    for request in config.requests or []:
        body = json.dumps(request.body).encode() if request.body is not None else None
        headers = dict(request.headers)
        if body is not None:
            headers.setdefault("content-type", "application/json")
        chosen.append(Probe(request.service, request.method, request.path, headers, body))
    return chosen


def _suites_reads(config: Diff, observed: Iterable[Observed], routing_key: str) -> list[Probe]:
    if not config.from_suites:
        return []
    seen: set[tuple[str, str, str]] = set()
    chosen = []
    for record in observed:
        key = (record.service, record.method, record.path)
        if record.routing_key != routing_key or record.method not in SAFE_METHODS or key in seen:
            continue
        seen.add(key)
        chosen.append(Probe(record.service, record.method, record.path, recorded=True))
    return chosen


def _seed_reads(seeded: Iterable[Observed]) -> list[Probe]:
    return [Probe(r.service, r.method, r.path, seeded=True) for r in seeded]


def _within_budget(
    config: Diff, configured: list[_T], suites: list[_T], seeded: list[_T], probe: Callable[[_T], Probe]
) -> list[_T]:
    """Configured requests, the suites' reads, then the seed's reads (the paths not asked already), up
    to `max_requests`, of which the seed's may take up to half: both kinds of data get compared."""

    def path(item: _T) -> tuple[str, str, str]:
        return probe(item).service, probe(item).method, probe(item).path

    asked = {path(item) for item in (*configured, *suites)}
    seeded = [item for item in seeded if path(item) not in asked][: config.max_requests // 2]
    room = max(0, config.max_requests - len(configured) - len(seeded))
    suites = [item for item in suites if path(item) not in {path(c) for c in configured}][:room]
    return [*configured, *suites, *seeded][: config.max_requests]


def run_diff(config: Diff, chosen: list[Probe], send: Send) -> list[DiffResult]:
    """Each probe to the baseline, then to the sandbox; the probes side by side, as they are independent.
    Results in the order of `chosen`."""
    policy = ComparePolicy(ignore=config.ignore, headers=config.headers)

    def one(probe: Probe) -> DiffResult | None:
        try:
            baseline, sandbox = send(probe, False), send(probe, True)
        except NotSent as exc:
            cause = str(exc).split(":", 1)[0]
            return DiffResult(request=f"{probe.label} (not sent: {cause})", service=probe.service)
        if probe.recorded and 404 in (baseline.status, sandbox.status) and baseline.status != sandbox.status:
            return None  # a resource the suite made in the sandbox's own data: absent from the baseline's
        return DiffResult(
            request=probe.label, service=probe.service, findings=compare(baseline, sandbox, policy)
        )

    parallel = all(p.method in SAFE_METHODS for p in chosen)
    return [r for r in _side_by_side(one, chosen, parallel) if r is not None]


def _side_by_side(work: Callable[[_T], _R], items: list[_T], parallel: bool) -> list[_R]:
    """`work` on each item, in order; side by side when `parallel` (only reads: a configured write and
    the reads after it keep their order)."""
    if len(items) <= 1 or not parallel:
        return [work(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(PARALLEL_PROBES, len(items))) as pool:
        return list(pool.map(work, items))


# --- control-vs-candidate ----------------------------------------------------------------------

SIDES = ("primary", "secondary", "candidate")
SendTo = Callable[[Probe, str], Response]
"""Send a probe to one side (`primary`, `secondary`: the controls; `candidate`: the sandbox), tagged
with that side's routing key; raises NotSent when it gets no answer."""


@dataclass(frozen=True)
class Pair:
    """One request at a forked service, as each side is asked it: the candidate's path and each
    control's (the same path, or the control's own request in the same place of the suite's run)."""

    candidate: Probe
    controls: tuple[Probe, Probe]

    @property
    def label(self) -> str:
        paths = {p.path for p in self.controls} - {self.candidate.path}
        seen = f" (controls: {', '.join(sorted(paths))})" if paths else ""
        return f"{self.candidate.label}{seen}"


def control_pairs(
    config: Diff,
    candidate: Iterable[Observed],
    controls: tuple[Iterable[Observed], Iterable[Observed]],
    keys: tuple[str, str, str],
    forked: Iterable[str],
    seeded: Iterable[Observed] = (),
) -> list[Pair]:
    """The requests to compare at the forked services: configured ones, then the suites' GET/HEAD
    traffic, each candidate request paired with each control's request of the same path or, failing
    that, the one in the same place of the run with the same path shape (`/orders/<the id made on that
    side>`), then the seed's reads (the same path on every side: that data existed before the copies)."""
    wanted = set(forked)
    key, primary_key, secondary_key = keys
    configured = [Pair(p, (p, p)) for p in _configured(config) if p.service in wanted]
    seed = [Pair(p, (p, p)) for p in _seed_reads(seeded) if p.service in wanted]
    suites: list[Pair] = []
    if config.from_suites:
        mine = _seen(candidate, key, wanted)
        theirs = (_seen(controls[0], primary_key, wanted), _seen(controls[1], secondary_key, wanted))
        for group, paths in mine.items():
            service, method = group
            matched = [_align(paths, side.get(group, [])) for side in theirs]
            for index, path in enumerate(paths):
                probe = Probe(service, method, path, recorded=True)
                a, b = matched[0][index], matched[1][index]
                suites.append(Pair(probe, (replace(probe, path=a or path), replace(probe, path=b or path))))
    return _within_budget(config, configured, suites, seed, lambda pair: pair.candidate)


def _seen(observed: Iterable[Observed], key: str, services: set[str]) -> dict[tuple[str, str], list[str]]:
    """Each (service, method)'s distinct GET/HEAD paths tagged `key`, in the order first seen."""
    out: dict[tuple[str, str], list[str]] = {}
    for record in observed:
        if record.routing_key != key or record.method not in SAFE_METHODS or record.service not in services:
            continue
        paths = out.setdefault((record.service, record.method), [])
        if record.path not in paths:
            paths.append(record.path)
    return out


def _shape(path: str) -> tuple[int, str]:
    """Segments count and first segment: `/orders/ord_1` and `/orders/ord_2` have one shape."""
    segments = path.split("?", 1)[0].split("/")
    return len(segments), segments[1] if len(segments) > 1 else ""


def _align(mine: list[str], theirs: list[str]) -> list[str | None]:
    """For each of `mine`, the same path in `theirs`, else the next unused one of the same shape that
    `mine` does not have itself; None when there is none (the path is then sent as it is)."""
    unused = [p for p in theirs if p not in mine]
    out: list[str | None] = []
    for path in mine:
        if path in theirs:
            out.append(path)
            continue
        match = next((p for p in unused if _shape(p) == _shape(path)), None)
        if match is not None:
            unused.remove(match)
        out.append(match)
    return out


def run_control_diff(config: Diff, pairs: list[Pair], send: SendTo) -> list[DiffResult]:
    """Each pair's three requests in turn (primary, secondary, candidate); the pairs side by side, as
    they are independent reads. Results in the order of `pairs`."""
    policy = ComparePolicy(ignore=config.ignore, headers=config.headers)

    def one(pair: Pair) -> DiffResult:
        try:
            primary = send(pair.controls[0], "primary")
            secondary = send(pair.controls[1], "secondary")
            candidate = send(pair.candidate, "candidate")
        except NotSent as exc:
            cause = str(exc).split(":", 1)[0]
            label = f"{pair.label} (not sent: {cause})"
            return DiffResult(request=label, service=pair.candidate.service, against="control")
        noise = noise_pointers(primary, secondary)
        return DiffResult(
            request=pair.label,
            service=pair.candidate.service,
            findings=control_findings(primary, secondary, candidate, noise, policy),
            against="control",
            noise=generalise(noise),
        )

    return _side_by_side(one, pairs, all(p.candidate.method in SAFE_METHODS for p in pairs))


def control_findings(
    primary: Response, secondary: Response, candidate: Response, noise: list[str], policy: ComparePolicy
) -> list[Finding]:
    """Status, listed headers, shape and values of the candidate's answer against the primary control's,
    beyond `noise` (where the two controls differ); nothing when they differ on the whole answer. Also
    for answers that were not JSON on the wire (gRPC messages, decoded)."""
    if "" in noise:
        return []  # the controls disagree with each other on the whole answer: nothing can be blamed
    unstable = [h for h in policy.headers if _header(primary, h) != _header(secondary, h)]
    stable = ComparePolicy(
        ignore=(*policy.ignore, *generalise(noise, limit=200)),
        headers=[h for h in policy.headers if h not in unstable],
    )
    findings = compare(primary, candidate, stable)
    findings += value_findings(primary, candidate, noise, tuple(policy.ignore))
    return sorted(findings, key=lambda f: (not f.breaking, f.pointer, f.kind))


def _header(response: Response, name: str) -> str | None:
    return next((v.strip() for k, v in response.headers.items() if k.lower() == name.lower()), None)
