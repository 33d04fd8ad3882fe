"""The kinds loopgate reads and writes, and where the API server serves each: one table, so a REST
path is never spelled out by hand."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    """How one kind is served: its group/version, plural, and whether it lives in a namespace."""

    kind: str
    group: str
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        where = f"/namespaces/{namespace}" if namespace is not None and self.namespaced else ""
        tail = f"/{name}" if name is not None else ""
        return f"{root}{where}/{self.plural}{tail}{'/' + sub if sub else ''}"


DEPLOYMENT = Kind("Deployment", "apps", "v1", "deployments")
SERVICE = Kind("Service", "", "v1", "services")
POD = Kind("Pod", "", "v1", "pods")
EVENT = Kind("Event", "", "v1", "events")
JOB = Kind("Job", "batch", "v1", "jobs")
VIRTUAL_SERVICE = Kind("VirtualService", "networking.istio.io", "v1", "virtualservices")
HTTP_ROUTE = Kind("HTTPRoute", "gateway.networking.k8s.io", "v1", "httproutes")
GRPC_ROUTE = Kind("GRPCRoute", "gateway.networking.k8s.io", "v1", "grpcroutes")
GATEWAY_ROUTES = (HTTP_ROUTE, GRPC_ROUTE)
"""The Gateway API route kinds a sandbox may own (a GRPCRoute for a gRPC service)."""
REFERENCE_GRANT = Kind("ReferenceGrant", "gateway.networking.k8s.io", "v1beta1", "referencegrants")
CONFIG_MAP = Kind("ConfigMap", "", "v1", "configmaps")
SECRET = Kind("Secret", "", "v1", "secrets")
KINDS = {
    k.kind: k
    for k in (
        DEPLOYMENT,
        SERVICE,
        POD,
        EVENT,
        JOB,
        VIRTUAL_SERVICE,
        HTTP_ROUTE,
        GRPC_ROUTE,
        REFERENCE_GRANT,
        CONFIG_MAP,
        SECRET,
    )
}
