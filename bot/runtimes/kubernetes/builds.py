"""An in-cluster image build: the Kaniko Job (objects.build_job) run to completion by jobs.run_job."""

from __future__ import annotations

import re
from collections.abc import Callable

import kubernetes.client

from bot.config import InfrastructureError
from bot.runtimes.kubernetes.jobs import Obj, one_line, run_job, tail
from bot.runtimes.protocol import BuildOutcome

_KANIKO_ERROR = re.compile(
    r"^\s*(?:ERRO|FATA)\[|^\s*(?:error|fatal)\b|level=(?:error|fatal)\b", re.IGNORECASE
)
_ANY_ERROR = re.compile(r"\b(?:error|failed|fatal)\b", re.IGNORECASE)
_PUSH_REFUSED = re.compile(r"error checking push permissions|failed to push to destination", re.IGNORECASE)
"""Kaniko could build but not push: the registry or its Secret is wrong, not the change."""


def run_build(
    api: kubernetes.client.ApiClient,
    job: Obj,
    *,
    service: str,
    destination: str,
    timeout_s: float,
    should_stop: Callable[[], bool] | None = None,
) -> BuildOutcome:
    """Run the Kaniko Job `job` that pushes `destination`; ok when it exits 0 within `timeout_s`.
    InfrastructureError when the cluster refuses or loses the Job, Kaniko's container cannot start
    (run_job), or the registry refuses the push: none of these is the change's fault."""
    outcome = run_job(api, job, timeout_s=timeout_s, should_stop=should_stop, nonce=None)
    ok = outcome.exit_code == 0 and not outcome.timed_out
    refused = (
        None
        if ok
        else next((line for line in reversed(outcome.log.splitlines()) if _PUSH_REFUSED.search(line)), None)
    )
    if refused is not None:
        raise InfrastructureError(
            f"the image of {service} was built but not pushed to {destination}: {one_line(refused, 500)}"
        )
    detail = None
    if not ok:
        if outcome.timed_out:
            detail = f"build timed out after {timeout_s:g}s"
        else:
            detail = "build failed: " + (
                last_error_line(outcome.log)
                or outcome.reason
                or (f"exit code {outcome.exit_code}" if outcome.exit_code is not None else "no exit code")
            )
    log_tail = tail(outcome.log)
    if outcome.reason:
        log_tail = (log_tail + "\n" if log_tail else "") + f"[loopgate] {outcome.reason}"
    return BuildOutcome(
        service=service,
        ok=ok,
        source=destination,
        duration_ms=outcome.duration_ms,
        log_tail=log_tail or None,
        detail=detail,
    )


def last_error_line(log: str) -> str | None:
    """The last line of a Kaniko log that reports an error (`error building image: …`, `ERRO[0003] …`),
    else the last line that mentions one; None when none does."""
    lines = [line for line in log.splitlines() if line.strip()]
    for pattern in (_KANIKO_ERROR, _ANY_ERROR):
        for line in reversed(lines):
            if pattern.search(line):
                return one_line(line, 500)
    return None
