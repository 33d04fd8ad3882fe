"""Process settings read from `LOOPGATE_*` environment variables."""

from __future__ import annotations

from pathlib import Path

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
    envoy_base_port: int = Field(
        default=0,
        ge=0,
        le=65000,
        description="Envoy admin port; the listeners follow it. 0 picks free ports.",
    )
