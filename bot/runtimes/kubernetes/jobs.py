"""One Job run to completion: create it, watch it finish, read its pod's log, delete it.

Suites (and Kaniko builds, `builds.py`) run as Jobs. Completion is watched, never polled: a watch on the
Job alone (`metadata.name` field selector) from the resourceVersion of its creation, in short windows so
`should_stop` is honoured within a couple of seconds; a watch that ends is resumed, one whose
resourceVersion expired (410 Gone) is replaced by a fresh list. The Job's own `activeDeadlineSeconds`
is the timeout (condition `Failed`, reason `DeadlineExceeded`); the client gives up a grace period later
in case the cluster never says so.

The official client is untyped: every response is read as raw JSON (`_preload_content=False`) into
plain dicts (`rawapi.py`), so `Any` stays at this boundary. (Raw JSON also because the client's own
decoding of a pod log parses it as JSON first: a log that is one JSON object came back as its Python
repr.) The watch is `jobwatch.py`; reading the pod's log, `podlogs.py`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kubernetes.client
import kubernetes.watch
from kubernetes.client.exceptions import ApiException

from bot.config import InfrastructureError
from bot.runtimes.kubernetes.jobobjects import junit_begin, junit_from_log
from bot.runtimes.kubernetes.jobwatch import WATCH_WINDOW_S, _finished_condition, _Watched
from bot.runtimes.kubernetes.podlogs import (
    LOG_LIMIT_BYTES,
    TAIL_CHARS,
    TAIL_LINES,
    TAIL_LINES_FOR_REPORT,
    _pod_log,
    read_pod_log,
    tail,
)
from bot.runtimes.kubernetes.rawapi import _TRANSIENT, API_TIMEOUT_S, Obj, api_message, as_obj, one_line
from bot.runtimes.protocol import JUNIT_MAX_BYTES, SuiteOutcome

__all__ = [
    "API_TIMEOUT_S",
    "LOG_LIMIT_BYTES",
    "TAIL_CHARS",
    "TAIL_LINES",
    "TAIL_LINES_FOR_REPORT",
    "WATCH_WINDOW_S",
    "JobOutcome",
    "Obj",
    "api_message",
    "as_obj",
    "one_line",
    "read_pod_log",
    "run_job",
    "suite_outcome",
    "tail",
]

logger = logging.getLogger(__name__)

CLIENT_GRACE_S = 60.0
"""How long after the suite's timeout the client stops waiting for the cluster's own DeadlineExceeded
(a Job's deadline counts from its start, which can lag its creation)."""

STOP_WAIT_S = 45.0
"""After a Foreground delete: how long to wait for the Job (and so its pods) to be gone."""

POD_CHECK_S = 15.0
"""How often a running Job's pod is looked at for a container that cannot start (image not pulled,
Secret missing): seen so on two looks in a row, the Job is given up as an infrastructure error rather
than waited for until its deadline blames the suite."""

_STUCK = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)

SNAPSHOT_BEFORE_S = 3.0
"""How long before the suite's deadline its log is read once, in case the pod is deleted with it."""


@dataclass(frozen=True)
class JobOutcome:
    exit_code: int | None
    """The pod's (first container's) exit code; None when it never exited on its own (timed out,
    stopped, deleted, never started)."""
    timed_out: bool
    duration_ms: int
    log: str
    """The log of the Job's own (first template) container, however the Job ended; "" when the pod is gone."""
    reason: str | None
    """Why the Job failed, as the cluster said it (`DeadlineExceeded: …`), or what loopgate did."""


# ---------------------------------------------------------------------------------------------- jobs


def run_job(
    api: kubernetes.client.ApiClient,
    job: Obj,
    *,
    timeout_s: float,
    should_stop: Callable[[], bool] | None,
    nonce: str | None,
) -> JobOutcome:
    """Create `job`, wait for it to finish (or time out, or `should_stop`), read its pod's log and
    delete it. `nonce` names the JUnit delimiter lines (objects.suite_job): when the log is over
    LOG_LIMIT_BYTES, its end is read again so the report after the test output is not lost.

    InfrastructureError when the API server refuses the Job (422 with its message) or cannot be reached.
    """
    batch = kubernetes.client.BatchV1Api(api)
    metadata = job.get("metadata") or {}
    namespace, name = str(metadata.get("namespace") or ""), str(metadata.get("name") or "")
    if not namespace or not name:
        raise ValueError("the Job needs metadata.namespace and metadata.name")
    containers = ((job.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or [{}]
    # The Job's own container, by name: a mesh may inject its sidecar before it (Istio does, with
    # holdApplicationUntilProxyStarts), so "the pod's first container" is not it.
    main = str(containers[0].get("name") or "")
    if should_stop is not None and should_stop():
        return JobOutcome(None, False, 0, "", "stopped: the run was cancelled before the Job was created")
    started = time.monotonic()
    created = _create(batch, namespace, name, job)
    uid = str(created["metadata"].get("uid") or "")
    early: list[str] = []
    blocked: list[tuple[str, str] | None] = [None]
    schedule = {"snapshot": started + timeout_s - SNAPSHOT_BEFORE_S, "check": started + POD_CHECK_S}

    def between(now: float) -> bool:
        """Between watch windows, on a schedule (never a poll): read the log once shortly before the
        deadline (at DeadlineExceeded the Job controller deletes the pod, and its log with it, and a
        hung suite's last words are what the Evidence needs); every POD_CHECK_S look whether the pod
        is stuck before its container could start. True: stuck twice running, give up."""
        if now >= schedule["snapshot"]:
            schedule["snapshot"] = math.inf
            with contextlib.suppress(InfrastructureError):
                pod = _job_pod(api, namespace, name, uid, main)
                if pod is not None:
                    early.append(_pod_log(api, namespace, pod, main, nonce))
        if now >= schedule["check"]:
            schedule["check"] = now + POD_CHECK_S
            with contextlib.suppress(InfrastructureError):
                stuck = _stuck(_job_pod(api, namespace, name, uid, main), main)
                seen, blocked[-1:] = blocked[-1], [stuck]
                if stuck is not None and seen is not None and stuck[0] == seen[0]:
                    return True
        return False

    try:
        watched = _Watched(batch, namespace, name, str(created["metadata"].get("resourceVersion") or ""))
        end, finished = watched.until_finished(started + timeout_s + CLIENT_GRACE_S, should_stop, between)
        if end == "blocked":
            raise InfrastructureError(
                f"Job {namespace}/{name} could not start its container {main!r}:"
                f" {(blocked[-1] or ('', 'stuck'))[1]}"
            )
        duration_ms = int((time.monotonic() - started) * 1000)
        pod = _job_pod(api, namespace, name, uid, main)
        log = _pod_log(api, namespace, pod, main, nonce) if pod is not None else ""
        if not log and early and early[-1]:
            log = early[-1] + "\n[loopgate] the log as it was shortly before the deadline (the pod is gone)"
        if end == "stopped":
            with contextlib.suppress(InfrastructureError):  # the Background delete below tries again
                _delete(batch, namespace, name, "Foreground")
                watched.until_gone(time.monotonic() + STOP_WAIT_S)
            return JobOutcome(None, False, duration_ms, log, "stopped: the run was cancelled")
        if end == "deadline":
            return JobOutcome(
                None,
                True,
                duration_ms,
                log,
                f"no Complete or Failed condition {timeout_s + CLIENT_GRACE_S:g}s after the Job was created",
            )
        if end == "gone":
            return JobOutcome(None, False, duration_ms, log, "the Job was deleted before it finished")
        assert finished is not None
        condition = _finished_condition(finished)
        assert condition is not None
        timed_out = condition.get("type") == "Failed" and condition.get("reason") == "DeadlineExceeded"
        exit_code, why = _exit(pod, main)
        reason = None
        if condition.get("type") == "Failed":
            reason = one_line(f"{condition.get('reason') or 'Failed'}: {condition.get('message') or ''}")
            if why:
                reason += f" ({why})"
        elif exit_code is None:
            exit_code = 0  # Complete: its pod succeeded, though the pod is gone now
        return JobOutcome(None if timed_out else exit_code, timed_out, duration_ms, log, reason)
    finally:
        try:
            _delete(batch, namespace, name, "Background")
        except InfrastructureError as exc:  # ttlSecondsAfterFinished and gc remove it later
            logger.warning("%s", exc)


def suite_outcome(outcome: JobOutcome, nonce: str) -> SuiteOutcome:
    """The Runtime protocol's outcome of a suite Job: the JUnit report carried between the nonce's
    delimiter lines (objects.junit_from_log), and the end of the rest of the log."""
    junit, rest = junit_from_log(outcome.log, nonce)
    notes: list[str] = []
    # A block that was cut out of the log but gave no report decoded to more than JUNIT_MAX_BYTES.
    dropped = junit is None and junit_begin(nonce) in outcome.log and junit_begin(nonce) not in rest
    if dropped or (junit is not None and len(junit) > JUNIT_MAX_BYTES):
        junit = None
        notes.append(f"[loopgate] the JUnit report is over {JUNIT_MAX_BYTES // (1024 * 1024)} MiB: ignored")
    if outcome.reason:
        notes.append(f"[loopgate] {outcome.reason}")
    return SuiteOutcome(
        exit_code=outcome.exit_code,
        timed_out=outcome.timed_out,
        duration_ms=outcome.duration_ms,
        junit_xml=junit,
        log_tail="\n".join([t for t in [tail(rest), *notes] if t]),
    )


# ------------------------------------------------------------------------------------------- helpers


def _create(batch: Any, namespace: str, name: str, job: Obj, *, again: bool = True) -> Obj:
    try:
        return as_obj(
            batch.create_namespaced_job(
                namespace, job, _preload_content=False, _request_timeout=API_TIMEOUT_S
            )
        )
    except ApiException as exc:
        if exc.status == 409 and again and _wait_deleting(batch, namespace, name):
            return _create(batch, namespace, name, job, again=False)
        what = "refused (invalid)" if exc.status == 422 else f"refused ({exc.status})"
        raise InfrastructureError(
            f"the API server {what} Job {namespace}/{name}: {api_message(exc)}"
        ) from None
    except _TRANSIENT as exc:
        raise InfrastructureError(f"cannot create Job {namespace}/{name}: {one_line(str(exc))}") from None


def _wait_deleting(batch: Any, namespace: str, name: str) -> bool:
    """A same-named Job exists: True once it is gone, when it was already being deleted (a previous
    run's, stopped); False when it is live (someone else's: not ours to touch)."""
    try:
        existing = as_obj(batch.read_namespaced_job(name, namespace, _preload_content=False))
    except ApiException as exc:
        return bool(exc.status == 404)
    if not existing["metadata"].get("deletionTimestamp"):
        return False
    watched = _Watched(batch, namespace, name, str(existing["metadata"].get("resourceVersion") or ""))
    return watched.until_gone(time.monotonic() + STOP_WAIT_S)


def _delete(batch: Any, namespace: str, name: str, propagation: str) -> None:
    try:
        response = batch.delete_namespaced_job(
            name,
            namespace,
            propagation_policy=propagation,
            _preload_content=False,
            _request_timeout=API_TIMEOUT_S,
        )
        # Read before releasing: a connection handed back with its answer unread is reused by the next
        # request, which then fails with ResponseNotReady.
        _ = response.data
        response.release_conn()
    except ApiException as exc:
        if exc.status != 404:
            raise InfrastructureError(f"cannot delete Job {namespace}/{name}: {api_message(exc)}") from None
    except _TRANSIENT as exc:
        raise InfrastructureError(f"cannot delete Job {namespace}/{name}: {one_line(str(exc))}") from None


def _job_pod(api: kubernetes.client.ApiClient, namespace: str, name: str, uid: str, main: str) -> Obj | None:
    """The Job's pod (the last one created, if it retried), found by its `job-name` label and owner."""
    core = kubernetes.client.CoreV1Api(api)
    try:
        listed = as_obj(
            core.list_namespaced_pod(
                namespace,
                label_selector=f"job-name={name}",
                _preload_content=False,
                _request_timeout=API_TIMEOUT_S,
            )
        )
    except ApiException as exc:
        raise InfrastructureError(
            f"cannot list the pods of Job {namespace}/{name}: {api_message(exc)}"
        ) from None
    except _TRANSIENT as exc:
        raise InfrastructureError(
            f"cannot list the pods of Job {namespace}/{name}: {one_line(str(exc))}"
        ) from None
    pods = [
        p
        for p in listed.get("items") or []
        if isinstance(p, dict)
        and (not uid or any(ref.get("uid") == uid for ref in p["metadata"].get("ownerReferences") or []))
    ]
    if not pods:
        return None
    return max(
        pods, key=lambda p: (_terminated(p, main) is not None, str(p["metadata"].get("creationTimestamp")))
    )


def _main_state(pod: Obj | None, main: str, which: str) -> Obj | None:
    """The main container's `terminated` or `waiting` state, when its status has one."""
    for status in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        if isinstance(status, dict) and status.get("name") == main:
            state = (status.get("state") or {}).get(which)
            return state if isinstance(state, dict) else None
    return None


def _terminated(pod: Obj, main: str) -> Obj | None:
    return _main_state(pod, main, "terminated")


def _exit(pod: Obj | None, main: str) -> tuple[int | None, str | None]:
    """The main container's exit code, and a word on it (OOMKilled, still waiting: ImagePullBackOff)."""
    if pod is None:
        return None, "the Job's pod is gone"
    terminated = _terminated(pod, main)
    if terminated is not None:
        code = terminated.get("exitCode")
        why = terminated.get("reason")
        why = f"{why}: {terminated.get('message')}" if why and terminated.get("message") else why
        return (code if isinstance(code, int) else None), (
            one_line(str(why)) if why and why != "Completed" and why != "Error" else None
        )
    waiting = _main_state(pod, main, "waiting") or {}
    if waiting.get("reason"):
        return None, one_line(f"container {waiting['reason']}: {waiting.get('message') or ''}")
    return None, f"the pod never ran (phase {(pod.get('status') or {}).get('phase') or 'unknown'})"


def _stuck(pod: Obj | None, main: str) -> tuple[str, str] | None:
    """(reason, `Reason: message`) when the main container waits for something that will not come by
    itself."""
    waiting = _main_state(pod, main, "waiting") or {}
    if waiting.get("reason") in _STUCK:
        reason = str(waiting["reason"])
        # ErrImagePull and ImagePullBackOff alternate: one problem, named once.
        reason = "ImagePullBackOff" if reason == "ErrImagePull" else reason
        return reason, one_line(f"{waiting['reason']}: {waiting.get('message') or ''}".rstrip(": "))
    return None
