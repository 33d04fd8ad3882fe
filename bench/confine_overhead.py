"""What confinement costs: `loopgate demo` to a verdict with LOOPGATE_CONFINE=on vs off, side by side.

    .venv/bin/python -m bench.confine_overhead --runs 3

Each run is a whole demo as a user starts it (its own throwaway repository, its own baseline, build,
fork, suites, teardown) in a fresh temporary state dir. Runs alternate on/off and which side goes
first flips every round, so drift on a shared machine hits both sides alike. It prints the median
wall time to the verdict per side, the growth, and the median of each stage from the Evidence. It
always exits 0: it is a measurement, not a test.
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
from pathlib import Path

LOOPGATE = Path(sys.executable).parent / "loopgate"
TARGET_GROWTH = 0.10


def run_demo(confine: str, change: str) -> tuple[float, dict[str, int], str]:
    """Seconds to the verdict, stage durations (ms) and the verdict of one demo."""
    with tempfile.TemporaryDirectory(prefix="lg-bench-confine-") as scratch:
        out = Path(scratch) / "evidence.json"
        env = {**os.environ, "LOOPGATE_CONFINE": confine, "LOOPGATE_STATE_DIR": str(Path(scratch) / "state")}
        started = time.perf_counter()
        done = subprocess.run(
            [str(LOOPGATE), "demo", "--change", change, "--json", str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        elapsed = time.perf_counter() - started
        if not out.exists():
            raise SystemExit(f"demo with confine={confine} wrote no evidence:\n{done.stdout}{done.stderr}")
        evidence = json.loads(out.read_text())
    stages = {s["name"]: int(s["duration_ms"]) for s in evidence["stages"]}
    return elapsed, stages, str(evidence["verdict"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="demos per side")
    parser.add_argument("--change", default="refactor-orders", help="the example change to verify")
    opts = parser.parse_args()
    seconds: dict[str, list[float]] = {"on": [], "off": []}
    stages: dict[str, list[dict[str, int]]] = {"on": [], "off": []}
    for round_ in range(opts.runs):
        order = ("on", "off") if round_ % 2 == 0 else ("off", "on")
        for side in order:
            elapsed, by_stage, verdict = run_demo(side, opts.change)
            seconds[side].append(elapsed)
            stages[side].append(by_stage)
            print(f"round {round_ + 1} confine={side:<3} {elapsed:6.2f} s  verdict {verdict}", flush=True)
    on, off = statistics.median(seconds["on"]), statistics.median(seconds["off"])
    growth = on / off - 1
    print()
    print(f"median time to verdict: confine on {on:.2f} s, off {off:.2f} s, growth {growth:+.1%}"
          f" (target <= {TARGET_GROWTH:.0%}: {'met' if growth <= TARGET_GROWTH else 'NOT met'})")
    names = list(stages["on"][0])
    print(f"{'stage':<10} {'on ms':>8} {'off ms':>8}")
    for name in names:
        med = {side: statistics.median(s.get(name, 0) for s in stages[side]) for side in ("on", "off")}
        print(f"{name:<10} {med['on']:>8.0f} {med['off']:>8.0f}")


if __name__ == "__main__":
    main()
