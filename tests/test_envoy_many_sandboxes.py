"""The local data plane with many sandboxes loaded, against a real Envoy.

Forks are simulated by one process listening on many ports (:mod:`bench.portecho`) that answers with
the port it was reached on, so each answer says which instance served it. No timing assertions here:
what adding a sandbox costs is measured by ``bench/scale.py``; these tests pin what makes it cheap
(one endpoint file per service it forks, nothing else rewritten) and that routing stays exact.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.runtimes.local.envoy import DataPlane
from bot.runtimes.local.envoy_process import _connected, _proc_address
from bot.runtimes.local.ports import free_port
from bot.runtimes.local.xds import DataPlaneSpec, Upstream

pytestmark = pytest.mark.timeout(180)  # a hang fails in 3 min; a busy 2-core CI host is no hang

SERVICES = ("front", "orders", "stock")
SANDBOXES = 150
EXTRA = "extra123"


@dataclass
class Fleet:
    listeners: dict[str, int]
    baseline: dict[str, Upstream]
    forks: dict[str, dict[str, Upstream]]
    spare: list[int]

    def spec(self, forks: dict[str, dict[str, Upstream]] | None = None) -> DataPlaneSpec:
        return DataPlaneSpec(
            listeners=self.listeners, baseline=self.baseline, forks=self.forks if forks is None else forks
        )


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    count = SANDBOXES + len(SERVICES) + 4
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.portecho", str(count)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert proc.stdout is not None
        ports: list[int] = json.loads(proc.stdout.readline())
        baseline = {s: Upstream("127.0.0.1", ports.pop()) for s in SERVICES}
        forks: dict[str, dict[str, Upstream]] = {}
        for index in range(SANDBOXES):
            # Every second key extends the one before it: `sbx0001` beside `sbx00011`.
            key = f"sbx{index // 2:04d}" + ("1" if index % 2 else "")
            forks[key] = {SERVICES[index % len(SERVICES)]: Upstream("127.0.0.1", ports.pop())}
        yield Fleet({s: free_port() for s in SERVICES}, baseline, forks, ports)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def plane(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPlane]:
    dp = DataPlane(tmp_path_factory.mktemp("envoy"))
    try:
        dp.start(fleet.spec({}))
        dp.apply(fleet.spec())
        yield dp
    finally:
        dp.stop()


def answer(port: int, headers: dict[str, str]) -> tuple[int, str]:
    """(the port that answered, the baggage it got)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/", headers=headers)
        response = conn.getresponse()
        assert response.status == 200
        served, _, baggage = response.read().decode().partition(" ")
        return int(served), baggage
    finally:
        conn.close()


def test_every_sandbox_reaches_only_its_own_fork(plane: DataPlane, fleet: Fleet) -> None:
    for key, forked in fleet.forks.items():
        for service in SERVICES:
            want = (forked.get(service) or fleet.baseline[service]).port
            assert answer(fleet.listeners[service], {"baggage": f"a=1,loopgate-sandbox={key};p=2"})[0] == want
        service, fork = next(iter(forked.items()))
        # Header-tagged: the fork serves it and gets the baggage member Envoy added.
        assert answer(fleet.listeners[service], {"x-loopgate-sandbox": key}) == (
            fork.port,
            f"loopgate-sandbox={key}",
        )
    # Near misses (a prefix or an extension of a real key) and untagged requests reach the baseline.
    for near in ("sbx0000111", "sbx000", "sbx00002"):
        for service in SERVICES:
            assert answer(fleet.listeners[service], {"baggage": f"loopgate-sandbox={near}"})[0] == (
                fleet.baseline[service].port
            ), near
    assert answer(fleet.listeners["front"], {})[0] == fleet.baseline["front"].port


def test_adding_or_removing_a_sandbox_rewrites_only_what_it_forks(plane: DataPlane, fleet: Fleet) -> None:
    workdir = plane.access_log.parent
    fork = Upstream("127.0.0.1", fleet.spare[0])

    def snapshot() -> dict[str, int]:
        return {str(p.relative_to(workdir)): p.stat().st_mtime_ns for p in workdir.rglob("*.json")}

    files = snapshot()
    plane.apply(fleet.spec({**fleet.forks, EXTRA: {"orders": fork}}))
    after = snapshot()
    assert sorted(name for name in after if after[name] != files.get(name)) == [
        "eds/orders.json",
        "state.json",
    ]
    assert answer(fleet.listeners["orders"], {"baggage": f"loopgate-sandbox={EXTRA}"})[0] == fork.port
    assert answer(fleet.listeners["stock"], {"baggage": f"loopgate-sandbox={EXTRA}"})[0] == (
        fleet.baseline["stock"].port
    )

    plane.apply(fleet.spec())
    removed = snapshot()
    assert sorted(name for name in removed if removed[name] != after[name]) == [
        "eds/orders.json",
        "state.json",
    ]
    assert answer(fleet.listeners["orders"], {"baggage": f"loopgate-sandbox={EXTRA}"})[0] == (
        fleet.baseline["orders"].port
    )
    # Nothing to do, nothing written.
    plane.apply(fleet.spec())
    assert snapshot() == removed


def test_a_removed_fork_has_no_connection_from_envoy_left(plane: DataPlane, fleet: Fleet) -> None:
    fork = Upstream("127.0.0.1", fleet.spare[1])
    plane.apply(fleet.spec({**fleet.forks, EXTRA: {"front": fork}}))
    # Envoy keeps its upstream connection open after answering (keep-alive).
    for _ in range(3):
        assert answer(fleet.listeners["front"], {"baggage": f"loopgate-sandbox={EXTRA}"})[0] == fork.port
    pid = plane.pid
    assert pid is not None and _connected(pid, {_proc_address(fork)})
    plane.apply(fleet.spec())
    # The fork can be stopped at once: Envoy has closed every connection to it.
    assert not _connected(pid, {_proc_address(fork)})
    assert answer(fleet.listeners["front"], {"baggage": f"loopgate-sandbox={EXTRA}"})[0] == (
        fleet.baseline["front"].port
    )
