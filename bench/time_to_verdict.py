"""Time to verdict split into the services' own work and loopgate's own overhead (issue #13).

    .venv/bin/python -m bench.time_to_verdict --runs 5 --change refactor-orders

Each round verifies the example change twice on one fresh state dir: first with a cold baseline (a
user's first run), then, after `loopgate env up`, on a warm one (the App's normal case: it keeps a
baseline per base commit). From each run's Evidence:

- the services' own work: the baseline stage when it was cold (the services' and Envoy's start and the
  seed), the build stage (the team's build commands), the slowest fork's start to healthy
  (`services[].ready_ms`), and the suites' own durations on the candidate (`suites[].duration_ms`);
- loopgate's overhead: every other millisecond from the run's start to its verdict (planning, worktrees
  and copies, routes, waiting for the controls' suites, reading the access log, the diffs, contract
  probes), gaps between stages included;
- teardown, which follows the verdict.

Target: overhead <= 300 ms, teardown <= 1 s. Exits 0: a measurement, not a test.
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
from datetime import datetime
from pathlib import Path
from typing import Any

from bot.cli.verify import make_demo_repo

LOOPGATE = Path(sys.executable).parent / "loopgate"
OVERHEAD_TARGET_MS = 300
TEARDOWN_TARGET_MS = 1000


def to_verdict_ms(evidence: dict[str, Any]) -> int:
    """From the run's start to its verdict: `finished_at` is stamped when the verdict is reported,
    before teardown; gaps between stages count too."""
    started, finished = (datetime.fromisoformat(evidence[k]) for k in ("started_at", "finished_at"))
    return int((finished - started).total_seconds() * 1000)


def split(evidence: dict[str, Any], cold: bool) -> dict[str, int]:
    stages = {s["name"]: int(s["duration_ms"]) for s in evidence["stages"]}
    to_verdict = to_verdict_ms(evidence)
    forks = [int(s["ready_ms"] or 0) for s in evidence["services"] if s["forked"]]
    suites = sum(int(s["duration_ms"]) for s in evidence["suites"])
    own = (stages.get("baseline", 0) if cold else 0) + stages.get("build", 0) + max(forks, default=0) + suites
    return {
        "to_verdict": to_verdict,
        "services_own": own,
        "overhead": to_verdict - own,
        "baseline": stages.get("baseline", 0),
        "fork_ready": max(forks, default=0),
        "suites": suites,
        "verify_stage": stages.get("verify", 0),
        "teardown": stages.get("teardown", 0),
    }


def verify(repo: Path, base: str, change: str, state: Path) -> dict[str, Any]:
    out = state.parent / "evidence.json"
    env = {**os.environ, "LOOPGATE_STATE_DIR": str(state)}
    env["PATH"] = f"{LOOPGATE.parent}{os.pathsep}{env.get('PATH', '')}"
    argv = [str(LOOPGATE), "verify", "--repo", str(repo), "--base", base, "--head", f"agent/{change}"]
    done = subprocess.run([*argv, "--json", str(out)], env=env, capture_output=True, text=True, timeout=900)
    evidence: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    if evidence.get("verdict") in (None, "error"):
        raise SystemExit(f"verify ended without a verdict: {evidence.get('reasons')}\n{done.stderr[-2000:]}")
    return evidence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds (each: one cold, one warm verify)")
    parser.add_argument("--change", default="refactor-orders")
    opts = parser.parse_args()
    rows: dict[str, list[dict[str, int]]] = {"cold": [], "warm": []}
    for round_ in range(opts.runs):
        with tempfile.TemporaryDirectory(prefix="lg-bench-ttv-") as scratch:
            repo = Path(scratch) / "repo"
            base = make_demo_repo(repo, opts.change)
            state = Path(scratch) / "state"
            env = {**os.environ, "LOOPGATE_STATE_DIR": str(state)}
            env["PATH"] = f"{LOOPGATE.parent}{os.pathsep}{env.get('PATH', '')}"
            try:
                for kind in ("cold", "warm"):
                    if kind == "warm":  # a kept baseline, as the App keeps one per base commit
                        up = [str(LOOPGATE), "env", "up", "--repo", str(repo), "--base", base]
                        subprocess.run(up, env=env, capture_output=True, timeout=300, check=True)
                    started = time.perf_counter()
                    evidence = verify(repo, base, opts.change, state)
                    row = split(evidence, cold=kind == "cold")
                    rows[kind].append(row)
                    print(
                        f"round {round_ + 1} {kind}: to verdict {row['to_verdict']} ms = services' own"
                        f" {row['services_own']} + loopgate {row['overhead']}; teardown {row['teardown']} ms;"
                        f" wall {time.perf_counter() - started:.2f} s; verdict {evidence['verdict']}",
                        flush=True,
                    )
            finally:
                down = [str(LOOPGATE), "env", "down", "--all"]
                subprocess.run(down, env=env, capture_output=True, timeout=120)
    print()
    names = list(rows["cold"][0])
    print(f"{'median ms':<14}" + "".join(f"{n:>14}" for n in names))
    for kind, runs in rows.items():
        cells = "".join(f"{statistics.median(r[n] for r in runs):>14.0f}" for n in names)
        print(f"{kind:<14}{cells}")
    for kind, runs in rows.items():
        overhead = statistics.median(r["overhead"] for r in runs)
        teardown = statistics.median(r["teardown"] for r in runs)
        print(
            f"{kind}: loopgate overhead {overhead:.0f} ms (target <= {OVERHEAD_TARGET_MS}:"
            f" {'met' if overhead <= OVERHEAD_TARGET_MS else 'NOT met'}), teardown {teardown:.0f} ms"
            f" (target <= {TEARDOWN_TARGET_MS}: {'met' if teardown <= TEARDOWN_TARGET_MS else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
