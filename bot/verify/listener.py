"""Every exchange the suites made at a forked service's listener, writes included, compared by status
between the candidate and its controls.

The replayed diff can only resend reads. What a write answered, or what a caller's retries hid (a 503
that orders retried into a 200), is seen only in the data plane's record of the run, and the suites ran
the same traffic on every side at once. So per operation (method and path, ids folded) the status codes
each side answered are compared: a code the candidate answered that neither control ever did, or one
both controls answered that the candidate never did. Where the two controls disagree with each other,
the operation is noise (timing, retries) and never a finding.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from bot.evidence import DiffResult, Finding
from bot.verify.observed import Observed

_ID = re.compile(r"\d")


def operation(method: str, path: str) -> str:
    """`POST /reservations`, `GET /orders/{id}`: segments holding a digit are ids, which differ per side."""
    segments = path.split("?", 1)[0].split("/")
    return f"{method} " + "/".join("{id}" if _ID.search(s) else s for s in segments)


def _statuses(
    observed: Iterable[Observed], key: str, services: set[str]
) -> dict[tuple[str, str], Counter[int]]:
    """Per (service, operation), how often the side's fork answered each status to its own traffic."""
    out: dict[tuple[str, str], Counter[int]] = {}
    for record in observed:
        if record.routing_key != key or record.target != key or record.service not in services:
            continue
        out.setdefault((record.service, operation(record.method, record.path)), Counter())[record.status] += 1
    return out


def listener_findings(
    candidate: Iterable[Observed],
    controls: tuple[Iterable[Observed], Iterable[Observed]],
    keys: tuple[str, str, str],
    forked: Iterable[str],
) -> list[DiffResult]:
    """One result per operation whose statuses differ beyond the controls' own disagreement."""
    wanted = set(forked)
    key, primary_key, secondary_key = keys
    mine = _statuses(candidate, key, wanted)
    primary, secondary = (
        _statuses(controls[0], primary_key, wanted),
        _statuses(controls[1], secondary_key, wanted),
    )
    results = []
    for group in sorted(mine.keys() & primary.keys() & secondary.keys()):
        if set(primary[group]) != set(secondary[group]):
            continue  # the controls disagree: noise
        findings = _findings(mine[group], primary[group])
        if findings:
            service, op = group
            results.append(
                DiffResult(
                    request=f"{op}, the suites' exchanges",
                    service=service,
                    findings=findings,
                    against="control",
                )
            )
    return results


def _findings(candidate: Counter[int], control: Counter[int]) -> list[Finding]:
    """`baseline` holds the primary control's tally, `sandbox` the candidate's: `200 (7), 503 (2)`."""
    control_classes = {code // 100 for code in control}
    theirs, mine = _tally(control), _tally(candidate)
    findings = [
        Finding(
            kind="server_errors" if code >= 500 else "status_added",
            pointer="",
            baseline=theirs,
            sandbox=mine,
            breaking=code >= 500 or code // 100 not in control_classes,
        )
        for code in sorted(set(candidate) - set(control))
    ]
    findings += [
        # A 5xx the candidate no longer answers is no defect of it.
        Finding(kind="status_missing", pointer="", baseline=theirs, sandbox=mine, breaking=code < 500)
        for code in sorted(set(control) - set(candidate))
    ]
    return findings


def _tally(statuses: Counter[int]) -> str:
    return ", ".join(
        f"{code} ({count})" for code, count in sorted(statuses.items(), key=lambda i: (-i[1], i[0]))
    )
