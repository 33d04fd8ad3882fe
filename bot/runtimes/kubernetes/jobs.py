"""One Job run to completion: create it, watch it finish, read its pod's log, delete it.

Suites (and Kaniko builds, `builds.py`) run as Jobs. Completion is watched, never polled: a watch on the
Job alone (`metadata.name` field selector) from the resourceVersion of its creation, in short windows so
`should_stop` is honoured within a couple of seconds; a watch that ends is resumed, one whose
resourceVersion expired (410 Gone) is replaced by a fresh list. The Job's own `activeDeadlineSeconds`
is the timeout (condition `Failed`, reason `DeadlineExceeded`); the client gives up a grace period later
in case the cluster never says so.

The official client is untyped: every response is read as raw JSON (`_preload_content=False`) into
plain dicts here, so `Any` stays at this boundary. (Raw JSON also because the client's own decoding of a
pod log parses it as JSON first: a log that is one JSON object came back as its Python repr.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import kubernetes.client
import kubernetes.watch
import urllib3
from kubernetes.client.exceptions import ApiException

from bot.config import InfrastructureError
from bot.runtimes.kubernetes.objects import junit_begin, junit_end, junit_from_log
from bot.runtimes.protocol import JUNIT_MAX_BYTES, SuiteOutcome

Obj = dict[str, Any]

logger = logging.getLogger(__name__)

WATCH_WINDOW_S = 2
"""Server-side length of one watch request: the longest `should_stop` waits to be looked at."""

CLIENT_GRACE_S = 60.0
"""How long after the suite's timeout the client stops waiting for the cluster's own DeadlineExceeded
(a Job's deadline counts from its start, which can lag its creation)."""

STOP_WAIT_S = 45.0
"""After a Foreground delete: how long to wait for the Job (and so its pods) to be gone."""

LOG_LIMIT_BYTES = 100 * 1024 * 1024
"""At most this much of a pod's log is read (the API server's `limitBytes`)."""

TAIL_LINES_FOR_REPORT = 2_000_000
"""When the log is over LOG_LIMIT_BYTES: the last this many lines are read again to find the JUnit
report at its end (a 64 MiB report is about 1.2 million lines of base64)."""

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

API_TIMEOUT_S = 60.0
"""Client-side bound on one ordinary API request."""

TAIL_LINES = 60
TAIL_CHARS = 8_000

_TRANSIENT = (urllib3.exceptions.HTTPError, OSError)
_MAX_WATCH_ERRORS = 6


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


# ------------------------------------------------------------------------------------------ API edge


def as_obj(response: Any) -> Obj:
    """A raw (`_preload_content=False`) response's JSON object."""
    try:
        data = json.loads(response.data)
    finally:
        with contextlib.suppress(Exception):
            response.release_conn()
    if not isinstance(data, dict):
        raise InfrastructureError(f"the API server answered {type(data).__name__}, not an object")
    return cast(Obj, data)


def api_message(exc: ApiException) -> str:
    """The API server's own words for a refusal: its Status message, else the HTTP reason."""
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if isinstance(body, str) and body:
        try:
            status = json.loads(body)
        except ValueError:
            status = None
        if isinstance(status, dict) and isinstance(status.get("message"), str):
            return one_line(status["message"])
        return one_line(body[:500])
    return one_line(f"{exc.status} {exc.reason}")


def one_line(text: str, limit: int = 1000) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def read_pod_log(
    api: kubernetes.client.ApiClient,
    *,
    namespace: str,
    pod: str,
    container: str,
    limit_bytes: int = LOG_LIMIT_BYTES,
    since_seconds: int | None = None,
    tail_lines: int | None = None,
) -> str | None:
    """A container's log as text (undecodable bytes replaced); None when the pod or container is gone
    or has no log yet."""
    core = kubernetes.client.CoreV1Api(api)
    kwargs: dict[str, Any] = {"container": container, "limit_bytes": limit_bytes}
    if since_seconds is not None:
        kwargs["since_seconds"] = since_seconds
    if tail_lines is not None:
        kwargs["tail_lines"] = tail_lines
    try:
        response = core.read_namespaced_pod_log(
            pod, namespace, _preload_content=False, _request_timeout=API_TIMEOUT_S, **kwargs
        )
    except ApiException as exc:
        if exc.status in (400, 404):  # gone, or "container … is waiting to start" / "not valid"
            return None
        raise InfrastructureError(
            f"cannot read the log of pod {namespace}/{pod}: {api_message(exc)}"
        ) from None
    try:
        data = response.data
    finally:
        with contextlib.suppress(Exception):
            response.release_conn()
    if isinstance(data, bytes):
        return data.decode("utf-8", errors="replace")
    return str(data)


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


def tail(text: str, *, lines: int = TAIL_LINES, limit: int = TAIL_CHARS) -> str:
    """The end of a log, bounded in lines and characters (as the local runtime bounds its tails)."""
    return "\n".join(text[-limit:].splitlines()[-lines:])


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


def _finished_condition(job: Obj) -> Obj | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if (
            isinstance(condition, dict)
            and condition.get("type") in ("Complete", "Failed")
            and condition.get("status") == "True"
        ):
            return condition
    return None


class _Watched:
    """One Job, watched by name from a resourceVersion on."""

    def __init__(self, batch: Any, namespace: str, name: str, resource_version: str) -> None:
        self.batch = batch
        self.namespace = namespace
        self.name = name
        self.rv = resource_version
        self.selector = f"metadata.name={name}"
        self._pause = threading.Event()  # never set: a stoppable wait between failed watch requests

    def until_finished(
        self,
        deadline: float,
        should_stop: Callable[[], bool] | None,
        between: Callable[[float], bool] | None = None,
    ) -> tuple[str, Obj | None]:
        """("finished", job) | ("stopped", None) | ("deadline", None) | ("gone", None) | ("blocked",
        None); `between(now)` is called between watch windows, True from it ends the wait ("blocked")."""
        for type_, job in self._events(deadline, should_stop, between):
            if type_ in ("stopped", "deadline", "blocked"):
                return type_, None
            if type_ == "DELETED" or job is None:
                return "gone", None
            if _finished_condition(job) is not None:
                return "finished", job
        return "deadline", None

    def until_gone(self, deadline: float) -> bool:
        """True once the Job no longer exists; False at `deadline`."""
        for type_, job in self._events(deadline, None):
            if type_ == "deadline":
                return False
            if type_ == "DELETED" or job is None:
                return True
        return False

    def _events(
        self,
        deadline: float,
        should_stop: Callable[[], bool] | None,
        between: Callable[[float], bool] | None = None,
    ) -> Iterator[tuple[str, Obj | None]]:
        """(event type, the Job) as it changes; ("LISTED", job or None) after a re-list; ("stopped",
        None) or ("deadline", None) last. A watch that ends is resumed from the last resourceVersion."""
        errors = 0
        relist = not self.rv
        while True:
            if between is not None and between(time.monotonic()):
                yield "blocked", None
                return
            if should_stop is not None and should_stop():
                yield "stopped", None
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                yield "deadline", None
                return
            try:
                if relist:
                    listed = as_obj(
                        self.batch.list_namespaced_job(
                            self.namespace,
                            field_selector=self.selector,
                            _preload_content=False,
                            _request_timeout=API_TIMEOUT_S,
                        )
                    )
                    self.rv = str((listed.get("metadata") or {}).get("resourceVersion") or "")
                    items = [i for i in listed.get("items") or [] if isinstance(i, dict)]
                    relist = False
                    yield "LISTED", (items[0] if items else None)
                    continue
                window = max(1, min(WATCH_WINDOW_S, math.ceil(remaining)))
                opened, events = time.monotonic(), 0
                stream = kubernetes.watch.Watch().stream(
                    self.batch.list_namespaced_job,
                    self.namespace,
                    field_selector=self.selector,
                    resource_version=self.rv,
                    timeout_seconds=window,
                    allow_watch_bookmarks=True,
                    _request_timeout=(API_TIMEOUT_S, window + 15),
                )
                try:
                    for event in stream:
                        events += 1
                        # `raw_object`: the JSON as sent (the client's model of it is not used). Not
                        # `deserialize=False`: on that path the client fails on an ERROR event (410).
                        if not isinstance(event, dict) or not isinstance(event.get("raw_object"), dict):
                            continue
                        type_, obj = str(event.get("type")), cast(Obj, event["raw_object"])
                        rv = (obj.get("metadata") or {}).get("resourceVersion")
                        if rv:
                            self.rv = str(rv)
                        if type_ in ("ADDED", "MODIFIED", "DELETED"):
                            yield type_, obj
                        if should_stop is not None and should_stop():
                            break
                finally:
                    stream.close()  # the watch's connection, also when the caller stops listening
                errors = 0
                if not events and time.monotonic() - opened < window / 2:
                    # A server that ends watches at once must not turn this into a tight poll.
                    self._pause.wait(min(window / 2, max(0.0, deadline - time.monotonic())))
            except ApiException as exc:
                errors += 1
                if exc.status == 410 and errors < _MAX_WATCH_ERRORS:
                    relist = True  # the resourceVersion expired: list afresh, watch from there
                    continue
                if exc.status in (401, 403, 404) or errors >= _MAX_WATCH_ERRORS:
                    raise InfrastructureError(
                        f"cannot watch Job {self.namespace}/{self.name}: {api_message(exc)}"
                    ) from None
                relist = True
                self._pause.wait(min(0.25 * 2**errors, 5.0))
            except (*_TRANSIENT, ValueError) as exc:
                errors += 1
                if errors >= _MAX_WATCH_ERRORS:
                    raise InfrastructureError(
                        f"lost the API server watching Job {self.namespace}/{self.name}: {one_line(str(exc))}"
                    ) from None
                relist = True
                self._pause.wait(min(0.25 * 2**errors, 5.0))


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


def _terminated(pod: Obj, main: str) -> Obj | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if isinstance(status, dict) and status.get("name") == main:
            terminated = (status.get("state") or {}).get("terminated")
            return terminated if isinstance(terminated, dict) else None
    return None


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
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if isinstance(status, dict) and status.get("name") == main:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason"):
                return None, one_line(f"container {waiting['reason']}: {waiting.get('message') or ''}")
    return None, f"the pod never ran (phase {(pod.get('status') or {}).get('phase') or 'unknown'})"


def _stuck(pod: Obj | None, main: str) -> tuple[str, str] | None:
    """(reason, `Reason: message`) when the main container waits for something that will not come by
    itself."""
    for status in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        if isinstance(status, dict) and status.get("name") == main:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if isinstance(waiting, dict) and waiting.get("reason") in _STUCK:
                reason = str(waiting["reason"])
                # ErrImagePull and ImagePullBackOff alternate: one problem, named once.
                reason = "ImagePullBackOff" if reason == "ErrImagePull" else reason
                return reason, one_line(f"{waiting['reason']}: {waiting.get('message') or ''}".rstrip(": "))
    return None


def _pod_log(
    api: kubernetes.client.ApiClient, namespace: str, pod: Obj, container: str, nonce: str | None
) -> str:
    name = str(pod["metadata"]["name"])
    try:
        log = read_pod_log(api, namespace=namespace, pod=name, container=container)
    except InfrastructureError:
        return ""
    if log is None:
        return ""
    end = junit_end(nonce) if nonce else None
    if len(log.encode("utf-8", errors="replace")) >= LOG_LIMIT_BYTES and end and end not in log:
        # The test output filled the limit before the report: read the end of the log instead.
        with contextlib.suppress(InfrastructureError):
            ending = read_pod_log(
                api, namespace=namespace, pod=name, container=container, tail_lines=TAIL_LINES_FOR_REPORT
            )
            if ending and end in ending:
                return "[loopgate] the log is over 100 MiB: only its end was read\n" + ending
    return log
