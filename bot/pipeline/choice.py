"""How the pipeline gets its runtime: one given runtime, or the one a config asks for (`runtime.kind`)."""

from __future__ import annotations

from collections.abc import Callable

from bot.config import Config
from bot.runtimes.choice import require_kind
from bot.runtimes.protocol import Runtime

RuntimeChooser = Callable[[Config], Runtime]
"""The runtime a config asks for (`runtime.kind`); raises ConfigError when this process has none."""


def only(runtime: Runtime) -> RuntimeChooser:
    """A chooser with one runtime: a config asking for another kind is a config error, by name."""

    def choose(config: Config) -> Runtime:
        require_kind(config, runtime.kind)
        return runtime

    return choose


class NotChosen:
    """Stands for the runtime until the config has chosen one; nothing may run before that."""

    def __getattr__(self, name: str) -> object:
        raise RuntimeError(f"no runtime chosen yet (asked for {name})")
