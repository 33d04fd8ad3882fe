"""The App server's own settings, beside `AppSettings` (read from the same `LOOPGATE_*` variables).

Kept here rather than in `bot.config` so the server's switches change with the server; any later
move into `AppSettings` keeps the variable names.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOOPGATE_", extra="ignore")

    warm_baselines: bool = Field(
        default=True,
        description="When the default branch moves, start the baseline of its new head before the"
        " first run asks for it (`LOOPGATE_WARM_BASELINES`). Off: queued warm-ups are skipped at start.",
    )
