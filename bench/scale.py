"""One baseline carrying 1,000 live sandboxes: the local data plane's cost as the sandbox count grows.

    .venv/bin/python -m bench.scale                     # 0, 100 and 1,000 sandboxes
    .venv/bin/python -m bench.scale --sandboxes 300 --requests 20000 --json raw.json

The real :class:`DataPlane` (one Envoy, file-based xDS) routes a baseline of a few services and up to
``--sandboxes`` sandboxes. Forks are simulated by a few shared backend processes (:mod:`bench.portecho`)
listening on one port per fork and answering with the port they were reached on, so every answer
proves which fork (or baseline) served it. Sandbox keys come in prefix pairs (``abc1234`` beside
``abc12345``) so that exact member matching is exercised. Measured side by side in one run:

1. route add/remove (one sandbox, ``DataPlane.apply``) at each loaded count, every step checked
   with a tagged request, and which files each add rewrote (count and bytes);
2. Envoy's hop overhead (through the listener vs straight to the backend port), untagged and tagged
   for the sandbox whose routes come last, with none and with every sandbox loaded;
3. ``--requests`` mixed requests with every sandbox loaded: baggage-tagged (other members and
   properties around), near misses (a prefix or extension of a real key), header-tagged (the backend
   must also see the baggage member added) and untagged; an answer from any other port is a misroute;
4. Envoy's memory (PSS and RSS) with none and with every sandbox loaded, and per sandbox.

It prints a table (metric / value / target / met?) and exits 0: it is a measurement, not a test (130
on Ctrl-C). Everything listens on 127.0.0.1 and is stopped before it exits, also on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.fleet import MEMBER, SERVICES, Backends, Fleet, Mixed, expected_port, make_fleet, run_mixed
from bench.measure import MIB, Paired, machine, paired_latency, percentile
from bench.sandbox_vs_copy import _interrupts_as_keyboard_interrupt, _uninterrupted
from bot.runtimes.local.envoy import DataPlane
from bot.runtimes.local.xds import DataPlaneSpec

HOP_SERVICE = "orders"
TARGET_ROUTE_MS = 50.0
HOP_NOISE_MS = 0.05
""""Unchanged" hop overhead: with every sandbox loaded, within this of the figure with none, measured
in the same run (the absolute figure is the sandbox-vs-copy benchmark's, and moves with machine load)."""


@dataclass
class Options:
    sandboxes: int = 1000
    cycles: int = 30
    hop_samples: int = 2000
    requests: int = 100_000
    backends: int = 2
    connections: int = 8
    seed: int = 13
    json_path: Path | None = None

    @property
    def levels(self) -> list[int]:
        return sorted({0, self.sandboxes // 10, self.sandboxes})


@dataclass
class Results:
    machine: dict[str, str] = field(default_factory=dict)
    load_ms: dict[int, float] = field(default_factory=dict)
    add_ms: dict[int, list[float]] = field(default_factory=dict)
    remove_ms: dict[int, list[float]] = field(default_factory=dict)
    cpu_ms: dict[int, dict[str, tuple[float, float]]] = field(default_factory=dict)
    """level -> add/remove -> mean CPU ms per apply (loopgate's process, Envoy)."""
    add_files: dict[int, list[str]] = field(default_factory=dict)
    add_bytes: dict[int, int] = field(default_factory=dict)
    config_bytes: dict[int, int] = field(default_factory=dict)
    hops: dict[str, Paired] = field(default_factory=dict)
    mixed: Mixed = field(default_factory=Mixed)
    memory: dict[str, tuple[int, int]] = field(default_factory=dict)
    """phase -> (PSS, RSS) bytes of Envoy."""
    elapsed_s: float = 0.0


def log(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


# -- route add/remove ------------------------------------------------------------------------------


def xds_files(workdir: Path) -> dict[str, tuple[int, int]]:
    """Every file Envoy or a later apply reads, by name: (mtime_ns, size)."""
    out = {}
    for path in [*workdir.glob("*.json"), *workdir.glob("*/*.json")]:
        stat = path.stat()
        out[str(path.relative_to(workdir))] = (stat.st_mtime_ns, stat.st_size)
    return out


def route_cycles(
    plane: DataPlane, workdir: Path, fleet: Fleet, level: int, opts: Options, res: Results
) -> None:
    loaded, with_probe = fleet.spec(level), fleet.spec(level, probe=True)
    key, forked = fleet.probe
    service = next(iter(forked))
    clients = {
        s: http.client.HTTPConnection("127.0.0.1", port, timeout=10) for s, port in fleet.listeners.items()
    }
    res.add_ms[level], res.remove_ms[level] = [], []
    envoy = psutil.Process(plane.pid)
    cpu = {"add": [0.0, 0.0], "remove": [0.0, 0.0]}

    def timed(kind: str, spec: DataPlaneSpec) -> float:
        """Wall ms of one apply; its CPU (loopgate's, Envoy's) is added to ``cpu[kind]``."""
        envoy_before, own_before = sum(envoy.cpu_times()[:2]), time.process_time()
        started = time.perf_counter()
        plane.apply(spec)
        wall = (time.perf_counter() - started) * 1000
        cpu[kind][0] += (time.process_time() - own_before) * 1000
        cpu[kind][1] += (sum(envoy.cpu_times()[:2]) - envoy_before) * 1000
        return wall

    try:
        for cycle in range(opts.cycles):
            before = xds_files(workdir)
            res.add_ms[level].append(timed("add", with_probe))
            if cycle == 0:
                after = xds_files(workdir)
                changed = sorted(name for name, stat in after.items() if before.get(name) != stat)
                res.add_files[level] = changed
                res.add_bytes[level] = sum(after[name][1] for name in changed)
            _expect(clients[service], fleet, with_probe, service, key)
            res.remove_ms[level].append(timed("remove", loaded))
            _expect(clients[service], fleet, loaded, service, key)
    finally:
        for client in clients.values():
            client.close()
    # CPU time does not wait for a busy machine's other processes: on an idle one, wall time is this.
    res.cpu_ms[level] = {kind: (own / opts.cycles, env / opts.cycles) for kind, (own, env) in cpu.items()}
    res.config_bytes[level] = sum(
        size for name, (_, size) in xds_files(workdir).items() if name != "state.json"
    )


def _expect(
    client: http.client.HTTPConnection, fleet: Fleet, spec: DataPlaneSpec, service: str, key: str
) -> None:
    headers = {"baggage": f"{MEMBER}={key}"}
    client.request("GET", "/", headers=headers)
    answer = client.getresponse().read().split(b" ", 1)[0]
    want = expected_port(fleet, spec, service, headers["baggage"], "")
    if int(answer) != want:
        raise RuntimeError(f"right after a route change {key} reached port {int(answer)}, not {want}")


# -- Envoy's hop -----------------------------------------------------------------------------------


def hops(fleet: Fleet, level: int, opts: Options, res: Results) -> None:
    """Untagged to the baseline, and tagged for the sandbox forking HOP_SERVICE whose routes come last
    (with none loaded: a key no sandbox has, which must reach the baseline)."""
    listener, baseline = fleet.listeners[HOP_SERVICE], fleet.baseline[HOP_SERVICE].port
    res.hops[f"untagged@{level}"] = paired_latency(listener, baseline, "/", {}, opts.hop_samples)
    forking = sorted(k for k, s in fleet.spec(level).forks.items() if HOP_SERVICE in s)
    key, port = "nosandbox", baseline
    if forking:
        key = forking[-1]
        port = fleet.forks[key][HOP_SERVICE].port
    headers = {"baggage": f"{MEMBER}={key}"}
    res.hops[f"tagged@{level}"] = paired_latency(listener, port, "/", headers, opts.hop_samples)


# -- memory ----------------------------------------------------------------------------------------


def envoy_memory(pid: int, readings: int = 3) -> tuple[int, int]:
    """Median PSS and RSS of Envoy over a few readings."""
    pss, rss = [], []
    for _ in range(readings):
        info = psutil.Process(pid).memory_full_info()
        pss.append(int(info.pss))
        rss.append(int(info.rss))
        time.sleep(0.2)
    return int(percentile(pss, 50)), int(percentile(rss, 50))


# -- the table -------------------------------------------------------------------------------------


def rows(res: Results, opts: Options) -> list[tuple[str, str, str, bool | None]]:
    """(metric, value, target, met?)."""
    top = opts.sandboxes
    out: list[tuple[str, str, str, bool | None]] = []
    for level in opts.levels:
        for label, samples in (("add", res.add_ms[level]), ("remove", res.remove_ms[level])):
            p50, p95 = percentile(samples, 50), percentile(samples, 95)
            target = f"p50 <= {TARGET_ROUTE_MS:g} ms" if level == top else "-"
            met = p50 <= TARGET_ROUTE_MS if level == top else None
            out.append((f"route {label} p50 / p95, {level} loaded", f"{p50:.1f} / {p95:.1f} ms", target, met))
            own, env = res.cpu_ms[level][label]
            out.append(
                (f"  CPU per {label} (loopgate + Envoy), mean", f"{own:.1f} + {env:.1f} ms", "-", None)
            )
    for level in opts.levels:
        files = res.add_files[level]
        out.append(
            (
                f"files rewritten by one add, {level} loaded",
                f"{len(files)} ({res.add_bytes[level] / 1024:.0f} KiB): {', '.join(files)}",
                "-",
                None,
            )
        )
        out.append(
            (f"xDS config on disk, {level} loaded", f"{res.config_bytes[level] / 1024:.0f} KiB", "-", None)
        )
    out.append((f"bulk load of {top} sandboxes (one apply)", f"{res.load_ms[top]:.0f} ms", "-", None))
    for kind in ("untagged", "tagged"):
        none, every = res.hops[f"{kind}@0"], res.hops[f"{kind}@{top}"]
        base, loaded = none.paired_p50 * 1000, every.paired_p50 * 1000
        out.append((f"Envoy hop overhead (paired p50), {kind}, 0 loaded", f"+{base:.3f} ms", "-", None))
        out.append(
            (
                f"Envoy hop overhead (paired p50), {kind}, {top} loaded",
                f"+{loaded:.3f} ms",
                f"<= 0 loaded + {HOP_NOISE_MS} ms",
                loaded <= base + HOP_NOISE_MS,
            )
        )
    mixed = res.mixed
    total = sum(mixed.counts.values())
    rate = total / mixed.seconds if mixed.seconds else 0
    mix = ", ".join(f"{kind} {n}" for kind, n in sorted(mixed.counts.items()))
    out.append(
        (f"mixed requests, {top} loaded", f"{total} in {mixed.seconds:.1f} s ({rate:.0f}/s)", "-", None)
    )
    out.append(("  of which", mix, "-", None))
    out.append(
        ("  misroutes", str(len(mixed.misroutes)), "0", not mixed.misroutes and total == opts.requests)
    )
    out.append(("  failed (not 200)", str(len(mixed.failures)), "0", not mixed.failures))
    for label, index in (("PSS", 0), ("RSS", 1)):
        zero, full, busy = (res.memory[p][index] for p in ("0", f"{top}", f"{top} after traffic"))
        out.append(
            (
                f"Envoy {label}, 0 / {top} loaded / after traffic",
                f"{zero / MIB:.1f} / {full / MIB:.1f} / {busy / MIB:.1f} MiB",
                "-",
                None,
            )
        )
        per = (full - zero) / top / 1024 if top else 0.0
        per_busy = (busy - zero) / top / 1024 if top else 0.0
        out.append(
            (
                f"  Envoy {label} per sandbox (config / after traffic)",
                f"{per:.1f} / {per_busy:.1f} KiB",
                "recorded",
                None,
            )
        )
    return out


def render(table: list[tuple[str, str, str, bool | None]]) -> str:
    cells = [("metric", "value", "target", "met?")]
    cells += [(m, v, t, "-" if met is None else ("yes" if met else "NO")) for m, v, t, met in table]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    lines = [" | ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


# -- running it ------------------------------------------------------------------------------------


def run(opts: Options) -> Results:
    res = Results(machine=machine())
    began = time.monotonic()
    rng = random.Random(opts.seed)
    forks_needed = int(opts.sandboxes * 1.3) + 50
    with tempfile.TemporaryDirectory(prefix="loopgate-bench-scale-") as tmp:
        workdir = Path(tmp) / "envoy"
        workdir.mkdir()
        plane = DataPlane(workdir)
        backends: Backends | None = None
        try:
            log(f"starting {opts.backends} backend processes with {forks_needed + len(SERVICES)} ports")
            backends = Backends(opts.backends, forks_needed + len(SERVICES))
            fleet = make_fleet(opts.sandboxes, backends, rng)
            plane.start(fleet.spec(0))
            assert plane.pid is not None
            previous = 0
            for level in opts.levels:
                if level:
                    started = time.perf_counter()
                    plane.apply(fleet.spec(level))
                    res.load_ms[level] = (time.perf_counter() - started) * 1000
                    log(f"loaded {level - previous} sandboxes in one apply: {res.load_ms[level]:.0f} ms")
                previous = level
                res.memory[str(level)] = envoy_memory(plane.pid)
                route_cycles(plane, workdir, fleet, level, opts, res)
                log(
                    f"{level} loaded: add p50 {percentile(res.add_ms[level], 50):.1f} ms, "
                    f"remove p50 {percentile(res.remove_ms[level], 50):.1f} ms"
                )
                if level in (0, opts.sandboxes):
                    hops(fleet, level, opts, res)
                    log(f"{level} loaded: hop measured ({opts.hop_samples} pairs each)")
            log(f"{opts.requests} mixed requests over {opts.connections} connections")
            res.mixed = run_mixed(fleet, fleet.spec(opts.sandboxes), opts.requests, opts.connections, rng)
            res.memory[f"{opts.sandboxes} after traffic"] = envoy_memory(plane.pid)
        finally:
            with _uninterrupted():
                plane.stop()
                if backends is not None:
                    backends.stop()
    res.elapsed_s = time.monotonic() - began
    return res


def parse(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--sandboxes", type=int, default=1000, help="sandboxes at full load (default 1000)")
    parser.add_argument("--cycles", type=int, default=30, help="add/remove cycles per level (default 30)")
    parser.add_argument("--hop-samples", type=int, default=2000, help="request pairs per hop measurement")
    parser.add_argument("--requests", type=int, default=100_000, help="mixed requests (default 100000)")
    parser.add_argument("--backends", type=int, default=2, help="backend processes (default 2)")
    parser.add_argument("--connections", type=int, default=8, help="client connections for the mix")
    parser.add_argument("--seed", type=int, default=13, help="random seed of keys, forks and the mix")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw samples here")
    args = parser.parse_args(argv)
    if args.sandboxes < 1 or args.cycles < 1 or args.hop_samples < 1 or args.requests < 1:
        parser.error("counts must be positive")
    return Options(
        sandboxes=args.sandboxes,
        cycles=args.cycles,
        hop_samples=args.hop_samples,
        requests=args.requests,
        backends=max(1, args.backends),
        connections=max(1, args.connections),
        seed=args.seed,
        json_path=args.json,
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    print(f"loopgate benchmark: one baseline of {len(SERVICES)} services, up to {opts.sandboxes} sandboxes")
    try:
        with _interrupts_as_keyboard_interrupt():
            res = run(opts)
    except KeyboardInterrupt:
        print("interrupted; everything it started was stopped", file=sys.stderr)
        return 130
    print()
    for key, value in res.machine.items():
        print(f"{key}: {value}")
    print(f"run took {res.elapsed_s:.0f} s")
    print()
    table = rows(res, opts)
    print(render(table))
    for line in (res.mixed.misroutes + res.mixed.failures)[:10]:
        print(f"  {line}")
    missed = [metric.strip() for metric, _, _, met in table if met is False]
    print()
    print("targets NOT met: " + "; ".join(missed) if missed else "all targets met")
    if opts.json_path is not None:
        opts.json_path.write_text(json.dumps(_as_json(res, table), indent=2) + "\n")
    return 0


def _as_json(res: Results, table: list[tuple[str, str, str, bool | None]]) -> dict[str, Any]:
    raw: dict[str, Any] = {k: v for k, v in vars(res).items() if k not in ("hops", "mixed")}
    raw["mixed"] = vars(res.mixed)
    raw["hops"] = {name: {"via": p.via, "direct": p.direct} for name, p in res.hops.items()}
    raw["table"] = [{"metric": m, "value": v, "target": t, "met": met} for m, v, t, met in table]
    return raw


if __name__ == "__main__":
    sys.exit(main())
