"""A gRPC service forked in the fake cluster by the Kubernetes runtime: a tagged gRPC call (grpcio, the
tag in `baggage` or `x-loopgate-sandbox` metadata) reaches the fork and an untagged one the baseline,
under Istio (the VirtualService route) and Gateway API (a GRPCRoute, or an HTTPRoute where the team has
one on the Service); teardown and gc remove the GRPCRoutes. The services are real grpcio servers run by
the fake kubelet; the calls go through the fake mesh, which speaks HTTP/2 to a Service only where its
port says so, as Istio does."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from bot.config import Config, RuntimeSettings
from bot.runtimes.kubernetes import objects
from bot.runtimes.kubernetes.client import Forbidden, Kube, Listed
from bot.runtimes.kubernetes.gc import sweep
from bot.runtimes.kubernetes.kinds import Kind
from bot.runtimes.kubernetes.runtime import KubernetesRuntime
from bot.runtimes.protocol import Sandbox, Source
from tests.grpc_fixture import call_quote
from tests.kube_fake import FakeCluster
from tests.kube_fake.images import ImageSpec

pytestmark = pytest.mark.timeout(180)  # a hang fails in 3 min; a busy 2-core CI host is no hang

NS = "shop"
PORT = 50051
SERVER = """\
import json, os, sys
from concurrent import futures
import grpc

def quote(request, context):
    baggage = ",".join(v for k, v in context.invocation_metadata() if k == "baggage")
    identity = os.environ["NAME"] + "@" + os.environ.get("VERSION", "base")
    return json.dumps({"hops": [{"identity": identity, "baggage": baggage}]}).encode()

server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
handler = {"Quote": grpc.unary_unary_rpc_method_handler(quote)}
server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("shop.pricing.v1.Pricing", handler)])
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
server.wait_for_termination()
"""


@pytest.fixture
def images(tmp_path: Path) -> dict[str, ImageSpec]:
    (tmp_path / "pricing.py").write_text(SERVER)
    argv = [sys.executable, "pricing.py", "{port}"]
    return {
        "pricing:base": ImageSpec(argv=argv, cwd=tmp_path),
        "pricing:head": ImageSpec(argv=argv, cwd=tmp_path, env={"VERSION": "head"}),
    }


def baseline_objects(port_name: str = "grpc") -> list[dict[str, Any]]:
    """The team's gRPC Deployment and Service; the port's name (`grpc`) is all that declares HTTP/2."""
    labels = {"app": "pricing"}
    container = {
        "name": "app",
        "image": "pricing:base",
        "ports": [{"name": "rpc", "containerPort": 9000}],
        "env": [{"name": "NAME", "value": "pricing"}],
    }
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "pricing", "namespace": NS, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "pricing", "namespace": NS, "labels": labels},
            "spec": {"selector": labels, "ports": [{"name": port_name, "port": PORT, "targetPort": "rpc"}]},
        },
    ]


def pricing_fork(spec: Any, key: str, expires_at: str) -> dict[str, Any]:
    """The Deployment loopgate makes to fork the baseline's pricing under `key`."""
    baseline, baseline_service = baseline_objects()
    return objects.fork_deployment(
        baseline,
        service="pricing",
        spec=spec,
        key=key,
        image="pricing:head",
        namespace=NS,
        expires_at=expires_at,
        services_in_namespace=[baseline_service],
    )


def config(routing: str) -> Config:
    return Config.model_validate(
        {
            "version": 1,
            "runtime": {"kind": "kubernetes", "kubernetes": {"routing": routing, "ready_timeout": 20}},
            "services": {
                "pricing": {
                    "protocol": "grpc",
                    "paths": ["pricing/**"],
                    "kubernetes": {
                        "namespace": NS,
                        "workload": "deployment/pricing",
                        "port": PORT,
                        "image": "pricing:{sha}",
                    },
                }
            },
        }
    )


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def available(cluster: FakeCluster, name: str) -> bool:
    status = cluster.store.get("Deployment", NS, name).get("status") or {}
    return int(status.get("availableReplicas") or 0) >= 1


def refused(cluster: FakeCluster) -> list[str]:
    return [f"{r.method} {r.path}: {r.body}" for r in cluster.requests if r.status in (400, 422)]


@pytest.fixture(params=["istio", "gateway-api"])
def cluster(request: pytest.FixtureRequest, images: dict[str, ImageSpec]) -> Iterator[FakeCluster]:
    with FakeCluster(images=images, routing=request.param) as cluster:
        for obj in baseline_objects():
            cluster.store.create(obj)
        wait_for("the baseline Available", lambda: available(cluster, "pricing"))
        yield cluster


def sandbox_in(cluster: FakeCluster, tmp_path: Path) -> tuple[KubernetesRuntime, Sandbox]:
    runtime = KubernetesRuntime(
        RuntimeSettings(state_dir=tmp_path / "state"), api_client=cluster.api_client()
    )
    cfg = config(cluster.routing)
    baseline = runtime.up_baseline(Source(tmp_path, "base"), cfg)
    sandbox = runtime.new_sandbox(baseline, cfg, Source(tmp_path, "head"))
    runtime.build(sandbox, "pricing", cfg.services["pricing"])
    assert runtime.fork(sandbox, "pricing", cfg.services["pricing"]).status == "ready"
    assert runtime.route(sandbox) is None
    return runtime, sandbox


def served_by(cluster: FakeCluster, metadata: list[tuple[str, str]] | None = None) -> str:
    """Who answered a Quote sent to the baseline Service's name, as a meshed caller sends it."""
    return call_quote(cluster.mesh.port_of(NS, "pricing"), metadata=metadata)[0]


def test_a_tagged_grpc_call_reaches_the_fork_and_an_untagged_one_the_baseline(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    runtime, sandbox = sandbox_in(cluster, tmp_path)
    key = sandbox.routing_key
    fork_svc = cluster.store.get("Service", NS, f"pricing-lg-{key}")
    assert fork_svc["spec"]["ports"][0]["appProtocol"] == "grpc"  # the mesh speaks HTTP/2 to the fork
    fork = "pricing@head"
    wait_for("the tagged call at the fork", lambda: served_by(cluster, [("x-loopgate-sandbox", key)]) == fork)
    assert served_by(cluster) == "pricing@base"
    assert served_by(cluster, [("baggage", f"loopgate-sandbox={key}")]) == fork
    assert served_by(cluster, [("baggage", f"userId=alice, loopgate-sandbox={key};ttl=60")]) == fork
    assert served_by(cluster, [("baggage", f"loopgate-sandbox={key}0")]) == "pricing@base"  # not a prefix
    assert served_by(cluster, [("baggage", f"xloopgate-sandbox={key}")]) == "pricing@base"
    if cluster.routing == "gateway-api":
        grpc_route = cluster.store.get("GRPCRoute", NS, f"pricing-lg-{key}")
        conditions = grpc_route["status"]["parents"][0]["conditions"]
        assert [(c["type"], c["status"]) for c in conditions] == [
            ("Accepted", "True"),
            ("ResolvedRefs", "True"),
        ]
        assert cluster.store.list("HTTPRoute", NS) == []
    else:
        vs = cluster.store.get("VirtualService", NS, "pricing-loopgate")
        assert objects.route_keys(vs) == [key]

    runtime.teardown(sandbox)
    assert cluster.store.list("GRPCRoute", NS) == []
    assert cluster.store.list("VirtualService", NS) == []
    assert served_by(cluster, [("baggage", f"loopgate-sandbox={key}")]) == "pricing@base"
    assert refused(cluster) == []


def test_abc123_does_not_match_abc1234(images: dict[str, ImageSpec]) -> None:
    """Two sandboxes whose keys share a prefix, routed by loopgate's own GRPCRoutes: each call goes to
    the fork of its own key exactly."""
    with FakeCluster(images=images, routing="gateway-api") as cluster:
        store = cluster.store
        for obj in baseline_objects():
            store.create(obj)
        spec = config("gateway-api").services["pricing"].kubernetes
        assert spec is not None
        stamp = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        for key in ("abc123", "abc1234"):
            fork = pricing_fork(spec, key, stamp)
            fork["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "NAME", "value": key}]
            store.create(fork)
            store.create(
                objects.fork_service(
                    fork, service="pricing", spec=spec, key=key, expires_at=stamp, protocol="grpc"
                )
            )
            store.create(
                objects.http_route(
                    service="pricing",
                    spec=spec,
                    key=key,
                    routing=config("gateway-api").routing,
                    fork_service=f"pricing-lg-{key}",
                    namespace=NS,
                    expires_at=stamp,
                    kind="GRPCRoute",
                )
            )
        for name in ("pricing", "pricing-lg-abc123", "pricing-lg-abc1234"):
            wait_for(f"{name} Available", lambda name=name: available(cluster, name))
        assert served_by(cluster, [("baggage", "loopgate-sandbox=abc123")]) == "abc123@head"
        assert served_by(cluster, [("baggage", "loopgate-sandbox=abc1234")]) == "abc1234@head"
        assert served_by(cluster, [("x-loopgate-sandbox", "abc123")]) == "abc123@head"
        assert served_by(cluster, [("baggage", "loopgate-sandbox=abc12345")]) == "pricing@base"
        assert served_by(cluster) == "pricing@base"
        assert refused(cluster) == []


def test_a_fork_service_without_http2_is_caught_by_the_mesh(images: dict[str, ImageSpec]) -> None:
    """What the appProtocol is for: a fork Service that declares HTTP/1.1 gets HTTP/1.1 from the mesh,
    which a gRPC server refuses (the fake answers UNAVAILABLE saying so)."""
    with FakeCluster(images=images, routing="gateway-api") as cluster:
        store = cluster.store
        for obj in baseline_objects():
            store.create(obj)
        spec = config("gateway-api").services["pricing"].kubernetes
        assert spec is not None
        stamp = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        fork = pricing_fork(spec, "abc123", stamp)
        store.create(fork)
        store.create(objects.fork_service(fork, service="pricing", spec=spec, key="abc123", expires_at=stamp))
        routing = config("gateway-api").routing
        store.create(
            objects.http_route(
                service="pricing",
                spec=spec,
                key="abc123",
                routing=routing,
                fork_service="pricing-lg-abc123",
                namespace=NS,
                expires_at=stamp,
                kind="GRPCRoute",
            )
        )
        wait_for("the fork Available", lambda: available(cluster, "pricing-lg-abc123"))
        with pytest.raises(grpc.RpcError) as error:
            served_by(cluster, [("x-loopgate-sandbox", "abc123")])
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "declares no HTTP/2" in (error.value.details() or "")


def test_beside_the_teams_httproute_a_grpc_service_gets_an_httproute(
    images: dict[str, ImageSpec], tmp_path: Path
) -> None:
    """GEP-1426: a GRPCRoute on the Service would have the mesh ignore the team's HTTPRoute."""
    with FakeCluster(images=images, routing="gateway-api") as cluster:
        for obj in baseline_objects():
            cluster.store.create(obj)
        team = {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {
                "name": "pricing-team",
                "namespace": NS,
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
            },
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "pricing", "port": PORT}],
                "rules": [{"backendRefs": [{"name": "pricing", "port": PORT}]}],
            },
        }
        cluster.store.create(team)
        wait_for("the baseline Available", lambda: available(cluster, "pricing"))
        runtime, sandbox = sandbox_in(cluster, tmp_path)
        key = sandbox.routing_key
        assert cluster.store.list("GRPCRoute", NS) == []
        assert sorted(r["metadata"]["name"] for r in cluster.store.list("HTTPRoute", NS)) == [
            f"pricing-lg-{key}",
            "pricing-team",
        ]
        assert served_by(cluster, [("baggage", f"loopgate-sandbox={key}")]) == "pricing@head"
        assert served_by(cluster) == "pricing@base"
        runtime.teardown(sandbox)
        assert [r["metadata"]["name"] for r in cluster.store.list("HTTPRoute", NS)] == ["pricing-team"]
        assert refused(cluster) == []


def test_gc_removes_grpcroutes_expired_or_whose_fork_is_gone(tmp_path: Path) -> None:
    with FakeCluster() as cluster:
        store = cluster.store
        now = datetime.now(UTC)
        spec = config("gateway-api").services["pricing"].kubernetes
        assert spec is not None
        later = (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        earlier = (now - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        fork = pricing_fork(spec, "live0001", later)
        store.create(fork)
        for key, stamp in (("live0001", later), ("orphan01", later), ("expired1", earlier)):
            store.create(
                objects.http_route(
                    service="pricing",
                    spec=spec,
                    key=key,
                    routing=config("gateway-api").routing,
                    fork_service=f"pricing-lg-{key}",
                    namespace=NS,
                    expires_at=stamp,
                    kind="GRPCRoute",
                )
            )
        runtime = KubernetesRuntime(
            RuntimeSettings(state_dir=tmp_path / "state"), api_client=cluster.api_client()
        )
        removed = runtime.gc()
        assert any(
            "GRPCRoute shop/pricing-lg-orphan01 (the fork of sandbox orphan01 is gone)" in r for r in removed
        )
        assert any("GRPCRoute shop/pricing-lg-expired1 (expired at" in r for r in removed)
        assert [r["metadata"]["name"] for r in store.list("GRPCRoute", NS)] == ["pricing-lg-live0001"]
        assert runtime.gc() == []
        assert refused(cluster) == []


class _Withheld(Kube):
    """The App's client under the chart's gateway-api RBAC, in a cluster that also serves Istio: every
    VirtualService list is refused (403), as the API server refuses it."""

    def __init__(self, api: Any, withheld: tuple[str, ...]) -> None:
        super().__init__(api)
        self.withheld = withheld

    def list(self, kind: Kind, namespace: str | None, **kwargs: Any) -> Listed:
        if kind.kind in self.withheld:
            raise Forbidden(f"list {kind.plural}: loopgate is not allowed to (403): forbidden")
        return super().list(kind, namespace, **kwargs)


def test_gc_skips_a_routing_kind_the_rbac_withholds_but_no_other() -> None:
    with FakeCluster() as cluster:
        spec = config("gateway-api").services["pricing"].kubernetes
        assert spec is not None
        later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        cluster.store.create(
            objects.http_route(
                service="pricing",
                spec=spec,
                key="orphan01",
                routing=config("gateway-api").routing,
                fork_service="pricing-lg-orphan01",
                namespace=NS,
                expires_at=later,
                kind="GRPCRoute",
            )
        )
        removed = sweep(_Withheld(cluster.api_client(), ("VirtualService",)))
        assert removed == [
            "deleted GRPCRoute shop/pricing-lg-orphan01 (the fork of sandbox orphan01 is gone)"
        ]
        with pytest.raises(Forbidden):  # a kind every mode needs: the RBAC is wrong, and gc says so
            sweep(_Withheld(cluster.api_client(), ("Deployment",)))
