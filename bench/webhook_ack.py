"""Webhook acknowledgement latency of `loopgate serve` under a steady stream of signed pushes.

    .venv/bin/python -m bench.webhook_ack [--rate 200] [--seconds 10]

The server runs with LOOPGATE_WORKERS=0 (accept only) on SQLite in a temporary state dir. A second
process sends signed `push` deliveries open-loop at the given rate (a request is sent on schedule
whether or not earlier ones were answered, so a slow server shows up as latency, not as a lower
rate); every tenth delivery is sent twice with the same `X-GitHub-Delivery`, as GitHub redelivers.
Afterwards the database must hold every delivery once and one queued run per distinct push: zero
lost, zero duplicated. Prints p50/p99 against the target (p99 ≤ 50 ms) and always exits 0.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.measure import machine, percentile
from bot.github.signature import sign
from bot.store import Store

SECRET = "bench-secret"
TARGET_P99_MS = 50.0


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _push(index: int) -> dict[str, Any]:
    sha = f"{index:040x}"
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


def _send(port: int, rate: float, seconds: float, queue: Any) -> None:
    """Runs in its own process: open-loop sender on kept-alive stdlib connections (an HTTP client
    library's own CPU cost would compete with the server for this machine's two cores)."""
    total = int(rate * seconds)
    bodies = [json.dumps(_push(i)).encode() for i in range(total)]
    deliveries = [str(uuid.uuid4()) for _ in range(total)]
    local = threading.local()

    def one(i: int, delivery: str) -> tuple[float, int]:
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": sign(bodies[i], SECRET),
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
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(one, i, deliveries[i]))
            if i % 10 == 0:
                futures.append(pool.submit(one, i, deliveries[i]))  # a redelivery
        results = [f.result() for f in futures]
    queue.put(([r[0] for r in results], [r[1] for r in results], total, (total + 9) // 10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="loopgate-bench-ack-"))
    port = _port()
    env = {
        **os.environ,
        "LOOPGATE_GITHUB_APP_ID": "1",
        "LOOPGATE_GITHUB_PRIVATE_KEY": "unused: workers are off",
        "LOOPGATE_WEBHOOK_SECRET": SECRET,
        "LOOPGATE_WORKERS": "0",
        "LOOPGATE_STATE_DIR": str(state),
        "LOOPGATE_GITHUB_API_URL": "http://127.0.0.1:9",
    }
    loopgate = Path(sys.executable).parent / "loopgate"
    server = subprocess.Popen([str(loopgate), "serve", "--port", str(port)], env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.1)
        queue: Any = multiprocessing.get_context("spawn").Queue()
        sender = multiprocessing.get_context("spawn").Process(
            target=_send, args=(port, args.rate, args.seconds, queue)
        )
        sender.start()
        latencies, statuses, sent, redelivered = queue.get(timeout=args.seconds * 10 + 60)
        sender.join()
        server_cpu = sum(psutil.Process(server.pid).cpu_times()[:2])
    finally:
        server.terminate()
        server.wait(timeout=30)
    with Store.open(None, state_dir=state) as store:
        runs = len(store.find(limit=100_000))
        queued = store.queue_depth()
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    accepted = statuses.count(202)
    duplicates = statuses.count(200)
    print(machine())
    print(f"sent {sent} deliveries at {args.rate:g}/s for {args.seconds:g}s, plus {redelivered} redeliveries")
    others = len(statuses) - accepted - duplicates
    print(f"answers: {accepted} x 202, {duplicates} x 200 (redelivery no-op), others {others}")
    print(f"runs in the database: {runs}, queued: {queued} (expected {sent})")
    lost, doubled = max(0, sent - runs), max(0, runs - sent)
    print(f"lost {lost}, duplicated {doubled}")
    print(f"server CPU {server_cpu:.1f} s over the run: {server_cpu / sent * 1000:.2f} ms per delivery")
    met = "met" if p99 <= TARGET_P99_MS else "NOT met"
    print(f"ack latency p50 {p50:.1f} ms, p99 {p99:.1f} ms (target p99 ≤ {TARGET_P99_MS:g} ms: {met})")


if __name__ == "__main__":
    main()
