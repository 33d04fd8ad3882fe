"""What every part of the Kubernetes runtime stands on: its settings, the cluster client made on first
use, the name of the cluster, and the config lookups every part makes."""

from __future__ import annotations

import secrets
import string
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from bot.config import Config, ConfigError, RuntimeSettings
from bot.config.kubernetes import KubernetesService, KubernetesSettings
from bot.runtimes.guard import infrastructure_errors
from bot.runtimes.kubernetes.client import Kube, api_client, context_name
from bot.runtimes.protocol import BuildOutcome

if TYPE_CHECKING:
    from bot.runtimes.kubernetes.baselines import BaselineInfo
    from bot.runtimes.kubernetes.sandboxes import SandboxState
    from bot.runtimes.kubernetes.state import Snapshot

_KEY_ALPHABET = string.ascii_lowercase + string.digits


infrastructure = infrastructure_errors("kubernetes runtime")


def new_routing_key() -> str:
    return "".join(secrets.choice(_KEY_ALPHABET) for _ in range(10))


def kube_settings(config: Config) -> KubernetesSettings:
    if config.runtime.kind != "kubernetes":
        raise ConfigError(f"runtime.kind is {config.runtime.kind}; this is the kubernetes runtime")
    return config.runtime.kubernetes


def kube_spec(config: Config, service: str) -> KubernetesService:
    spec = config.services[service].kubernetes
    if spec is None:
        raise ConfigError(f"services.{service}.kubernetes is required by the Kubernetes runtime")
    return spec


class KubeCore:
    """Settings, the cluster client, and what this process knows of baselines and sandboxes."""

    kind = "kubernetes"

    def __init__(self, settings: RuntimeSettings, api_client: Any | None = None) -> None:
        self.settings = settings
        self._api = api_client
        self._lock = threading.Lock()
        self._baselines: dict[str, BaselineInfo] = {}
        self._sandboxes: dict[str, SandboxState] = {}
        self._snapshots: dict[tuple[str, str], Snapshot] = {}
        """(sandbox key, service) -> the one dump its copies and its controls' come from."""
        self._base_builds: dict[tuple[str, str], Future[BuildOutcome]] = {}
        """(sandbox key, service) -> the in-cluster build of the base commit its controls share."""

    @property
    def confined(self) -> bool:
        """Builds, forks and suites run in their own pods, never in loopgate's process."""
        return True

    # -- the cluster ---------------------------------------------------------------------------------

    @property
    def api(self) -> Any:
        """The official client's ApiClient (untyped), made on first use from the operator's kubeconfig."""
        with self._lock:
            if self._api is None:
                self._api = api_client(self.settings.kubeconfig, self.settings.kube_context)
            return self._api

    @property
    def kube(self) -> Kube:
        return Kube(self.api)

    def _context(self) -> str:
        if self.settings.kubeconfig is None and self._api is not None and self.settings.kube_context is None:
            return self.kube.host  # a client handed in (tests, embedding): its server names the cluster
        return context_name(self.settings.kubeconfig, self.settings.kube_context)
