"""What the control forks cost: the demo's time to verdict with `verify.diff.control` on vs off.

    .venv/bin/python -m bench.control_overhead --runs 3 --change refactor-orders

The same throwaway repository of the example shop twice, identical but for `control: false` in the
off side's `.loopgate.yml`; each run is `loopgate verify` in a fresh state dir (bench/demo_ab.py).
Target (#11): time to verdict grows by at most 30 % with the controls on. Exits 0: a measurement.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from functools import partial
from pathlib import Path

from bench.demo_ab import Side, alternate, print_stages
from bot.cli.output import EXAMPLES
from bot.cli.verify import make_demo_repo

TARGET_GROWTH = 0.30
CONTROL_OFF = "verify:\n  diff:\n    control: false\n"


def repository(where: Path, change: str, control: bool) -> tuple[Path, str]:
    example = where / "example"
    shutil.copytree(EXAMPLES, example, ignore=shutil.ignore_patterns("__pycache__", "*.db"))
    if not control:
        config = example / ".loopgate.yml"
        text = config.read_text()
        assert "\nverify:\n" in text and "\n  diff:" not in text, "the shop's verify section changed"
        config.write_text(text.replace("\nverify:\n", "\n" + CONTROL_OFF, 1))
    repo = where / "repo"
    return repo, make_demo_repo(repo, change, example)


def with_json(argv: list[str], out: Path) -> list[str]:
    return [*argv, "--json", str(out)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per side")
    parser.add_argument("--change", default="refactor-orders", help="the example change to verify")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lg-bench-control-") as scratch:
        sides = []
        for name, control in (("control on", True), ("control off", False)):
            repo, base = repository(Path(scratch) / name.replace(" ", "-"), opts.change, control)
            argv = ["verify", "--repo", str(repo), "--base", base, "--head", f"agent/{opts.change}"]
            sides.append(Side(name, partial(with_json, argv)))
        alternate(sides, opts.runs)
    on, off = (side.median(lambda r: r.to_verdict_s) for side in sides)
    growth = on / off - 1
    print()
    print(
        f"median time to verdict ({opts.change}): control on {on:.2f} s, off {off:.2f} s,"
        f" growth {growth:+.1%} (target <= {TARGET_GROWTH:.0%}:"
        f" {'met' if growth <= TARGET_GROWTH else 'NOT met'})"
    )
    print_stages(sides)


if __name__ == "__main__":
    main()
