"""Process settings read from `LOOPGATE_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_state_dir() -> Path:
    return Path.home() / ".local" / "state" / "loopgate"


class RuntimeSettings(BaseSettings):
    """What the CLI and the local runtime need; the App's settings extend this in its own issue."""

    model_config = SettingsConfigDict(env_prefix="LOOPGATE_", extra="ignore")

    state_dir: Path = Field(default_factory=_default_state_dir)
    envoy_concurrency: int = Field(default=1, ge=1, le=16)
    postgres_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        description="Server for services' declared Postgres state; loopgate makes and drops databases there.",
    )
    postgres_mode: Literal["auto", "server", "own"] = Field(
        default="auto",
        description="`auto`: loopgate's own cluster only where `postgres_url`'s server lets a role log in"
        " without its password (trust); `server`: always `postgres_url`; `own`: always its own cluster.",
    )
    postgres_dir: Path | None = Field(
        default=None,
        description="Where loopgate's own PostgreSQL cluster lives, kept between runs."
        " Default: `<state_dir>/postgres`.",
    )
    envoy_base_port: int = Field(
        default=0,
        ge=0,
        le=65000,
        description="First Envoy listener port; the others follow it. 0 picks free ports.",
    )
    overlap: Literal["on", "off"] = Field(
        default="on",
        description="Start a run's baseline while the changed services build (local runtime). `off`"
        " keeps the older order, baseline first, then builds: for measuring what the overlap gains.",
    )
    confine: Literal["on", "off"] = Field(
        default="on",
        description="Run builds, forks and suites under bubblewrap. `off` gives up every guarantee of"
        " docs/security.md, and every report says so first.",
    )
    confine_uid: int = Field(default=65534, ge=1, description="The uid confined code runs as (root only).")
    confine_gid: int = Field(default=65534, ge=1)
    confine_hide: list[Path] = Field(
        default_factory=list, description="More paths confined code must not see (secrets, tokens)."
    )
    confine_expose: list[Path] = Field(
        default_factory=list,
        description="Paths under a hidden one (e.g. a toolchain in loopgate's HOME) confined code may read.",
    )

    kubeconfig: Path | None = Field(
        default=None,
        description="kubeconfig for the Kubernetes runtime; default KUBECONFIG or ~/.kube/config, else the"
        " in-cluster service account.",
    )
    kube_context: str | None = Field(default=None, description="kubeconfig context; default its current one.")

    def secret_paths(self) -> list[Path]:
        """Files and directories confined code must not see, besides the state dir and HOME."""
        own_cluster = [self.postgres_dir] if self.postgres_dir is not None else []
        kubeconfig = [self.kubeconfig] if self.kubeconfig is not None else []
        return [*self.confine_hide, *own_cluster, *kubeconfig]


class AppSettings(RuntimeSettings):
    """The GitHub App server (`loopgate serve`). A missing required setting stops start-up by name."""

    github_app_id: int
    github_private_key: str | None = None
    github_private_key_path: Path | None = None
    webhook_secret: str = Field(min_length=1)
    github_api_url: str = "https://api.github.com"
    database_url: str | None = Field(default=None, description="Default: SQLite under the state dir.")
    public_url: str = "http://127.0.0.1:8080"
    api_token: str | None = None
    workers: int = Field(default=2, ge=0, le=64)
    runtime: Literal["local", "kubernetes"] = Field(
        default="local",
        description="What runs sandboxes: this machine's processes and Envoy, or the cluster it can reach."
        " A repository whose .loopgate.yml asks for the other kind gets a config error.",
    )
    git_cache_dir: Path | None = None
    github_throttle: bool = Field(
        default=True, description="Pace requests as GitHub asks integrations to; off for a local fake."
    )
    heartbeat_s: float = Field(default=5.0, gt=0, description="How often a worker says its run is alive.")
    stale_after_s: float = Field(
        default=30.0, gt=0, description="A running run silent this long is reaped by any replica."
    )
    reap_every_s: float = Field(default=15.0, gt=0, description="How often each replica looks for them.")
    gc_every_s: float = Field(
        default=300.0, gt=0, description="How often each replica sweeps what dead runs or expiry left."
    )
    outbox_poll_s: float = Field(default=1.0, gt=0, description="How often the outbox is looked at.")
    outbox_backoff_s: float = Field(
        default=2.0, gt=0, description="First pause before a report GitHub refused is sent again; it doubles."
    )
    outbox_backoff_max_s: float = Field(default=300.0, gt=0)
    outbox_lease_s: float = Field(
        default=120.0, gt=0, description="How long a replica holds a report it is delivering."
    )

    def secret_paths(self) -> list[Path]:
        key = [self.github_private_key_path] if self.github_private_key_path is not None else []
        mirrors = [self.git_cache_dir] if self.git_cache_dir is not None else []
        database = self.database()
        sqlite: list[Path] = []
        if database.startswith("sqlite:///"):
            file = Path(database.removeprefix("sqlite:///"))
            sqlite = [file, *(file.with_name(file.name + end) for end in ("-wal", "-shm", "-journal"))]
        return [*super().secret_paths(), *key, *mirrors, *sqlite]

    def private_key(self) -> str:
        if self.github_private_key:
            return self.github_private_key
        if self.github_private_key_path is not None:
            return self.github_private_key_path.read_text(encoding="utf-8")
        raise ValueError("set LOOPGATE_GITHUB_PRIVATE_KEY or LOOPGATE_GITHUB_PRIVATE_KEY_PATH")

    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'loopgate.db'}"
