"""Timing every stage into the Evidence, whatever way the stage ends.

Stages may overlap (the baseline starts while the builds run, each on its own thread): each is
recorded when it ends, in the order the stages started, so the Evidence reads the same whichever ended
first."""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

from bot.evidence import Evidence, Stage, utcnow

Outcome = Literal["ok", "failed", "skipped", "error", "cancelled"]
StageListener = Callable[[str, str], None]
"""Called with (stage name, "started" | outcome): how the CLI shows progress without the pipeline
knowing about terminals."""


class Cancelled(Exception):
    """The caller asked the run to stop (a newer push superseded it, its branch was deleted)."""


class StageRecorder:
    def __init__(self, evidence: Evidence, listener: StageListener | None = None) -> None:
        self.evidence = evidence
        self.listener = listener or (lambda _name, _event: None)
        self.lock = threading.Lock()

    @contextmanager
    def stage(self, name: str) -> Iterator[StageResult]:
        result = StageResult()
        started_at, started = utcnow(), time.monotonic()
        self.listener(name, "started")
        try:
            yield result
        except (KeyboardInterrupt, Cancelled):
            result.outcome = "cancelled"
            raise
        except BaseException:
            result.outcome = "error"
            raise
        finally:
            self._add(
                Stage(
                    name=name,
                    started_at=started_at,
                    duration_ms=int((time.monotonic() - started) * 1000),
                    outcome=result.outcome,
                    detail=result.detail,
                )
            )
            self.listener(name, result.outcome)

    def skipped(self, name: str, detail: str) -> None:
        self._add(Stage(name=name, started_at=utcnow(), duration_ms=0, outcome="skipped", detail=detail))
        self.listener(name, "skipped")

    def _add(self, stage: Stage) -> None:
        with self.lock:
            stages = self.evidence.stages
            stages.insert(bisect.bisect_right([s.started_at for s in stages], stage.started_at), stage)


class StageResult:
    def __init__(self) -> None:
        self.outcome: Outcome = "ok"
        self.detail: str | None = None
