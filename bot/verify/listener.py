"""Every exchange the suites made at a forked service's listener, writes included, compared by status
between the candidate and its controls.

The replayed diff can only resend reads. What a write answered, or what a caller's retries hid (a 503
that orders retried into a 200), is seen only in the data plane's record of the run, and the suites ran
the same traffic on every side at once. So per operation (method and path, ids folded) the status codes
each side answered are compared: a code the candidate answered that neither control ever did, or one
both controls answered that the candidate never did. Where the two controls disagree with each other,
the operation is noise (timing, retries) and never a finding.

A gRPC call always answers HTTP 200; what its caller sees is the `grpc-status` trailer. So a gRPC
exchange (one the data plane saw a gRPC status for, or any at a service named in `grpc`) is grouped by
its method (`/package.Service/Method`, never folded: `v1` is no id) and compared by its gRPC status,
named (`OK (7), NOT_FOUND (2)`). A gRPC status the controls never gave for that method is breaking,
unless it is OK (a method that now succeeds breaks no caller); one the controls gave that the candidate
never did is breaking unless it is a server error (`bot.verify.grpc.status.SERVER_ERRORS`, the gRPC
5xx). An answer to a gRPC call without any gRPC status is a server error too: every client fails it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from typing import Final

from bot.evidence import DiffResult, Finding
from bot.verify.grpc import status as grpc_status
from bot.verify.observed import Observed

_ID = re.compile(r"\d")
_GRPC: Final = "gRPC"


def operation(method: str, path: str) -> str:
    """`POST /reservations`, `GET /orders/{id}`: segments holding a digit are ids, which differ per side."""
    segments = path.split("?", 1)[0].split("/")
    return f"{method} " + "/".join("{id}" if _ID.search(s) else s for s in segments)


def _statuses(
    observed: Iterable[Observed], key: str, services: set[str], grpc: Collection[str]
) -> dict[tuple[str, str], Counter[int]]:
    """Per (service, operation), how often the side's fork answered each status to its own traffic.
    A gRPC exchange's operation is `gRPC /package.Service/Method` and its status the gRPC code; one
    without a gRPC status counts as `-1 - HTTP status` (see `_name`; negative, never a gRPC code, also
    for an HTTP status of 0, no answer at all)."""
    out: dict[tuple[str, str], Counter[int]] = {}
    for record in observed:
        if record.routing_key != key or record.target != key or record.service not in services:
            continue
        code = record.grpc_status
        if code is not None or record.service in grpc:
            op = f"{_GRPC} {record.path.split('?', 1)[0]}"
            status = code if code is not None else -1 - record.status
        else:
            op, status = operation(record.method, record.path), record.status
        out.setdefault((record.service, op), Counter())[status] += 1
    return out


def listener_findings(
    candidate: Iterable[Observed],
    controls: tuple[Iterable[Observed], Iterable[Observed]],
    keys: tuple[str, str, str],
    forked: Iterable[str],
    grpc: Collection[str] = (),
) -> list[DiffResult]:
    """One result per operation whose statuses differ beyond the controls' own disagreement; `grpc`:
    the services that speak gRPC (their exchanges are compared by gRPC status even where the data
    plane saw none)."""
    wanted = set(forked)
    key, primary_key, secondary_key = keys
    mine = _statuses(candidate, key, wanted, grpc)
    primary, secondary = (
        _statuses(controls[0], primary_key, wanted, grpc),
        _statuses(controls[1], secondary_key, wanted, grpc),
    )
    results = []
    for group in sorted(mine.keys() & primary.keys() & secondary.keys()):
        if set(primary[group]) != set(secondary[group]):
            continue  # the controls disagree: noise
        judge = _grpc_findings if group[1].startswith(f"{_GRPC} ") else _findings
        findings = judge(mine[group], primary[group])
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


def _tally(statuses: Counter[int], show: Callable[[int], str] = str) -> str:
    return ", ".join(
        f"{show(code)} ({count})" for code, count in sorted(statuses.items(), key=lambda i: (-i[1], i[0]))
    )


def _grpc_findings(candidate: Counter[int], control: Counter[int]) -> list[Finding]:
    """As `_findings`, by gRPC code: any error code the controls never gave is breaking (a caller
    branches on the code, not on a class of codes), a server error (`server_errors`) always."""
    theirs, mine = _tally(control, _name), _tally(candidate, _name)
    findings = [
        Finding(
            kind="server_errors" if _server_error(code) else "status_added",
            pointer="",
            baseline=theirs,
            sandbox=mine,
            breaking=code != grpc_status.OK,
        )
        for code in sorted(set(candidate) - set(control), key=_code_order)
    ]
    findings += [
        Finding(
            kind="status_missing", pointer="", baseline=theirs, sandbox=mine, breaking=not _server_error(code)
        )
        for code in sorted(set(control) - set(candidate), key=_code_order)
    ]
    return findings


def _server_error(code: int) -> bool:
    return code < 0 or code in grpc_status.SERVER_ERRORS


def _code_order(code: int) -> tuple[bool, int]:
    return code < 0, abs(code)


def _name(code: int) -> str:
    """A gRPC code's name; a negative one is an answer that carried no gRPC status at all."""
    if code >= 0:
        return grpc_status.name(code)
    http = -1 - code
    return f"no grpc-status (HTTP {http})" if http else "no answer"
