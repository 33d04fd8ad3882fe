"""`loopgate sandbox update` after a one-line fix vs the service's own cold start, side by side.

    .venv/bin/python -m bench.sandbox_update --runs 7

On a fresh copy of the example shop (its own state dir and baseline), a sandbox is created from the
working tree with the orders service changed. Each round then measures, in alternating order:

- cold start: `uvicorn orders_app:app` started alone, unconfined, in the shop's checkout, until its
  `/healthz` answers (polled every 5 ms): the service's own start-up, nothing of loopgate's;
- update until routable: one line of orders_app.py changes in the working tree (the generation a
  bench route returns), then `sandbox update` runs (snapshot, plan, checkout, confined start, health,
  route switch) while the bench polls orders through Envoy with the sandbox's baggage every 5 ms until
  the new generation answers. Every answer in between is checked: one from the baseline (a 404 for the
  bench route) would be a window where tagged traffic left the sandbox.

It prints each round, the medians, their difference and ratio, the median of the per-round
differences, and whether the target (routable within the cold start + 0.2 s) is met. It always exits
0: it is a measurement, not a test. The shop's services run `python`: run it with the venv's `bin`
first on PATH (`PATH=.venv/bin:$PATH`), as `make` does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bot.runtimes.local.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
SHOP = ROOT / "examples" / "shop"
ORDERS = Path("services/orders/orders_app.py")
TARGET_OVERHEAD_S = 0.2
ROUTE = """

@app.get("/bench-generation")
async def bench_generation() -> dict[str, int]:
    return {{"generation": {generation}}}
"""
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "b@b",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "b@b",
}


def make_repo(path: Path) -> None:
    shutil.copytree(
        SHOP, path, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.db", "changes")
    )
    env = {**os.environ, **GIT_ENV}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "shop"]):
        subprocess.run(["git", *args], cwd=path, check=True, env=env)


def write_generation(repo: Path, base_text: str, generation: int) -> None:
    (repo / ORDERS).write_text(base_text + ROUTE.format(generation=generation))


def cold_start(repo: Path, scratch: Path) -> float:
    """Seconds from spawn to the first 2xx of /healthz, for orders alone."""
    port = free_port()
    env = {
        **os.environ,
        "LOOPGATE_STATE": str(scratch / f"cold-{port}.db"),
        "LOOPGATE_INVENTORY_URL": "http://127.0.0.1:9",
        "LOOPGATE_PAYMENTS_URL": "http://127.0.0.1:9",
    }
    command = [sys.executable, "-m", "uvicorn", "orders_app:app", "--host", "127.0.0.1", "--port", str(port)]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=repo / "services/orders", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        with httpx.Client(timeout=1) as client:
            while True:
                try:
                    if client.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                        return time.perf_counter() - started
                except httpx.HTTPError:
                    pass
                if process.poll() is not None:
                    raise SystemExit("orders exited during its cold start")
                time.sleep(0.005)
    finally:
        process.terminate()
        process.wait(timeout=10)


def update_until_routable(key: str, repo: Path, entry: str, generation: int) -> tuple[float, float, int]:
    """(seconds until the new generation answers tagged requests, seconds until update returned,
    answers from the baseline meanwhile)."""
    from bot.cli import sandbox

    done: dict[str, object] = {}

    def update() -> None:
        try:
            done["result"] = sandbox.update(key, worktree=repo)
        except Exception as exc:  # reported below
            done["error"] = exc
        done["at"] = time.perf_counter()

    baseline_answers = 0
    headers = {"baggage": f"loopgate-sandbox={key}"}
    started = time.perf_counter()
    thread = threading.Thread(target=update)
    thread.start()
    with httpx.Client(timeout=2) as client:
        while True:
            try:
                answer = client.get(f"{entry}/bench-generation", headers=headers)
                if answer.status_code == 200 and answer.json().get("generation") == generation:
                    routable = time.perf_counter() - started
                    break
                if answer.status_code == 404:
                    baseline_answers += 1
            except httpx.HTTPError:
                pass
            if "error" in done:
                raise SystemExit(f"update failed: {done['error']}")
            if time.perf_counter() - started > 60:
                raise SystemExit("the new generation never answered")
            time.sleep(0.005)
    thread.join()
    returned = float(done["at"]) - started  # type: ignore[arg-type]
    return routable, returned, baseline_answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="rounds (each: one cold start, one update)")
    opts = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="lg-bench-update-"))
    os.environ["LOOPGATE_STATE_DIR"] = str(scratch / "state")
    from bot.cli import sandbox
    from bot.config import RuntimeSettings
    from bot.runtimes.local import LocalRuntime

    repo = scratch / "shop"
    make_repo(repo)
    base_text = (repo / ORDERS).read_text()
    write_generation(repo, base_text, 0)
    runtime = LocalRuntime(RuntimeSettings(state_dir=scratch / "state"))
    try:
        created = sandbox.create(repo, "main", None, repo, None)
        if created.sandbox is None:
            raise SystemExit(f"sandbox create failed: {created.evidence.reasons}")
        key = created.sandbox.routing_key
        entry = created.sandbox.baseline.entry_urls["orders"]
        print(f"sandbox {key} forks orders; confined={runtime.confined}", flush=True)
        cold: list[float] = []
        routable: list[float] = []
        returned: list[float] = []
        leaks = 0
        for round_ in range(1, opts.runs + 1):
            write_generation(repo, base_text, round_)
            order = ("cold", "update") if round_ % 2 else ("update", "cold")
            for side in order:
                if side == "cold":
                    cold.append(cold_start(repo, scratch))
                else:
                    seconds, back, baseline_answers = update_until_routable(key, repo, entry, round_)
                    routable.append(seconds)
                    returned.append(back)
                    leaks += baseline_answers
            print(
                f"round {round_}: cold start {cold[-1]:.3f} s, update routable {routable[-1]:.3f} s"
                f" (+{routable[-1] - cold[-1]:.3f} s, x{routable[-1] / cold[-1]:.2f}),"
                f" update returned {returned[-1]:.3f} s",
                flush=True,
            )
        c, r = statistics.median(cold), statistics.median(routable)
        paired = statistics.median(u - k for u, k in zip(routable, cold, strict=True))
        print()
        print(f"median cold start of orders alone:       {c:.3f} s")
        print(f"median sandbox update until routable:    {r:.3f} s")
        print(f"median sandbox update until it returned: {statistics.median(returned):.3f} s")
        print(
            f"overhead {r - c:+.3f} s, ratio x{r / c:.2f};"
            f" target routable <= cold start + {TARGET_OVERHEAD_S} s:"
            f" {'met' if r - c <= TARGET_OVERHEAD_S else 'NOT met'}"
        )
        print(f"median of the per-round differences (update - cold start): {paired:+.3f} s")
        print(f"tagged answers from the baseline during updates: {leaks}")
        sandbox.delete(key)
    finally:
        for record, _ in runtime.baselines():
            runtime.down(record.env_id)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
