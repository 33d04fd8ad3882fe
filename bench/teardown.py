"""How long a sandbox and a baseline take to stop: the demo's sandbox (1 fork) and its baseline.

    PATH=.venv/bin:$PATH .venv/bin/python -m bench.teardown --runs 3

Each round, in a fresh state dir: the demo's repository (`refactor-orders`: the example shop on
`main`, the change on `agent/refactor-orders`), its baseline (4 services behind Envoy, payments on a
PostgreSQL copy), a sandbox that forks orders (built, forked, routed), then traffic as a suite makes
it: checkouts and reads through the gateway, tagged and untagged, on kept-alive connections, so Envoy
holds connections to the fork and to every baseline service, as it does after a real suite. Then:

- **sandbox teardown**: `LocalRuntime.teardown(sandbox)` (routes out, fork stopped, its Postgres-free
  SQLite copy, worktree and directory removed);
- **baseline down**: `LocalRuntime.down(env_id)` (Envoy, 4 services, the payments database and role,
  loopgate's own PostgreSQL cluster when it runs one, worktree, pristine checkout, directory).

Before the teardown, `observed_requests` is called once right after the traffic, as a verify does
after its suite: how long it took, and how many of the tagged requests it saw (each of those requests
passes 4 listeners: gateway, orders, inventory, payments for a checkout; gateway, inventory for a
read).

Also printed: the time spent in each part of them (parts may overlap when they run concurrently) and
whether anything of the round is left running or on disk. It always exits 0: it is a measurement,
not a test.

`--hostile`: every service's command becomes `trap '' TERM; <command>; sleep 60`, so each process
group keeps a process that ignores SIGTERM (what a stop's grace period is for). Confined, SIGTERM
ends the bubblewrap around it and with it the whole group, so run it with `LOOPGATE_CONFINE=off` to
see the grace period itself.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

CHANGE = "refactor-orders"
TAGGED_CHECKOUTS = 4
CARD = "4242-4242-4242-4242"

# (module, attribute) pairs timed when they exist: where a teardown's time goes.
PARTS = [
    ("bot.runtimes.local.processes", "stop_groups"),
    ("bot.runtimes.local.envoy", "DataPlane.stop"),
    ("bot.runtimes.local.core", "RuntimeCore._apply_routes"),
    ("bot.runtimes.local.cleanup", "Cleanup._drop_databases"),
    ("bot.runtimes.local.pgsite", "PostgresSite.release"),
    ("bot.runtimes.git", "Git.worktree_remove"),
    ("bot.runtimes.local.pristine", "remove"),
    ("shutil", "rmtree"),
]


class PartTimer:
    """Wall time spent inside each of `PARTS`, summed per part (nested calls counted once)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._depth = threading.local()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        undo: list[Callable[[], None]] = []
        for module_name, dotted in PARTS:
            owner: Any = importlib.import_module(module_name)
            *path, name = dotted.split(".")
            for part in path:
                owner = getattr(owner, part, None)
            found = getattr(owner, name, None) if owner else None
            if found is None:
                continue
            original: Callable[..., Any] = found
            setattr(owner, name, self._wrap(dotted, original))
            undo.append(functools.partial(setattr, owner, name, original))
            # Modules that imported the function by name call their own reference.
            if not path:
                for module in list(sys.modules.values()):
                    own = getattr(module, "__name__", "").startswith("bot.")
                    if own and getattr(module, name, None) is original:
                        setattr(module, name, self._wrap(dotted, original))
                        undo.append(functools.partial(setattr, module, name, original))
        try:
            yield
        finally:
            for step in reversed(undo):
                step()

    def _wrap(self, label: str, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(self._depth, label, 0)
            setattr(self._depth, label, depth + 1)
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                setattr(self._depth, label, depth)
                if depth == 0:
                    self.seconds[label] += time.perf_counter() - started

        return timed

    def take(self) -> dict[str, float]:
        taken = dict(self.seconds)
        self.seconds.clear()
        return taken


def traffic(entry: str, key: str) -> int:
    """Checkouts and reads through the gateway, tagged and untagged, on kept-alive connections (the
    clients stay open until the teardown, as a suite's last connections may); returns requests sent."""
    tagged = httpx.Client(base_url=entry, headers={"baggage": f"loopgate-sandbox={key}"}, timeout=10)
    untagged = httpx.Client(base_url=entry, timeout=10)
    sent = 0
    for client in (tagged, untagged):
        for _ in range(TAGGED_CHECKOUTS):
            client.get("/api/items/sku-tea-towel")
            client.post("/api/checkout", json={"sku": "sku-tea-towel", "qty": 1, "card": CARD})
            sent += 2
    _OPEN.extend([tagged, untagged])
    return sent


_OPEN: list[httpx.Client] = []


def left_behind(scratch: Path) -> list[str]:
    """Processes whose command line or cwd lies in the round's scratch dir, and its state dir's envs."""
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "cmdline", "cwd"]):
        with contextlib.suppress(psutil.Error):
            command, cwd = " ".join(process.info["cmdline"] or []), process.info["cwd"] or ""
            if str(scratch) in command or cwd.startswith(str(scratch)):
                found.append(f"pid {process.pid}")
    envs = scratch / "state" / "envs"
    found += [f"dir {p.name}" for p in envs.iterdir()] if envs.is_dir() else []
    return found


def hostile(config: Any) -> Any:
    """The config with every service's process group ignoring SIGTERM (see the module's docstring)."""
    services = {}
    for name, spec in config.services.items():
        local = spec.local.model_copy(update={"run": f"trap '' TERM; {spec.local.run}; sleep 60"})
        services[name] = spec.model_copy(update={"local": local})
    return config.model_copy(update={"services": services})


Round = tuple[float, float, dict[str, float], dict[str, float], list[str], float, str]
"""Sandbox teardown and baseline down (s), the time in each part of each, what was left behind, how
long `observed_requests` took right after the traffic (s) and what it saw of it."""


def one_round(timer: PartTimer, *, hostile_services: bool) -> Round:
    from bot.cli.verify import make_demo_repo
    from bot.config import RuntimeSettings
    from bot.pipeline import make_plan
    from bot.runtimes.local import LocalRuntime
    from bot.runtimes.protocol import Source

    scratch = Path(tempfile.mkdtemp(prefix="lg-bench-teardown-"))
    os.environ["LOOPGATE_STATE_DIR"] = str(scratch / "state")
    os.environ.setdefault("LOOPGATE_POSTGRES_DIR", str(scratch / "postgres"))
    try:
        repo = scratch / "shop"
        make_demo_repo(repo, CHANGE)
        plan = make_plan(repo, "main", f"agent/{CHANGE}")
        config = hostile(plan.config) if hostile_services else plan.config
        runtime = LocalRuntime(RuntimeSettings(state_dir=scratch / "state"))
        baseline = runtime.up_baseline(Source(repo, plan.base_sha), config)
        sandbox = runtime.new_sandbox(baseline, config, Source(repo, plan.merge_sha))
        for name in plan.affected:
            spec = config.services[name]
            built = runtime.build(sandbox, name, spec)
            forked = runtime.fork(sandbox, name, spec) if built.ok else None
            if forked is None or forked.status != "ready":
                raise SystemExit(f"fork of {name} failed: {built.detail or (forked and forked.detail)}")
        runtime.route(sandbox)
        traffic(baseline.entry_urls["gateway"], sandbox.routing_key)
        started = time.perf_counter()
        observed = runtime.observed_requests(sandbox)
        observed_s = time.perf_counter() - started
        mine = [r for r in observed if r.routing_key == sandbox.routing_key]
        seen = f"{len([r for r in mine if r.service == 'gateway'])}/{TAGGED_CHECKOUTS * 2} at the gateway"
        seen += f", {len(mine)} hops in all"
        timer.take()
        started = time.perf_counter()
        runtime.teardown(sandbox)
        sandbox_s = time.perf_counter() - started
        sandbox_parts = timer.take()
        started = time.perf_counter()
        runtime.down(baseline.env_id)
        baseline_s = time.perf_counter() - started
        baseline_parts = timer.take()
        for client in _OPEN:
            client.close()
        _OPEN.clear()
        left = left_behind(scratch)
        return sandbox_s, baseline_s, sandbox_parts, baseline_parts, left, observed_s, seen
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds, each with its own baseline")
    parser.add_argument("--hostile", action="store_true", help="services that ignore SIGTERM")
    opts = parser.parse_args()
    timer = PartTimer()
    sandbox_s: list[float] = []
    observed_s: list[float] = []
    baseline_s: list[float] = []
    parts: dict[str, dict[str, list[float]]] = {"sandbox": defaultdict(list), "baseline": defaultdict(list)}
    with timer.installed():
        for round_ in range(1, opts.runs + 1):
            s, b, s_parts, b_parts, left, o, seen = one_round(timer, hostile_services=opts.hostile)
            observed_s.append(o)
            sandbox_s.append(s)
            baseline_s.append(b)
            for side, taken in (("sandbox", s_parts), ("baseline", b_parts)):
                for label, seconds in taken.items():
                    parts[side][label].append(seconds)
            print(
                f"round {round_}: sandbox teardown {s * 1000:6.0f} ms, baseline down {b * 1000:6.0f} ms,"
                f" left behind: {', '.join(left) or 'nothing'};"
                f" observed_requests {o * 1000:4.0f} ms, saw {seen}",
                flush=True,
            )
    print()
    print(f"median sandbox teardown (1 fork):  {statistics.median(sandbox_s) * 1000:6.0f} ms")
    print(f"median baseline down (4 services): {statistics.median(baseline_s) * 1000:6.0f} ms")
    print(f"median observed_requests right after the traffic: {statistics.median(observed_s) * 1000:4.0f} ms")
    for side in ("sandbox", "baseline"):
        print(f"time in each part of the {side}'s stop (median ms; parts may overlap):")
        for label, values in sorted(parts[side].items(), key=lambda item: -statistics.median(item[1])):
            print(f"  {label:<30} {statistics.median(values) * 1000:6.0f}")


if __name__ == "__main__":
    main()
