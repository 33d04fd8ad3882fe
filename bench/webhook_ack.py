"""Server CPU per webhook acknowledgement, and ack latency, of `loopgate serve` under a steady stream of
signed pushes; optionally side by side with an earlier revision's code path.

    .venv/bin/python -m bench.webhook_ack [--rate 200] [--seconds 10] [--compare REV] [--rounds 1]
                                          [--event push|pull_request]

The server runs in its own process with LOOPGATE_WORKERS=0 (accept only) on SQLite in a temporary
state dir. A second process sends signed `push` deliveries (or, with `--event pull_request`, pull
requests' new heads, each queueing a run) open-loop at the given rate (a request is sent on schedule
whether or not earlier ones were answered, so a slow server shows up as latency, not as a lower
rate); every tenth delivery is sent twice with the same `X-GitHub-Delivery`, as GitHub redelivers.
The server's CPU time (user + system, psutil) is read after a warm-up and again once every answer is
in: divided by the requests answered, it is the CPU one acknowledgement costs, start-up
excluded. Afterwards the database must hold one queued run per distinct delivery: zero lost, zero
duplicated.

`--compare REV` runs the same load against the `bot` package of git revision REV too (extracted with
`git archive` into a temporary directory, imported ahead of this checkout), alternating which goes
first each round. Prints CPU per acknowledgement against the target (≤ 1 ms) and p50/p99 latency
against its target (p99 ≤ 50 ms); always exits 0.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.measure import machine, percentile
from bot.github.signature import sign
from bot.store import Store

SECRET = "bench-secret"
TARGET_CPU_MS = 1.0
TARGET_P99_MS = 50.0
WARMUP = 200
ROOT = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _push(index: int) -> dict[str, Any]:
    sha = f"{index + 1:040x}"  # never the zero SHA, which means a deleted branch
    return {
        "ref": f"refs/heads/agent/bench-{index}",
        "before": "0" * 40,
        "after": sha,
        "deleted": False,
        "repository": {
            "full_name": "acme/shop",
            "clone_url": "https://github.com/acme/shop.git",
            "default_branch": "main",
        },
        "installation": {"id": 1},
        "head_commit": {"message": f"change {index}"},
    }


def _pull(index: int) -> dict[str, Any]:
    """A pull request's new head, whose commit has no run yet: the webhook queues one."""
    return {
        "action": "synchronize",
        "number": index + 1,
        "pull_request": {
            "head": {
                "ref": f"agent/bench-{index}",
                "sha": f"{index + 1:040x}",
                "repo": {"full_name": "acme/shop"},
            },
            "base": {"ref": "main"},
        },
        "repository": {"full_name": "acme/shop", "clone_url": "https://github.com/acme/shop.git"},
        "installation": {"id": 1},
    }


PAYLOADS = {"push": _push, "pull_request": _pull}


def _send(port: int, event: str, rate: float, total: int, first: int, queue: Any) -> None:
    """Runs in its own process: open-loop sender on kept-alive stdlib connections (an HTTP client
    library's own CPU cost would compete with the server for this machine's two cores)."""
    bodies = [json.dumps(PAYLOADS[event](first + i)).encode() for i in range(total)]
    signatures = [sign(body, SECRET) for body in bodies]
    deliveries = [str(uuid.uuid4()) for _ in range(total)]
    local = threading.local()

    def one(i: int) -> tuple[float, int]:
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": deliveries[i],
            "X-Hub-Signature-256": signatures[i],
            "Content-Type": "application/json",
        }
        started = time.perf_counter()
        local.conn.request("POST", "/webhooks/github", body=bodies[i], headers=headers)
        response = local.conn.getresponse()
        response.read()
        return (time.perf_counter() - started) * 1000, response.status

    start = time.perf_counter()
    futures = []
    with ThreadPoolExecutor(max_workers=32) as pool:
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(one, i))
            if i % 10 == 0:
                futures.append(pool.submit(one, i))  # a redelivery
        results = [f.result() for f in futures]
    queue.put(([r[0] for r in results], [r[1] for r in results]))


def _load(port: int, event: str, rate: float, total: int, first: int) -> tuple[list[float], list[int]]:
    context = multiprocessing.get_context("spawn")
    queue: Any = context.Queue()
    sender = context.Process(target=_send, args=(port, event, rate, total, first, queue))
    sender.start()
    latencies, statuses = queue.get(timeout=total / rate * 10 + 60)
    sender.join()
    return latencies, statuses


@dataclass
class Result:
    label: str
    sent: int
    answered: int
    statuses: list[int]
    latencies: list[float]
    cpu_s: float
    runs: int

    @property
    def cpu_ms_per_ack(self) -> float:
        return self.cpu_s / self.answered * 1000


@contextmanager
def _server(tree: Path, state: Path) -> Any:
    port = _port()
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "LOOPGATE_GITHUB_APP_ID": "1",
        "LOOPGATE_GITHUB_PRIVATE_KEY": "unused: workers are off",
        "LOOPGATE_WEBHOOK_SECRET": SECRET,
        "LOOPGATE_WORKERS": "0",
        "LOOPGATE_STATE_DIR": str(state),
        "LOOPGATE_GITHUB_API_URL": "http://127.0.0.1:9",
    }
    command = [sys.executable, "-m", "bot.cli", "serve", "--port", str(port)]
    server = subprocess.Popen(command, env=env, cwd=tree)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.1)
        yield port, psutil.Process(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)


def measure(label: str, tree: Path, event: str, rate: float, seconds: float) -> Result:
    state = Path(tempfile.mkdtemp(prefix="loopgate-bench-ack-"))
    total = int(rate * seconds)
    try:
        with _server(tree, state) as (port, process):
            _load(port, event, rate, WARMUP, first=0)  # lazy imports, caches, prepared statements
            before = sum(process.cpu_times()[:2])
            latencies, statuses = _load(port, event, rate, total, first=WARMUP)
            cpu = sum(process.cpu_times()[:2]) - before
        with Store.open(None, state_dir=state) as store:
            runs = len(store.find(limit=100_000)) - WARMUP
        return Result(label, total, len(statuses), statuses, latencies, cpu, runs)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def _extract(revision: str) -> Path:
    """The `bot` package of `revision`, in a directory of its own."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision, "bot"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    tree = Path(tempfile.mkdtemp(prefix="loopgate-bench-rev-"))
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def report(result: Result, event: str, rate: float) -> None:
    accepted, duplicates = result.statuses.count(202), result.statuses.count(200)
    others = len(result.statuses) - accepted - duplicates
    lost, doubled = max(0, result.sent - result.runs), max(0, result.runs - result.sent)
    p50, p99 = percentile(result.latencies, 50), percentile(result.latencies, 99)
    cpu_met = "met" if result.cpu_ms_per_ack <= TARGET_CPU_MS else "NOT met"
    p99_met = "met" if p99 <= TARGET_P99_MS else "NOT met"
    print(
        f"{result.label}: {result.sent} {event} deliveries at {rate:g}/s"
        f" + {result.answered - result.sent} redeliveries;"
        f" answers {accepted} x 202, {duplicates} x 200, others {others}; runs {result.runs},"
        f" lost {lost}, duplicated {doubled}"
    )
    print(
        f"{result.label}: server CPU {result.cpu_s:.2f} s,"
        f" {result.cpu_ms_per_ack:.2f} ms per acknowledgement"
        f" (target ≤ {TARGET_CPU_MS:g} ms: {cpu_met}); latency p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        f" (target p99 ≤ {TARGET_P99_MS:g} ms: {p99_met})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--compare", metavar="REV", help="also measure this git revision's code path")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--event", choices=sorted(PAYLOADS), default="push", help="what each delivery is")
    args = parser.parse_args()
    variants = [("this checkout", ROOT)]
    previous = _extract(args.compare) if args.compare else None
    if previous is not None:
        variants.append((f"{args.compare}", previous))
    print(machine())
    try:
        results: dict[str, list[Result]] = {label: [] for label, _ in variants}
        for round_ in range(args.rounds):
            order = variants if round_ % 2 == 0 else variants[::-1]
            for label, tree in order:
                result = measure(label, tree, args.event, args.rate, args.seconds)
                results[label].append(result)
                report(result, args.event, args.rate)
        if previous is not None or args.rounds > 1:
            print("CPU per acknowledgement, by round: " + "; ".join(
                f"{label} " + ", ".join(f"{r.cpu_ms_per_ack:.2f}" for r in runs) + " ms"
                for label, runs in results.items()
            ))  # fmt: skip
    finally:
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)


if __name__ == "__main__":
    main()
