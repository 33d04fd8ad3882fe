"""Which runtime runs a repository: the one its `.loopgate.yml` asks for (`runtime.kind`).

A process (the CLI, the App, the Action) may hold one runtime of each kind, made on first need: a
local runtime checks bubblewrap and starts Envoy, a Kubernetes runtime reads a kubeconfig, and neither
is wanted by a repository that uses the other. An App deployed for one kind (`LOOPGATE_RUNTIME`) refuses
configs asking for the other with a config error that names both.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Literal

from bot.config import CONFIG_FILE, Config, ConfigError
from bot.config.settings import RuntimeSettings
from bot.runtimes.protocol import Runtime

Kind = Literal["local", "kubernetes"]


def require_kind(config: Config, kind: str, chosen_by: str | None = None) -> None:
    """A config asking for another runtime than the one this process runs is a config error naming both
    (and the setting that chose this process's, when one did)."""
    if config.runtime.kind != kind:
        by = f" ({chosen_by})" if chosen_by else ""
        asked = config.runtime.kind
        raise ConfigError(
            f"{CONFIG_FILE} asks for runtime.kind {asked}; this loopgate runs the {kind} runtime{by}"
        )


class Runtimes:
    """A chooser for the pipeline: `runtimes(config)` is the runtime that config asks for."""

    def __init__(
        self,
        settings: RuntimeSettings,
        *,
        persistent: bool = False,
        only: Kind | None = None,
        on_made: Callable[[Runtime], None] | None = None,
    ) -> None:
        """`persistent`: what the local runtime starts outlives this process (`--keep`, the App).
        `only`: the one kind this process runs. `on_made` is told of each runtime as it is made."""
        self.settings = settings
        self.persistent = persistent
        self.only = only
        self.on_made = on_made
        self._made: dict[str, Runtime] = {}
        self._lock = threading.Lock()

    def __call__(self, config: Config) -> Runtime:
        if self.only is not None:
            require_kind(config, self.only, "LOOPGATE_RUNTIME")
        return self.get(config.runtime.kind)

    def get(self, kind: Kind) -> Runtime:
        with self._lock:
            runtime = self._made.get(kind)
            if runtime is None:
                runtime = self._made[kind] = self._make(kind)
                if self.on_made is not None:
                    self.on_made(runtime)
            return runtime

    def made(self) -> list[Runtime]:
        with self._lock:
            return list(self._made.values())

    def _make(self, kind: Kind) -> Runtime:
        # Imported here: each runtime pulls in what only it needs (Envoy, the kubernetes client).
        if kind == "kubernetes":
            from bot.runtimes.kubernetes.runtime import KubernetesRuntime

            return KubernetesRuntime(self.settings)
        from bot.runtimes.local import LocalRuntime

        return LocalRuntime(self.settings, persistent=self.persistent)
