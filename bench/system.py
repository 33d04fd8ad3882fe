"""The benchmark's generated system: N small FastAPI services in a temporary git repository.

Service ``i`` calls services ``2i+1`` and ``2i+2`` (a binary tree rooted at the entry, ``svc00``), so
one request at the entry reaches every service. Each service forwards ``baggage`` and ``traceparent``
to its callees through ``LOOPGATE_<SERVICE>_URL``, as OpenTelemetry's default propagators would, and
answers with the tree of who served each hop (name, code version, pid).

The head commit changes one service (:data:`CHANGED`): its ``VERSION`` becomes ``"head"``, which is how
a response proves that the fork, not the baseline, served that hop.

``.loopgate.yml`` also names a small integration suite (``tests/suite.py``: one request at the entry,
tagged with the sandbox's baggage, must be answered by all services), so that ``loopgate verify`` runs
the whole pipeline on the system (bench/time_to_verdict.py); a full copy never runs it. ``build`` gives
every service a build command (time_to_verdict's builds); without it the services have none.

Both sides of the benchmark run exactly these files with exactly the same command: loopgate's
baseline and forks through :class:`LocalRuntime`, a full copy through :class:`FullCopy`.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bot.config import Config, load_config
from bot.runtimes.local.allowlist import child_env, env_var_name
from bot.runtimes.local.ports import free_port
from bot.runtimes.local.processes import ProcessRef, spawn, stop_groups

SERVICES = 12
CHANGED = "svc07"
"""The service the head commit changes: a leaf-side service two hops below the entry."""
ENTRY = "svc00"
LEAF = "svc11"
"""Calls nobody: the target of the hop-overhead measurement."""

RUN = "python -m uvicorn app:app --host 127.0.0.1 --port {port} --no-access-log --log-level warning"

_APP = '''"""{name}: a generated benchmark service (FastAPI, one httpx client, baggage propagation)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

NAME = "{name}"
VERSION = "base"
CALLEES = {callees!r}
URLS = {{callee: os.environ["LOOPGATE_" + callee.upper() + "_URL"] for callee in CALLEES}}
PROPAGATED = ("baggage", "traceparent")
state: dict[str, httpx.AsyncClient] = {{}}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as client:
        state["client"] = client
        yield


app = FastAPI(lifespan=lifespan)


@app.get("/healthz")
async def healthz() -> dict[str, bool]:
    return {{"ok": True}}


@app.get("/")
async def serve(request: Request) -> Any:
    headers = {{name: value for name in PROPAGATED if (value := request.headers.get(name))}}
    client = state["client"]
    try:
        answers = await asyncio.gather(*(client.get(URLS[c] + "/", headers=headers) for c in CALLEES))
    except httpx.HTTPError as exc:
        return JSONResponse({{"service": NAME, "error": repr(exc)}}, status_code=502)
    bad = [a for a in answers if a.status_code != 200]
    if bad:
        return JSONResponse({{"service": NAME, "error": f"callee answered {{bad[0].status_code}}"}}, 502)
    return {{
        "service": NAME,
        "version": VERSION,
        "pid": os.getpid(),
        "calls": [a.json() for a in answers],
    }}
'''


def service_names(count: int = SERVICES) -> list[str]:
    return [f"svc{i:02d}" for i in range(count)]


def callees(name: str, count: int = SERVICES) -> list[str]:
    index = int(name[3:])
    return [f"svc{c:02d}" for c in (2 * index + 1, 2 * index + 2) if c < count]


SUITE = '''"""The system's integration suite: the entry, tagged for the sandbox, answers with every hop."""

import json
import os
import sys
import urllib.request

request = urllib.request.Request(
    os.environ["LOOPGATE_SVC00_URL"] + "/", headers={{"baggage": os.environ["LOOPGATE_BAGGAGE"]}}
)
with urllib.request.urlopen(request, timeout=30) as answer:
    tree = json.load(answer)


def hops(node):
    yield node
    for call in node.get("calls", []):
        yield from hops(call)


served = sorted(hop["service"] for hop in hops(tree))
if len(served) != {count}:
    sys.exit(f"expected {count} hops, got {{served}}")
print("every hop answered:", " ".join(served))
'''


def config_text(count: int = SERVICES, build: str | None = None) -> str:
    lines = ["version: 1", "services:"]
    for name in service_names(count):
        lines += [
            f"  {name}:",
            f'    paths: ["services/{name}/**"]',
            "    local:",
            f'      run: "{RUN}"',
            f"      cwd: services/{name}",
            "      health: /healthz",
        ]
        if build is not None:
            lines.append(f'      build: "{build}"')
    lines += ["verify:", "  suites:", '    - {name: every-hop, run: "python tests/suite.py", timeout: 60}']
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class System:
    repo: Path
    base_sha: str
    head_sha: str
    config: Config


def generate(repo: Path, count: int = SERVICES, build: str | None = None) -> System:
    """Write the services, the suite and ``.loopgate.yml``, commit them (base), then commit the change
    (head, on the branch ``change``)."""
    repo.mkdir(parents=True)
    (repo / ".loopgate.yml").write_text(config_text(count, build))
    (repo / "tests").mkdir()
    (repo / "tests" / "suite.py").write_text(SUITE.format(count=count))
    for name in service_names(count):
        target = repo / "services" / name / "app.py"
        target.parent.mkdir(parents=True)
        target.write_text(_APP.format(name=name, callees=callees(name, count)))
    _git(repo, "init", "-q", "-b", "main")
    base = _commit(repo, "base: generated services")
    changed = repo / "services" / CHANGED / "app.py"
    changed.write_text(changed.read_text().replace('VERSION = "base"', 'VERSION = "head"'))
    _git(repo, "checkout", "-q", "-b", "change")
    head = _commit(repo, f"head: change {CHANGED}")
    _git(repo, "checkout", "-q", "main")
    return System(repo=repo, base_sha=base, head_sha=head, config=load_config(repo / ".loopgate.yml"))


def checkout(system: System, sha: str, target: Path) -> Path:
    """A plain checkout of ``sha`` (what a full copy of the system runs)."""
    _git(system.repo, "worktree", "add", "-q", "--detach", str(target), sha)
    return target


def _git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@localhost",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@localhost",
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def _commit(repo: Path, message: str) -> str:
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


# -- responses -------------------------------------------------------------------------------------


def hops(tree: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every hop of a response tree, depth first."""
    yield tree
    for call in tree.get("calls", []):
        yield from hops(call)


def served_by(tree: Mapping[str, Any]) -> dict[str, tuple[str, int]]:
    """Service -> (version, pid) of the instance that served it."""
    return {str(h["service"]): (str(h["version"]), int(h["pid"])) for h in hops(tree)}


# -- the other side: a full copy -------------------------------------------------------------------


@dataclass
class FullCopy:
    """All services of one checkout started in parallel, wired to each other directly (no Envoy).

    Started with loopgate's own ``spawn`` (``sh -c`` in a new session) and allow-listed environment,
    so the two sides differ only in what they start, not in how.
    """

    source: Path
    workdir: Path
    config: Config
    ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, ProcessRef] = field(default_factory=dict)

    def start(self) -> None:
        names = sorted(self.config.services)
        self.ports = {name: free_port() for name in names}
        urls = {env_var_name(name): f"http://127.0.0.1:{port}" for name, port in self.ports.items()}
        for name in names:
            spec = self.config.services[name].local
            env = child_env(self.workdir / "home" / name, {**urls, "LOOPGATE_SERVICE": name})
            process = spawn(
                spec.run.replace("{port}", str(self.ports[name])),
                cwd=self.source / spec.cwd,
                env=env,
                log=self.workdir / "logs" / f"{name}.log",
            )
            self.processes[name] = ProcessRef.of(process.pid)

    @property
    def entry_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[ENTRY]}"

    def stop(self) -> None:
        stop_groups(list(self.processes.values()), grace=5)
        self.processes.clear()


def wait_for(
    client: httpx.Client,
    url: str,
    headers: Mapping[str, str],
    accept: Callable[[Mapping[str, Any]], bool],
    timeout: float,
    poll: float = 0.005,
) -> dict[str, Any]:
    """Poll ``url`` until a 200 whose JSON body ``accept`` approves; the body, or TimeoutError."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = client.get(url, headers=headers)
            if response.status_code == 200:
                body: dict[str, Any] = response.json()
                if accept(body):
                    return body
                last = "200 without the expected hops"
            else:
                last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(poll)
    raise TimeoutError(f"{url} did not answer as expected within {timeout:g}s ({last})")
