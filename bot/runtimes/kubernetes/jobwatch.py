"""One Job watched by name until it finishes or is gone: never polled, in short windows so `should_stop`
is honoured within a couple of seconds; a watch that ends is resumed, one whose resourceVersion expired
(410 Gone) is replaced by a fresh list.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import kubernetes.client
import kubernetes.watch
from kubernetes.client.exceptions import ApiException

from bot.config import InfrastructureError
from bot.runtimes.kubernetes.rawapi import _TRANSIENT, API_TIMEOUT_S, Obj, api_message, as_obj, one_line

WATCH_WINDOW_S = 2
"""Server-side length of one watch request: the longest `should_stop` waits to be looked at."""

_MAX_WATCH_ERRORS = 6


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
