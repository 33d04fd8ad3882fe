"""Many sandboxes simulated by a few backend processes, and mixed traffic that checks every answer.

Each fork is one port of a :mod:`bench.portecho` process, which answers with that port: an answer
from any port other than the one DESIGN's routing contract names (computed here without Envoy) is a
misroute.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import string
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from bot.runtimes.local.ports import free_port
from bot.runtimes.local.xds import DataPlaneSpec, Upstream

SERVICES = ("front", "orders", "stock")
MEMBER = "loopgate-sandbox"
HEADER = "x-loopgate-sandbox"


class Backends:
    """A few :mod:`bench.portecho` processes; :meth:`take` hands out their ports one at a time."""

    def __init__(self, processes: int, ports: int) -> None:
        self._procs: list[subprocess.Popen[str]] = []
        each = -(-ports // processes)
        try:
            for _ in range(processes):
                command = [sys.executable, "-m", "bench.portecho", str(each)]
                self._procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
            bound: list[list[int]] = []
            for proc in self._procs:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError("a backend process exited before it listened")
                bound.append(json.loads(line))
        except BaseException:
            self.stop()  # also when interrupted while they start: nothing is left behind
            raise
        # Interleaved, so consecutive forks land on different processes.
        self._free = [port for group in itertools.zip_longest(*bound) for port in group if port is not None]
        self._free.reverse()

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self._procs]

    def take(self) -> int:
        return self._free.pop()

    def stop(self) -> None:
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def routing_keys(count: int, rng: random.Random) -> list[str]:
    """Distinct keys, every second one an extension of the one before (``abc1234``, ``abc12345``)."""
    alphabet = string.ascii_lowercase + string.digits
    keys: list[str] = []
    seen: set[str] = set()
    while len(keys) < count:
        if len(keys) % 2 and len(keys[-1]) < 16:
            key = keys[-1] + rng.choice(alphabet)
        else:
            key = "".join(rng.choice(alphabet) for _ in range(rng.randint(6, 12)))
        if key not in seen and key != "baseline":
            seen.add(key)
            keys.append(key)
    return keys


@dataclass(frozen=True)
class Fleet:
    listeners: dict[str, int]
    baseline: dict[str, Upstream]
    forks: dict[str, dict[str, Upstream]]
    """Every sandbox, in load order."""
    probe: tuple[str, dict[str, Upstream]]
    """The sandbox added and removed again at each level."""

    def spec(self, loaded: int, *, probe: bool = False) -> DataPlaneSpec:
        forks = dict(list(self.forks.items())[:loaded])
        if probe:
            forks[self.probe[0]] = self.probe[1]
        return DataPlaneSpec(listeners=self.listeners, baseline=self.baseline, forks=forks)


def make_fleet(sandboxes: int, backends: Backends, rng: random.Random) -> Fleet:
    """``sandboxes`` sandboxes (and one more to add and remove), each forking one or two services."""
    keys = routing_keys(sandboxes + 1, rng)
    forks: dict[str, dict[str, Upstream]] = {}
    for key in keys:
        count = 2 if rng.random() < 0.25 else 1
        forks[key] = {s: Upstream("127.0.0.1", backends.take()) for s in rng.sample(SERVICES, count)}
    probe_key = keys.pop(rng.randrange(len(keys)))
    probe = forks.pop(probe_key)
    return Fleet(
        listeners={s: free_port() for s in SERVICES},
        baseline={s: Upstream("127.0.0.1", backends.take()) for s in SERVICES},
        forks=forks,
        probe=(probe_key, probe),
    )


def expected_port(fleet: Fleet, spec: DataPlaneSpec, service: str, baggage: str, header: str) -> int:
    """Where DESIGN's routing contract sends the request, decided without Envoy."""
    key = None
    for member in baggage.split(","):
        name, _, value = member.partition(";")[0].partition("=")
        if name.strip() == MEMBER:
            key = value.strip()
    if key is None and header:
        key = header
    fork = spec.forks.get(key or "", {}).get(service)
    return (fork or fleet.baseline[service]).port


# -- mixed requests --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    kind: str
    service: str
    headers: bytes
    port: int
    member: str
    """The baggage member the backend must see ('' when none is required)."""


def mixed_requests(fleet: Fleet, spec: DataPlaneSpec, count: int, rng: random.Random) -> list[Probe]:
    """Tagged for random sandboxes (with other members and properties around), near misses (a prefix
    or an extension of a real key), header-tagged, and untagged."""
    keys = list(spec.forks)
    out = []
    for _ in range(count):
        service = rng.choice(SERVICES)
        roll = rng.random()
        key = rng.choice(keys)
        if roll < 0.6:
            near = roll >= 0.45
            if near:
                key = key[:-1] if rng.random() < 0.5 and len(key) > 6 else key + rng.choice("0123456789")
                key = key[:16]
            form = rng.randrange(4)
            baggage = [
                f"{MEMBER}={key}",
                f"userId=alice,{MEMBER}={key};origin=test",
                f"{MEMBER}={key} , tenant=t1",
                f"a=1, b=2,{MEMBER}={key}%3Bp%3D1",
            ][form]
            kind = "baggage near miss" if near else "baggage"
            head = f"baggage: {baggage}\r\n"
            port = expected_port(fleet, spec, service, baggage.replace("%3B", ";"), "")
            out.append(Probe(kind, service, head.encode(), port, ""))
        elif roll < 0.8:
            if roll >= 0.75 and len(key) > 6:
                key = key[:-1]
            head = f"{HEADER}: {key}\r\n"
            port = expected_port(fleet, spec, service, "", key)
            out.append(Probe("header", service, head.encode(), port, f"{MEMBER}={key}"))
        else:
            out.append(Probe("untagged", service, b"", fleet.baseline[service].port, ""))
    return out


@dataclass
class Mixed:
    """What the mixed requests found."""

    counts: Counter[str] = field(default_factory=Counter)
    misroutes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


async def _worker(fleet: Fleet, probes: list[Probe], res: Mixed) -> None:
    streams = {}
    for service, listener in fleet.listeners.items():
        streams[service] = await asyncio.open_connection("127.0.0.1", listener)
    try:
        for probe in probes:
            reader, writer = streams[probe.service]
            writer.write(b"GET / HTTP/1.1\r\nhost: bench\r\n" + probe.headers + b"\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            res.counts[probe.kind] += 1
            status = head.split(b" ", 2)[1]
            port, _, baggage = body.partition(b" ")
            what = f"{probe.kind} {probe.service} {probe.headers!r}"
            if status != b"200" or not port.isdigit():
                res.failures.append(f"{what}: HTTP {status.decode()}")
            elif int(port) != probe.port or probe.member.encode() not in baggage:
                res.misroutes.append(f"{what}: port {int(port)} (want {probe.port}), baggage {baggage!r}")
    finally:
        for _, writer in streams.values():
            writer.close()


def run_mixed(fleet: Fleet, spec: DataPlaneSpec, count: int, connections: int, rng: random.Random) -> Mixed:
    """``count`` requests over ``connections`` kept-alive connections per listener, all checked."""
    res = Mixed()
    probes = mixed_requests(fleet, spec, count, rng)
    shares = [probes[i::connections] for i in range(connections)]

    async def all_workers() -> None:
        await asyncio.gather(*(_worker(fleet, share, res) for share in shares))

    started = time.perf_counter()
    asyncio.run(all_workers())
    res.seconds = time.perf_counter() - started
    return res
