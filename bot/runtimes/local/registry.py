"""What the local runtime has running, on disk under `LOOPGATE_STATE_DIR`, so any loopgate process
(a later `verify`, `sandbox delete`, `gc`) can find, share and clean up what another one started.

Layout: `envs/<env_id>/env.json` (one baseline), `envs/<env_id>/sandboxes/<key>/sandbox.json`,
`locks/<env_id>.lock` (held while an env or its routes change), and beside each record its journal
(`journal.py`): what was made for it, written before it was made.

A record's `state` says whether it may be used: `starting` and `stopping` belong to their `starter`
process; once that process is gone, the env or sandbox is half made and `gc` removes it, whoever
owns it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from bot.evidence import utcnow
from bot.runtimes.local.journal import Journal
from bot.runtimes.local.processes import ProcessRef
from bot.runtimes.local.seedlog import SeedSpan

State = Literal["starting", "ready", "stopping"]


class ProcessRecord(BaseModel):
    service: str
    port: int
    process: ProcessRef
    log: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class EnvRecord(BaseModel):
    env_id: str
    repo: str
    base_sha: str
    owner: ProcessRef | None = Field(description="None: kept until `loopgate env down` (from `env up`).")
    config_json: str
    state: State = "ready"
    starter: ProcessRef | None = Field(default=None, description="Who is starting or stopping it.")
    listeners: dict[str, int]
    services: dict[str, ProcessRecord] = Field(default_factory=dict)
    databases: list[str] = Field(default_factory=list, description="Postgres databases to drop at the end.")
    roles: list[str] = Field(default_factory=list, description="Their roles, dropped after the databases.")
    seed: SeedSpan | None = Field(default=None, description="Where `verify.seed` ran in the access log.")
    created_at: datetime = Field(default_factory=utcnow)


class SandboxRecord(BaseModel):
    routing_key: str
    env_id: str
    head_sha: str
    owner: ProcessRef | None = Field(description="None: kept until `loopgate sandbox delete`.")
    state: State = "ready"
    starter: ProcessRef | None = Field(default=None, description="Who is starting or stopping it.")
    log_offset: int = 0
    routed: bool = False
    forks: dict[str, ProcessRecord] = Field(default_factory=dict)
    jobs: list[ProcessRef] = Field(default_factory=list, description="Builds and suites while they run.")
    databases: list[str] = Field(default_factory=list, description="Postgres copies to drop at teardown.")
    roles: list[str] = Field(default_factory=list, description="Their roles, dropped after the copies.")
    controls: list[str] = Field(
        default_factory=list, description="Routing keys of its controls, torn down with it (recorded first)."
    )
    control_of: str | None = Field(default=None, description="The sandbox this one is a control of.")
    created_at: datetime = Field(default_factory=utcnow)


def env_id_for(repo: Path, base_sha: str) -> str:
    repo_hash = hashlib.sha256(str(repo.resolve()).encode()).hexdigest()[:8]
    return f"{repo_hash}-{base_sha[:12]}"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(path.suffix + f".{os.getpid()}.{threading.get_ident()}.tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


class Registry:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir

    def env_dir(self, env_id: str) -> Path:
        return self.root / "envs" / env_id

    def sandbox_dir(self, env_id: str, key: str) -> Path:
        return self.env_dir(env_id) / "sandboxes" / key

    @contextmanager
    def lock(self, env_id: str) -> Iterator[None]:
        path = self.root / "locks" / f"{env_id}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with flocked(path):
            yield

    def env_journal(self, env_id: str) -> Journal:
        return Journal(self.env_dir(env_id))

    def sandbox_journal(self, env_id: str, key: str) -> Journal:
        return Journal(self.sandbox_dir(env_id, key))

    def load_env(self, env_id: str) -> EnvRecord | None:
        """The record, or None when it is missing or unreadable (`env_problem` tells which)."""
        path = self.env_dir(env_id) / "env.json"
        try:
            return EnvRecord.model_validate_json(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None

    def env_problem(self, env_id: str) -> str | None:
        """Why `env.json` cannot be read: "missing", "corrupt: ..."; None when it can."""
        return _problem(self.env_dir(env_id) / "env.json", EnvRecord)

    def sandbox_problem(self, env_id: str, key: str) -> str | None:
        return _problem(self.sandbox_dir(env_id, key) / "sandbox.json", SandboxRecord)

    def sandbox_keys(self, env_id: str) -> list[str]:
        """Every sandbox directory, readable record or not."""
        root = self.env_dir(env_id) / "sandboxes"
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def save_env(self, record: EnvRecord) -> None:
        _write_atomic(self.env_dir(record.env_id) / "env.json", record.model_dump_json(indent=2))

    def env_ids(self) -> list[str]:
        envs = self.root / "envs"
        return sorted(p.name for p in envs.iterdir() if p.is_dir()) if envs.is_dir() else []

    def load_sandbox(self, env_id: str, key: str) -> SandboxRecord | None:
        path = self.sandbox_dir(env_id, key) / "sandbox.json"
        try:
            return SandboxRecord.model_validate_json(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None

    def save_sandbox(self, record: SandboxRecord) -> None:
        path = self.sandbox_dir(record.env_id, record.routing_key) / "sandbox.json"
        _write_atomic(path, record.model_dump_json(indent=2))

    def sandboxes(self, env_id: str) -> list[SandboxRecord]:
        root = self.env_dir(env_id) / "sandboxes"
        if not root.is_dir():
            return []
        records = (self.load_sandbox(env_id, p.name) for p in sorted(root.iterdir()))
        return [r for r in records if r is not None]

    def find_sandbox(self, key: str) -> SandboxRecord | None:
        for env_id in self.env_ids():
            record = self.load_sandbox(env_id, key)
            if record is not None:
                return record
        return None


def _problem(path: Path, model: type[BaseModel]) -> str | None:
    try:
        model.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError, ValidationError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"corrupt: {first[:200]}"
    return None


@contextmanager
def flocked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (made if missing) across processes, held for the block."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
