"""Time to verdict split into the services' own work and loopgate's own overhead (issue #13), for the
demo and for the generated 12-service system, with the baseline overlapping the builds and without.

    .venv/bin/python -m bench.time_to_verdict --runs 3 --change refactor-orders

Each round, for each system, verifies the change on one fresh state dir with a cold baseline (a user's
first run), then, after `loopgate env up`, on a warm one (the App's normal case: it keeps a baseline
per base commit). Each of those twice: as loopgate runs now, the baseline starting while the changed
services build (`overlap`), and with `LOOPGATE_OVERLAP=off`, the older order, baseline first, then
builds (`sequential`); which of the two goes first flips every round, so drift on a shared machine hits
both alike. The systems:

- `demo`: the example shop (`loopgate demo`'s change), no build commands;
- `system12`: bench/system.py's 12 FastAPI services, each built with `python -m compileall` (a cheap,
  real build), and its integration suite (one request through all 12 hops, tagged for the sandbox).

From each run's Evidence:

- the services' own work: the union of the cold baseline stage (the services' and Envoy's start, the
  seed) and the build stage (the team's build commands) — their sum when one follows the other, less
  when they overlap — plus the slowest fork's start to healthy (`services[].ready_ms`) and the suites'
  own durations on the candidate (`suites[].duration_ms`);
- loopgate's overhead: every other millisecond from the run's start to its verdict (planning, a warm
  baseline's check, worktrees and copies, routes, waiting for the controls' suites, reading the access
  log, the diffs, contract probes), gaps between stages included;
- teardown, which follows the verdict.

The gain of the overlap, two ways: within each run, the baseline's and the build's stage durations
summed less their union (`overlapped`: what they did not wait for each other, immune to the load
changing between runs), and the difference of the medians of time to verdict, sequential minus
overlap, measured in the same bench run (exposed to that load). Targets: overhead <= 300 ms,
teardown <= 1 s. Exits 0: a measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bench.system import generate
from bot.cli.verify import make_demo_repo

LOOPGATE = Path(sys.executable).parent / "loopgate"
OVERHEAD_TARGET_MS = 300
TEARDOWN_TARGET_MS = 1000
SYSTEMS = ("demo", "system12")
KINDS = ("cold", "warm")
PATHS = ("overlap", "sequential")
BUILD = "python -m compileall -q ."
"""system12's build command for every service."""


def to_verdict_ms(evidence: dict[str, Any]) -> int:
    """From the run's start to its verdict: `finished_at` is stamped when the verdict is reported,
    before teardown; gaps between stages count too."""
    started, finished = (datetime.fromisoformat(evidence[k]) for k in ("started_at", "finished_at"))
    return int((finished - started).total_seconds() * 1000)


def union_ms(spans: list[tuple[datetime, int]]) -> int:
    """The length of the union of (start, duration ms) spans: overlapping stages count once."""
    total, end = 0.0, None
    for start, duration in sorted(spans):
        stop = start + timedelta(milliseconds=duration)
        if end is None or start >= end:
            total += duration
            end = stop
        elif stop > end:
            total += (stop - end).total_seconds() * 1000
            end = stop
    return int(total)


def split(evidence: dict[str, Any], cold: bool) -> dict[str, int]:
    stages = {s["name"]: s for s in evidence["stages"]}

    def span(name: str) -> list[tuple[datetime, int]]:
        found = stages.get(name)
        return [(datetime.fromisoformat(found["started_at"]), int(found["duration_ms"]))] if found else []

    to_verdict = to_verdict_ms(evidence)
    forks = [int(s["ready_ms"] or 0) for s in evidence["services"] if s["forked"]]
    suites = sum(int(s["duration_ms"]) for s in evidence["suites"])
    prepared = union_ms((span("baseline") if cold else []) + span("build"))
    own = prepared + max(forks, default=0) + suites
    ms = {name: int(stage["duration_ms"]) for name, stage in stages.items()}
    both = span("baseline") + span("build")
    return {
        # Within the run, what the baseline and the builds did not wait for each other: their stages'
        # sum less their union (0 in the sequential order). Load between runs does not move it.
        "overlapped": sum(duration for _, duration in both) - union_ms(both),
        "to_verdict": to_verdict,
        "services_own": own,
        "overhead": to_verdict - own,
        "baseline": ms.get("baseline", 0),
        "build": ms.get("build", 0),
        "fork_ready": max(forks, default=0),
        "suites": suites,
        "teardown": ms.get("teardown", 0),
    }


def loopgate_env(state: Path, path: str) -> dict[str, str]:
    env = {**os.environ, "LOOPGATE_STATE_DIR": str(state), "LOOPGATE_OVERLAP": "on"}
    if path == "sequential":
        env["LOOPGATE_OVERLAP"] = "off"
    # The services run `python`: this interpreter's, as `loopgate demo` arranges.
    env["PATH"] = f"{LOOPGATE.parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def verify(repo: Path, base: str, head: str, state: Path, path: str) -> dict[str, Any] | None:
    """The run's Evidence; None, said why, when it ended without a verdict (on a machine loaded enough,
    a seed's or a service's own timeout): the round goes on without that run."""
    out = state.parent / "evidence.json"
    out.unlink(missing_ok=True)
    argv = [str(LOOPGATE), "verify", "--repo", str(repo), "--base", base, "--head", head, "--json", str(out)]
    env = loopgate_env(state, path)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    evidence: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    if evidence.get("verdict") in (None, "error"):
        print(f"  ended without a verdict, left out: {evidence.get('reasons')} {done.stderr[-300:]}")
        return None
    return evidence


@contextmanager
def system_repo(system: str, scratch: Path, change: str) -> Iterator[tuple[Path, str, str]]:
    """(repository, base ref, head ref) of a fresh copy of the system and its change."""
    repo = scratch / "repo"
    if system == "demo":
        yield repo, make_demo_repo(repo, change), f"agent/{change}"
    else:
        generate(repo, build=BUILD)
        yield repo, "main", "change"


def env_cli(state: Path, *args: str) -> None:
    command = [str(LOOPGATE), "env", *args]
    subprocess.run(command, env=loopgate_env(state, "overlap"), capture_output=True, timeout=300, check=True)


def one_round(system: str, change: str, order: tuple[str, ...]) -> dict[tuple[str, str], dict[str, int]]:
    rows: dict[tuple[str, str], dict[str, int]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="lg-bench-ttv-") as scratch,
        system_repo(system, Path(scratch), change) as (repo, base, head),
    ):
        state = Path(scratch) / "state"
        try:
            for kind in KINDS:
                for path in order:
                    if kind == "cold":
                        env_cli(state, "down", "--all")  # each cold run starts its own baseline
                    elif path == order[0]:  # a kept baseline, as the App keeps one per base commit
                        env_cli(state, "up", "--repo", str(repo), "--base", base)
                    started = time.perf_counter()
                    evidence = verify(repo, base, head, state, path)
                    if evidence is None:
                        continue
                    row = rows[(kind, path)] = split(evidence, cold=kind == "cold")
                    print(
                        f"  {system} {kind} {path:<10}: to verdict {row['to_verdict']} ms = services' own"
                        f" {row['services_own']} + loopgate {row['overhead']}; teardown {row['teardown']} ms;"
                        f" wall {time.perf_counter() - started:.2f} s; verdict {evidence['verdict']};"
                        f" load average {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
        finally:
            env_cli(state, "down", "--all")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds (each: cold and warm, both paths)")
    parser.add_argument("--change", default="refactor-orders", help="the demo's change")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated: demo,system12")
    opts = parser.parse_args()
    systems = [s for s in opts.systems.split(",") if s]
    rows: dict[tuple[str, str, str], list[dict[str, int]]] = {}
    for round_ in range(opts.runs):
        order = PATHS if round_ % 2 == 0 else tuple(reversed(PATHS))
        print(f"round {round_ + 1}", flush=True)
        for system in systems:
            for (kind, path), row in one_round(system, opts.change, order).items():
                rows.setdefault((system, kind, path), []).append(row)
    print()
    names = list(next(iter(rows.values()))[0])
    print(f"{'median ms':<28}" + "".join(f"{n:>13}" for n in names))
    for (system, kind, path), runs in rows.items():
        cells = "".join(f"{statistics.median(r[n] for r in runs):>13.0f}" for n in names)
        print(f"{f'{system} {kind} {path}':<28}{cells}")
    print()
    for system in systems:
        for kind in KINDS:
            now, before = rows.get((system, kind, "overlap")), rows.get((system, kind, "sequential"))
            if not now or not before:
                continue
            overhead = statistics.median(r["overhead"] for r in now)
            teardown = statistics.median(r["teardown"] for r in now)
            gain = statistics.median(r["to_verdict"] for r in before) - statistics.median(
                r["to_verdict"] for r in now
            )
            overlapped = statistics.median(r["overlapped"] for r in now)
            print(
                f"{system} {kind}: loopgate overhead {overhead:.0f} ms (target <= {OVERHEAD_TARGET_MS}:"
                f" {'met' if overhead <= OVERHEAD_TARGET_MS else 'NOT met'}), teardown {teardown:.0f} ms"
                f" (target <= {TEARDOWN_TARGET_MS}:"
                f" {'met' if teardown <= TEARDOWN_TARGET_MS else 'NOT met'});"
                f" the overlap: {overlapped:.0f} ms of baseline and build at once within a run, time to"
                f" verdict {gain:.0f} ms shorter than in the sequential order (medians of other runs)"
            )


if __name__ == "__main__":
    main()
