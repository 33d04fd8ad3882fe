"""A contract fake of the Kubernetes API server for loopgate's tests.

    with FakeCluster() as cluster:
        api = kubernetes.client.AppsV1Api(cluster.api_client())
        api.create_namespaced_deployment("shop", body)      # validated strictly, as a real server would
        assert cluster.requests[-1].body["spec"]["replicas"] == 1

No Kubernetes API server can run on the test machines, so this one serves `Store` (in-memory objects with
the semantics the code relies on: resourceVersion and 409, 404, 422 for schema-invalid bodies, label and
field selectors, watches, propagation on delete) over real HTTP to the official client. Bodies are
validated against the published schemas only (`validate.py`): Kubernetes' own from PyPI
`kubernetes-validate`, Istio's and Gateway API's from the CRD validators of npm `@kubernetes-models/*`
pinned in `tests/contracts/` (installed by `make contracts`).

With `images`, the fake node and controllers (`kubelet.py`: Deployments and Jobs become pods, pods
become local processes) and the mesh (`mesh.py`: routing by `routing`) run too.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import yaml

from tests.kube_fake.errors import AlreadyExists, BadRequest, Conflict, Gone, Invalid, KubeError, NotFound
from tests.kube_fake.server import KubeServer, RecordedRequest
from tests.kube_fake.store import RESOURCES, Store
from tests.kube_fake.validate import validate_object

if TYPE_CHECKING:
    import kubernetes.client

    from tests.kube_fake.images import ImageSpec

CONTEXT = "loopgate-fake"


class FakeCluster:
    """An API server on 127.0.0.1:<free port> over a fresh `Store`, plus a kubeconfig pointing at it.

    A context manager; `start()`/`stop()` also work. Stopping ends watches, closes connections, stops the
    controllers and joins every thread it started; the kubeconfig's temporary directory is removed."""

    def __init__(self, images: Mapping[str, ImageSpec] | None = None, routing: str = "istio") -> None:
        if routing not in ("istio", "gateway-api", "none"):
            raise ValueError(f"routing must be istio, gateway-api or none, not {routing!r}")
        self.images = dict(images) if images is not None else None
        self.routing = routing
        self.store = Store()
        self.server = KubeServer(self.store)
        self.kubelet: Any = None
        self.mesh: Any = None
        self._tmp: Path | None = None
        self._kubeconfig: Path | None = None

    # -- lifecycle --

    def start(self) -> FakeCluster:
        self.server.start()
        self._tmp = Path(tempfile.mkdtemp(prefix="kube-fake-"))
        self._kubeconfig = self._tmp / "kubeconfig"
        self._kubeconfig.write_text(yaml.safe_dump(self.kubeconfig_dict()), encoding="utf-8")
        if self.images is not None:
            try:
                self._start_controllers()
            except BaseException:
                self.stop()
                raise
        return self

    def _start_controllers(self) -> None:
        # Imported here: the controllers are another module's work, and a cluster without images
        # (API tests) must not depend on them.
        from tests.kube_fake.kubelet import Kubelet
        from tests.kube_fake.mesh import Mesh

        assert self.images is not None
        self.mesh = Mesh(self.store, routing=self.routing)
        self.mesh.start()
        self.kubelet = Kubelet(self.store, self.images, dns=getattr(self.mesh, "dns", None))
        self.kubelet.start()

    def stop(self) -> None:
        for part in (self.kubelet, self.mesh):
            if part is not None:
                part.stop()
        self.kubelet = self.mesh = None
        self.server.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> FakeCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- for the client --

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def kubeconfig(self) -> Path:
        """A kubeconfig file whose current context (`loopgate-fake`) is this server."""
        if self._kubeconfig is None:
            raise RuntimeError("the fake cluster is not started")
        return self._kubeconfig

    def kubeconfig_dict(self, namespace: str = "default") -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": CONTEXT, "cluster": {"server": self.url}}],
            "users": [{"name": CONTEXT, "user": {"token": "loopgate-fake-token"}}],
            "contexts": [
                {"name": CONTEXT, "context": {"cluster": CONTEXT, "user": CONTEXT, "namespace": namespace}}
            ],
            "current-context": CONTEXT,
        }

    def api_client(self) -> kubernetes.client.ApiClient:
        """A `kubernetes.client.ApiClient` configured from `kubeconfig` (the caller closes it)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig), context=CONTEXT)

    # -- what the client sent --

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far (a copy), in arrival order."""
        with self.server._lock:
            return list(self.server.requests)

    def clear_requests(self) -> None:
        with self.server._lock:
            self.server.requests.clear()

    @property
    def server_errors(self) -> list[str]:
        """Tracebacks of requests the fake itself failed on (answered 500). Should stay empty."""
        return list(self.server.errors)

    def written_objects(self) -> list[dict[str, Any]]:
        """The JSON bodies of every POST and PUT (objects the client created or replaced)."""
        return [r.body for r in self.requests if r.method in ("POST", "PUT") and isinstance(r.body, dict)]


def running_threads() -> set[threading.Thread]:
    """The live threads now (for tests asserting that a stopped cluster left none behind)."""
    return set(threading.enumerate())


def __getattr__(name: str) -> Any:
    # ImageSpec lives with the controllers (images.py); re-exported lazily so that the API server does
    # not depend on them.
    if name == "ImageSpec":
        from tests.kube_fake.images import ImageSpec

        return ImageSpec
    raise AttributeError(name)


__all__ = [
    "RESOURCES",
    "AlreadyExists",
    "BadRequest",
    "Conflict",
    "FakeCluster",
    "Gone",
    "ImageSpec",
    "Invalid",
    "KubeError",
    "NotFound",
    "RecordedRequest",
    "Store",
    "validate_object",
]
