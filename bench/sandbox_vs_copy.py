"""loopgate's request-scoped sandbox vs a full copy of the system, measured side by side in one run.

    .venv/bin/python -m bench.sandbox_vs_copy          # or: make bench

A generated system of 12 FastAPI services (see :mod:`bench.system`) runs once as loopgate's shared
baseline behind one Envoy. The benchmark then measures, alternating the two sides where it can:

1. time to a routable sandbox (one changed service forked and routed, until the first 200 through
   the entry that the fork served) vs starting a full copy of all 12 services (until the first 200
   through its entry that every service served);
2. memory (summed PSS) of 10 concurrent sandboxes, baseline and Envoy included, vs 10 full copies,
   and the memory each added sandbox or copy costs;
3. route add/remove latency (``LocalRuntime.route``/``unroute`` and ``DataPlane.apply``);
4. the latency Envoy's hop adds, through the listener vs straight to the same process.

It prints a table of figures, ratios and targets and always exits 0: it is a measurement, not a test.
Everything it starts listens on 127.0.0.1 and is stopped before it exits, also on Ctrl-C; its state
lives in a temporary ``LOOPGATE_STATE_DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from bench.measure import MIB, Paired, count_processes, machine, paired_latency, percentile, pss_bytes
from bench.system import (
    CHANGED,
    ENTRY,
    LEAF,
    SERVICES,
    FullCopy,
    System,
    checkout,
    generate,
    served_by,
    wait_for,
)
from bot.config import RuntimeSettings
from bot.runtimes.local.envoy import DataPlane
from bot.runtimes.local.runtime import LocalRuntime
from bot.runtimes.protocol import Baseline, Sandbox, Source

START_TIMEOUT_S = 120.0


@dataclass
class Options:
    trials: int = 5
    route_cycles: int = 60
    hop_samples: int = 3000
    sandboxes: int = 10
    json_path: Path | None = None


@dataclass
class Results:
    machine: dict[str, str] = field(default_factory=dict)
    sandbox_s: list[float] = field(default_factory=list)
    sandbox_fork_ready_ms: list[int] = field(default_factory=list)
    sandbox_route_ms: list[float] = field(default_factory=list)
    copy_s: list[float] = field(default_factory=list)
    route_add_ms: list[float] = field(default_factory=list)
    route_remove_ms: list[float] = field(default_factory=list)
    apply_add_ms: list[float] = field(default_factory=list)
    apply_remove_ms: list[float] = field(default_factory=list)
    hop_untagged: Paired | None = None
    hop_tagged: Paired | None = None
    mem_baseline: list[int] = field(default_factory=list)
    mem_sandboxes: list[int] = field(default_factory=list)
    mem_copies: list[int] = field(default_factory=list)
    procs_sandboxes: int = 0
    procs_copies: int = 0
    envoy_pss_baseline: list[int] = field(default_factory=list)
    envoy_pss: list[int] = field(default_factory=list)
    elapsed_s: float = 0.0


def log(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


# -- the loopgate side -----------------------------------------------------------------------------


class Loopgate:
    """One baseline of the system and the sandboxes made beside it, through the local runtime."""

    def __init__(self, system: System, state_dir: Path) -> None:
        self.system = system
        self.runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir))
        self.baseline: Baseline | None = None
        self.sandboxes: list[Sandbox] = []

    def up(self) -> Baseline:
        self.baseline = self.runtime.up_baseline(
            Source(self.system.repo, self.system.base_sha), self.system.config
        )
        return self.baseline

    @property
    def env_dir(self) -> Path:
        assert self.baseline is not None
        return self.runtime.registry.env_dir(self.baseline.env_id)

    @property
    def plane(self) -> DataPlane:
        return DataPlane(self.env_dir / "envoy")

    def entry_port(self, service: str) -> int:
        assert self.baseline is not None
        return int(self.baseline.entry_urls[service].rsplit(":", 1)[1])

    def baseline_port(self, service: str) -> int:
        assert self.baseline is not None
        record = self.runtime.registry.load_env(self.baseline.env_id)
        assert record is not None
        return record.services[service].port

    def fork_pid_and_port(self, sandbox: Sandbox) -> tuple[int, int]:
        record = self.runtime.registry.load_sandbox(sandbox.baseline.env_id, sandbox.routing_key)
        assert record is not None
        fork = record.forks[CHANGED]
        return fork.process.pid, fork.port

    def sandbox(self) -> tuple[Sandbox, int, float]:
        """Create, build, fork and route a sandbox of the change: (sandbox, fork ready ms, route ms)."""
        assert self.baseline is not None
        config = self.system.config
        sandbox = self.runtime.new_sandbox(
            self.baseline, config, Source(self.system.repo, self.system.head_sha)
        )
        self.sandboxes.append(sandbox)
        spec = config.services[CHANGED]
        built = self.runtime.build(sandbox, CHANGED, spec)
        if not built.ok:
            raise RuntimeError(f"build of {CHANGED} failed: {built.detail}")
        forked = self.runtime.fork(sandbox, CHANGED, spec)
        if forked.status != "ready":
            raise RuntimeError(f"fork of {CHANGED} failed: {forked.detail}: {forked.log_tail}")
        started = time.perf_counter()
        self.runtime.route(sandbox)
        return sandbox, forked.ready_ms or 0, (time.perf_counter() - started) * 1000

    def served_by_fork(self, sandbox: Sandbox) -> Callable[[Mapping[str, Any]], bool]:
        """Accepts a response only if the fork served the changed hop and the baseline every other."""
        fork_pid, _ = self.fork_pid_and_port(sandbox)

        def accept(body: Mapping[str, Any]) -> bool:
            hops = served_by(body)
            version, pid = hops.get(CHANGED, ("", 0))
            others = all(v == "base" for name, (v, _) in hops.items() if name != CHANGED)
            return len(hops) == SERVICES and version == "head" and _in_group(pid, fork_pid) and others

        return accept

    def teardown(self, sandbox: Sandbox) -> None:
        self.runtime.teardown(sandbox)
        self.sandboxes.remove(sandbox)

    def pids(self) -> list[int]:
        """Every process loopgate runs for this system: baseline services, Envoy, forks."""
        assert self.baseline is not None
        record = self.runtime.registry.load_env(self.baseline.env_id)
        assert record is not None
        pids = [p.process.pid for p in record.services.values()]
        envoy = self.plane.pid
        if envoy is not None:
            pids.append(envoy)
        for sandbox in self.runtime.registry.sandboxes(self.baseline.env_id):
            pids += [f.process.pid for f in sandbox.forks.values()]
        return pids

    def down(self) -> None:
        if self.baseline is not None:
            self.runtime.down(self.baseline.env_id)
            self.baseline = None
        self.sandboxes.clear()


def _in_group(pid: int, leader: int) -> bool:
    """Whether `pid` (as the service reports it: inside its PID namespace when confined) runs in the
    process group `leader` leads."""
    for member in _group(leader):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        nspids = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
        if member == pid or (nspids and int(nspids[-1]) == pid):
            return True
    return False


def _group(leader: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == leader:
                    members.append(int(entry))
            except OSError:
                continue
    return members


def baggage(sandbox: Sandbox) -> dict[str, str]:
    return {"baggage": f"{sandbox.config.routing.baggage_member}={sandbox.routing_key}"}


# -- the copy side ---------------------------------------------------------------------------------


def full_copy_accept(body: Mapping[str, Any]) -> bool:
    hops = served_by(body)
    return len(hops) == SERVICES and hops.get(CHANGED, ("", 0))[0] == "head"


def start_copy(source: Path, workdir: Path, system: System, copies: list[FullCopy]) -> FullCopy:
    copy = FullCopy(source=source, workdir=workdir, config=system.config)
    copies.append(copy)  # registered before starting, so a failure midway still stops it
    copy.start()
    return copy


# -- the phases ------------------------------------------------------------------------------------


def time_to_routable(
    lg: Loopgate, system: System, head: Path, work: Path, opts: Options, res: Results, copies: list[FullCopy]
) -> None:
    """Alternate sandbox and copy trials (which goes first flips every round)."""
    with httpx.Client(trust_env=False, timeout=10) as client:
        for trial in range(opts.trials):
            sides = ("sandbox", "copy") if trial % 2 == 0 else ("copy", "sandbox")
            for side in sides:
                if side == "sandbox":
                    started = time.perf_counter()
                    sandbox, ready_ms, route_ms = lg.sandbox()
                    wait_for(
                        client,
                        f"http://127.0.0.1:{lg.entry_port(ENTRY)}/",
                        baggage(sandbox),
                        lg.served_by_fork(sandbox),
                        START_TIMEOUT_S,
                    )
                    elapsed = time.perf_counter() - started
                    res.sandbox_s.append(elapsed)
                    res.sandbox_fork_ready_ms.append(ready_ms)
                    res.sandbox_route_ms.append(route_ms)
                    log(
                        f"trial {trial + 1}: sandbox routable in {elapsed:.2f} s "
                        f"(fork ready {ready_ms} ms, route {route_ms:.0f} ms)"
                    )
                    lg.teardown(sandbox)
                else:
                    started = time.perf_counter()
                    copy = start_copy(head, work / f"copy-t{trial}", system, copies)
                    wait_for(client, copy.entry_url + "/", {}, full_copy_accept, START_TIMEOUT_S)
                    elapsed = time.perf_counter() - started
                    res.copy_s.append(elapsed)
                    log(f"trial {trial + 1}: full copy answering in {elapsed:.2f} s")
                    copy.stop()
                    copies.remove(copy)


def route_latency(lg: Loopgate, opts: Options, res: Results) -> None:
    """Route and unroute one sandbox repeatedly, checking after each step where a tagged request goes;
    then the same through ``DataPlane.apply`` alone."""
    sandbox, _, _ = lg.sandbox()
    accept_fork = lg.served_by_fork(sandbox)
    entry = f"http://127.0.0.1:{lg.entry_port(ENTRY)}/"
    headers = baggage(sandbox)
    with httpx.Client(trust_env=False, timeout=10) as client:
        wait_for(client, entry, headers, accept_fork, 10)
        for _ in range(opts.route_cycles):
            started = time.perf_counter()
            lg.runtime.unroute(sandbox)
            res.route_remove_ms.append((time.perf_counter() - started) * 1000)
            _expect(client, entry, headers, lambda b: served_by(b)[CHANGED][0] == "base", "baseline")
            started = time.perf_counter()
            lg.runtime.route(sandbox)
            res.route_add_ms.append((time.perf_counter() - started) * 1000)
            _expect(client, entry, headers, accept_fork, "fork")

        plane = lg.plane
        routed = plane.current_spec()
        assert routed is not None
        unrouted = replace(routed, forks={k: v for k, v in routed.forks.items() if k != sandbox.routing_key})
        for _ in range(opts.route_cycles):
            started = time.perf_counter()
            plane.apply(unrouted)
            res.apply_remove_ms.append((time.perf_counter() - started) * 1000)
            _expect(client, entry, headers, lambda b: served_by(b)[CHANGED][0] == "base", "baseline")
            started = time.perf_counter()
            plane.apply(routed)
            res.apply_add_ms.append((time.perf_counter() - started) * 1000)
            _expect(client, entry, headers, accept_fork, "fork")

    log(
        f"route/unroute p50 {percentile(res.route_add_ms + res.route_remove_ms, 50):.1f} ms, "
        f"DataPlane.apply p50 {percentile(res.apply_add_ms + res.apply_remove_ms, 50):.1f} ms "
        f"({opts.route_cycles} cycles each, every step checked with a tagged request)"
    )

    # Envoy's hop, with this sandbox still routed: untagged to a baseline leaf, tagged to the fork.
    _, fork_port = lg.fork_pid_and_port(sandbox)
    res.hop_untagged = paired_latency(lg.entry_port(LEAF), lg.baseline_port(LEAF), "/", {}, opts.hop_samples)
    res.hop_tagged = paired_latency(lg.entry_port(CHANGED), fork_port, "/", headers, opts.hop_samples)
    log(
        f"hop overhead p50: untagged {res.hop_untagged.overhead_p50 * 1000:.3f} ms, "
        f"tagged {res.hop_tagged.overhead_p50 * 1000:.3f} ms ({opts.hop_samples} pairs each)"
    )
    lg.teardown(sandbox)


def _expect(
    client: httpx.Client, url: str, headers: Mapping[str, str], accept: Callable[[Any], bool], what: str
) -> None:
    response = client.get(url, headers=headers)
    if response.status_code != 200 or not accept(response.json()):
        raise RuntimeError(f"right after the route change a tagged request did not reach the {what}")


def memory(
    lg: Loopgate, system: System, head: Path, work: Path, opts: Options, res: Results, copies: list[FullCopy]
) -> None:
    """Loopgate's baseline alone, then with N sandboxes; then N full copies once loopgate is down
    (PSS splits shared pages among whoever maps them, so the two sides are read one at a time)."""
    with httpx.Client(trust_env=False, timeout=10) as client:
        entry = f"http://127.0.0.1:{lg.entry_port(ENTRY)}/"
        client.get(entry)
        res.mem_baseline = _pss_readings(lg.pids())
        res.envoy_pss_baseline = _pss_readings(_envoy(lg))
        routed: list[Sandbox] = []
        for _ in range(opts.sandboxes):
            sandbox, _, _ = lg.sandbox()
            routed.append(sandbox)
        for sandbox in routed:  # every fork serves its own tagged traffic, and untagged still works
            wait_for(client, entry, baggage(sandbox), lg.served_by_fork(sandbox), 10)
        client.get(entry)
        res.procs_sandboxes = count_processes(lg.pids())
        res.mem_sandboxes = _pss_readings(lg.pids())
        res.envoy_pss = _pss_readings(_envoy(lg))
        log(
            f"loopgate: baseline+Envoy {percentile(res.mem_baseline, 50) / MIB:.0f} MiB, with "
            f"{opts.sandboxes} sandboxes {percentile(res.mem_sandboxes, 50) / MIB:.0f} MiB "
            f"({res.procs_sandboxes} processes)"
        )
        lg.down()

        for index in range(opts.sandboxes):
            copy = start_copy(head, work / f"copy-m{index}", system, copies)
            wait_for(client, copy.entry_url + "/", {}, full_copy_accept, START_TIMEOUT_S)
        pids = [ref.pid for copy in copies for ref in copy.processes.values()]
        res.procs_copies = count_processes(pids)
        res.mem_copies = _pss_readings(pids)
        log(
            f"{opts.sandboxes} full copies: {percentile(res.mem_copies, 50) / MIB:.0f} MiB "
            f"({res.procs_copies} processes)"
        )
        for copy in list(copies):
            copy.stop()
            copies.remove(copy)


def _envoy(lg: Loopgate) -> list[int]:
    pid = lg.plane.pid
    return [pid] if pid is not None else []


def _pss_readings(pids: list[int], count: int = 3) -> list[int]:
    readings = []
    for _ in range(count):
        readings.append(pss_bytes(pids))
        time.sleep(0.2)
    return readings


# -- the table -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    metric: str
    loopgate: str
    other: str
    ratio: str
    target: str
    met: bool | None


def rows(res: Results, opts: Options) -> list[Row]:
    out: list[Row] = []
    sandbox = percentile(res.sandbox_s, 50)
    copy = percentile(res.copy_s, 50)
    out.append(
        Row(
            f"time to a routable sandbox vs a full copy (median of {len(res.sandbox_s)})",
            f"{sandbox:.2f} s",
            f"{copy:.2f} s",
            f"{copy / sandbox:.1f}x faster",
            ">= 6x",
            copy / sandbox >= 6,
        )
    )
    n = opts.sandboxes
    mem_lg = percentile(res.mem_sandboxes, 50)
    mem_copy = percentile(res.mem_copies, 50)
    out.append(
        Row(
            f"memory (PSS), {n} sandboxes incl. baseline + Envoy vs {n} copies",
            f"{mem_lg / MIB:.0f} MiB",
            f"{mem_copy / MIB:.0f} MiB",
            f"{mem_copy / mem_lg:.1f}x less",
            ">= 4x less",
            mem_copy / mem_lg >= 4,
        )
    )
    per_sandbox = (mem_lg - percentile(res.mem_baseline, 50)) / n
    per_copy = mem_copy / n
    out.append(
        Row(
            "memory per added sandbox vs per added copy",
            f"{per_sandbox / MIB:.1f} MiB",
            f"{per_copy / MIB:.1f} MiB",
            f"{per_copy / per_sandbox:.1f}x less",
            ">= 10x less",
            per_copy / per_sandbox >= 10,
        )
    )
    route = res.route_add_ms + res.route_remove_ms
    out.append(
        Row(
            f"route add/remove, LocalRuntime.route/unroute ({len(route)} steps) p50",
            f"{percentile(route, 50):.1f} ms",
            "-",
            "-",
            "<= 20 ms",
            percentile(route, 50) <= 20,
        )
    )
    out.append(Row("  same, p95", f"{percentile(route, 95):.1f} ms", "-", "-", "-", None))
    apply = res.apply_add_ms + res.apply_remove_ms
    out.append(
        Row(
            f"route add/remove, DataPlane.apply ({len(apply)} steps) p50",
            f"{percentile(apply, 50):.1f} ms",
            "-",
            "-",
            "<= 20 ms",
            percentile(apply, 50) <= 20,
        )
    )
    out.append(Row("  same, p95", f"{percentile(apply, 95):.1f} ms", "-", "-", "-", None))
    for label, paired in (("untagged -> baseline", res.hop_untagged), ("tagged -> fork", res.hop_tagged)):
        if paired is None:
            continue
        via, direct = percentile(paired.via, 50), percentile(paired.direct, 50)
        overhead = paired.overhead_p50 * 1000
        out.append(
            Row(
                f"Envoy hop overhead p50, {label} ({len(paired.via)} pairs)",
                f"{via * 1000:.3f} ms",
                f"{direct * 1000:.3f} ms direct",
                f"+{overhead:.3f} ms",
                "<= 0.3 ms",
                overhead <= 0.3,
            )
        )
    return out


def render(table: list[Row]) -> str:
    header = ("metric", "loopgate", "full copy / direct", "ratio", "target", "met?")
    cells = [header] + [
        (
            r.metric,
            r.loopgate,
            r.other,
            r.ratio,
            r.target,
            "-" if r.met is None else ("yes" if r.met else "NO"),
        )
        for r in table
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def details(res: Results, opts: Options) -> str:
    def ms(values: list[float]) -> str:
        return f"p50 {percentile(values, 50):.1f} / p95 {percentile(values, 95):.1f} ms"

    lines = [
        "sandbox trials (s): " + ", ".join(f"{v:.2f}" for v in res.sandbox_s),
        "  of which fork ready (ms): " + ", ".join(str(v) for v in res.sandbox_fork_ready_ms),
        "  of which route (ms): " + ", ".join(f"{v:.0f}" for v in res.sandbox_route_ms),
        "full copy trials (s): " + ", ".join(f"{v:.2f}" for v in res.copy_s),
        f"route add {ms(res.route_add_ms)}; remove {ms(res.route_remove_ms)}",
        f"apply add {ms(res.apply_add_ms)}; remove {ms(res.apply_remove_ms)}",
        f"processes: {res.procs_sandboxes} for {opts.sandboxes} sandboxes (baseline, Envoy, forks, "
        f"with their sh wrappers), {res.procs_copies} for {opts.sandboxes} copies",
        f"baseline + Envoy alone: {percentile(res.mem_baseline, 50) / MIB:.0f} MiB; Envoy alone "
        f"{percentile(res.envoy_pss_baseline, 50) / MIB:.1f} MiB, with {opts.sandboxes} sandboxes routed "
        f"{percentile(res.envoy_pss, 50) / MIB:.1f} MiB",
    ]
    for label, paired in (("untagged", res.hop_untagged), ("tagged", res.hop_tagged)):
        if paired is not None:
            lines.append(
                f"hop {label}: via Envoy p50 {percentile(paired.via, 50) * 1000:.3f} / p95 "
                f"{percentile(paired.via, 95) * 1000:.3f} ms, direct p50 "
                f"{percentile(paired.direct, 50) * 1000:.3f} / p95 "
                f"{percentile(paired.direct, 95) * 1000:.3f} ms, "
                f"median paired difference {paired.paired_p50 * 1000:.3f} ms"
            )
    return "\n".join(lines)


# -- running it ------------------------------------------------------------------------------------


@contextmanager
def _interrupts_as_keyboard_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every finally block stops what it started."""

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _uninterrupted() -> Iterator[None]:
    """Clean-up must finish even if Ctrl-C is pressed again."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)


def run(opts: Options) -> Results:
    res = Results(machine=machine())
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="loopgate-bench-") as tmp_name:
        tmp = Path(tmp_name)
        state_dir = tmp / "state"
        os.environ["LOOPGATE_STATE_DIR"] = str(state_dir)
        system = generate(tmp / "repo")
        head = checkout(system, system.head_sha, tmp / "head")
        lg = Loopgate(system, state_dir)
        copies: list[FullCopy] = []
        try:
            log(f"starting the baseline of {SERVICES} services and Envoy")
            lg.up()
            log("time to a routable sandbox vs a full copy, alternating")
            time_to_routable(lg, system, head, tmp, opts, res, copies)
            log("route add/remove latency and Envoy hop overhead")
            route_latency(lg, opts, res)
            log(f"memory: {opts.sandboxes} sandboxes, then {opts.sandboxes} full copies")
            memory(lg, system, head, tmp, opts, res, copies)
        finally:
            with _uninterrupted():
                for copy in copies:
                    copy.stop()
                lg.down()
    res.elapsed_s = time.monotonic() - began
    return res


def parse(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sandbox_vs_copy", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--trials", type=int, default=5, help="sandbox and copy start trials each (default 5)"
    )
    parser.add_argument("--route-cycles", type=int, default=60, help="route/unroute cycles (default 60)")
    parser.add_argument("--hop-samples", type=int, default=3000, help="request pairs per hop measurement")
    parser.add_argument(
        "--sandboxes", type=int, default=10, help="concurrent sandboxes and copies (default 10)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the raw figures here")
    args = parser.parse_args(argv)
    return Options(
        trials=args.trials,
        route_cycles=args.route_cycles,
        hop_samples=args.hop_samples,
        sandboxes=args.sandboxes,
        json_path=args.json,
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    print(f"loopgate benchmark: sandbox vs full copy, {SERVICES} services", flush=True)
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
    print()
    print(details(res, opts))
    missed = [r.metric.strip() for r in table if r.met is False]
    print()
    if missed:
        print("targets NOT met:")
        for metric in missed:
            print(f"  - {metric}")
    else:
        print("all targets met")
    if opts.json_path is not None:
        opts.json_path.write_text(json.dumps(_as_json(res, table), indent=2) + "\n")
    return 0


def _as_json(res: Results, table: list[Row]) -> dict[str, Any]:
    raw: dict[str, Any] = {
        key: value for key, value in vars(res).items() if not isinstance(value, Paired) and value is not None
    }
    for name in ("hop_untagged", "hop_tagged"):
        paired = getattr(res, name)
        if paired is not None:
            raw[name] = {"via": paired.via, "direct": paired.direct}
    raw["table"] = [vars(r) for r in table]
    return raw


if __name__ == "__main__":
    sys.exit(main())
