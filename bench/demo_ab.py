"""Two ways of running the same verify, alternated round by round (which side goes first flips every
round, so drift on a shared machine hits both alike), each run in a fresh state dir: its own baseline,
build, fork, suites and teardown, as a user's first run."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

LOOPGATE = Path(sys.executable).parent / "loopgate"


@dataclass
class Run:
    wall_s: float
    stages: dict[str, int]
    verdict: str
    to_verdict_s: float
    """From the run's start to its verdict (`finished_at`, stamped before teardown)."""


@dataclass
class Side:
    name: str
    argv: Callable[[Path], list[str]]
    """The loopgate command line, given where to write the Evidence."""
    env: dict[str, str] = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)

    def median(self, metric: Callable[[Run], float]) -> float:
        return statistics.median(metric(run) for run in self.runs)


def run_once(side: Side) -> Run:
    with tempfile.TemporaryDirectory(prefix="lg-bench-ab-") as scratch:
        out = Path(scratch) / "evidence.json"
        env = {**os.environ, **side.env, "LOOPGATE_STATE_DIR": str(Path(scratch) / "state")}
        # The example's services run `python`: this interpreter's, as `loopgate demo` arranges.
        env["PATH"] = f"{LOOPGATE.parent}{os.pathsep}{env.get('PATH', '')}"
        started = time.perf_counter()
        done = subprocess.run(
            [str(LOOPGATE), *side.argv(out)], env=env, capture_output=True, text=True, timeout=900
        )
        elapsed = time.perf_counter() - started
        if not out.exists():
            raise SystemExit(f"{side.name}: no evidence written:\n{done.stdout}{done.stderr}")
        evidence = json.loads(out.read_text())
        if evidence["verdict"] == "error":
            raise SystemExit(f"{side.name}: verdict error: {'; '.join(evidence['reasons'])}")
    stages = {s["name"]: int(s["duration_ms"]) for s in evidence["stages"]}
    began, decided = (datetime.fromisoformat(evidence[k]) for k in ("started_at", "finished_at"))
    return Run(elapsed, stages, str(evidence["verdict"]), (decided - began).total_seconds())


def alternate(sides: Sequence[Side], rounds: int) -> None:
    for round_ in range(rounds):
        order = sides if round_ % 2 == 0 else list(reversed(sides))
        for side in order:
            run = run_once(side)
            side.runs.append(run)
            print(
                f"round {round_ + 1} {side.name:<12} to verdict {run.to_verdict_s:6.2f} s,"
                f" wall {run.wall_s:6.2f} s, verdict {run.verdict}",
                flush=True,
            )


def print_stages(sides: Sequence[Side]) -> None:
    names = list(dict.fromkeys(name for side in sides for run in side.runs for name in run.stages))
    print(f"{'stage (median ms)':<18}" + "".join(f"{side.name:>14}" for side in sides))
    for name in names:
        cells = "".join(f"{_stage_median(side, name):>14.0f}" for side in sides)
        print(f"{name:<18}{cells}")


def _stage_median(side: Side, name: str) -> float:
    return statistics.median(run.stages.get(name, 0) for run in side.runs)
