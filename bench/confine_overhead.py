"""What confinement costs: `loopgate demo` with LOOPGATE_CONFINE=on vs off, side by side.

    .venv/bin/python -m bench.confine_overhead --runs 3

Each run is a whole demo as a user starts it (its own throwaway repository, its own baseline, build,
fork, suites, teardown) in a fresh temporary state dir, alternated as bench/demo_ab.py does. It prints
the median time to the verdict and wall time per side, the growth, and the median of each stage from
the Evidence. It always exits 0: it is a measurement, not a test.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.demo_ab import Side, alternate, print_stages

TARGET_GROWTH = 0.10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="demos per side")
    parser.add_argument("--change", default="refactor-orders", help="the example change to verify")
    opts = parser.parse_args()

    def demo(out: Path) -> list[str]:
        return ["demo", "--change", opts.change, "--json", str(out)]

    sides = [Side(f"confine {mode}", demo, {"LOOPGATE_CONFINE": mode}) for mode in ("on", "off")]
    alternate(sides, opts.runs)
    (on, off), (wall_on, wall_off) = (
        [side.median(metric) for side in sides] for metric in (lambda r: r.to_verdict_s, lambda r: r.wall_s)
    )
    growth = on / off - 1
    print()
    print(
        f"median time to verdict: confine on {on:.2f} s, off {off:.2f} s, growth {growth:+.1%}"
        f" (target <= {TARGET_GROWTH:.0%}: {'met' if growth <= TARGET_GROWTH else 'NOT met'});"
        f" wall {wall_on:.2f} s / {wall_off:.2f} s"
    )
    print_stages(sides)


if __name__ == "__main__":
    main()
