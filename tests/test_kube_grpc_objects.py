"""gRPC services on Kubernetes, as objects: the GRPCRoute a sandbox adds under Gateway API (the same
matches as its HTTPRoute), the fork Service's appProtocol, what `loopgate render` prints for a gRPC
service, the fake API server's strict validation of GRPCRoute (the CRD validator of the pinned
`@kubernetes-models/gateway-api`), and how the fake mesh picks a GRPCRoute rule."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from bot.config import ConfigError, parse_config
from bot.config.kubernetes import KubernetesService
from bot.config.schema import Routing
from bot.runtimes.kubernetes import objects
from tests.conftest import run_cli
from tests.kube_fake import FakeCluster
from tests.kube_fake.grpcroutes import method_of, route_grpc
from tests.kube_fake.validate import validate_object

KEY = "abc123"
EXPIRES = "2026-11-29T17:00:00Z"
SPEC = KubernetesService(namespace="shop", workload="deployment/pricing", port=50051, image="p:{sha}")
ROUTING = Routing()
QUOTE = "/shop.pricing.v1.Pricing/Quote"


def valid(obj: dict[str, Any]) -> None:
    assert validate_object(obj) == [], obj


def route(kind: Any, key: str = KEY, **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "service": "pricing",
        "spec": SPEC,
        "key": key,
        "routing": ROUTING,
        "fork_service": f"pricing-lg-{key}",
        "namespace": "shop",
        "expires_at": EXPIRES,
        "kind": kind,
    }
    args.update(overrides)
    return objects.http_route(**args)


# ---- the GRPCRoute ----


def test_grpc_route_is_the_http_routes_twin_and_validates_strictly() -> None:
    grpc_route, http_route = route("GRPCRoute"), route("HTTPRoute")
    valid(grpc_route)
    assert grpc_route["apiVersion"] == "gateway.networking.k8s.io/v1" and grpc_route["kind"] == "GRPCRoute"
    assert grpc_route["metadata"] == http_route["metadata"]  # same name, labels, expires-at
    assert grpc_route["spec"] == http_route["spec"]  # same parent, matches, backends
    tagged, untagged = grpc_route["spec"]["rules"]
    assert tagged["matches"] == objects.tagged_matches(ROUTING, KEY)
    assert tagged["matches"][0]["headers"][0]["value"] == objects.baggage_regex("loopgate-sandbox", KEY)
    assert tagged["backendRefs"] == [
        {"group": "", "kind": "Service", "name": "pricing-lg-abc123", "port": 50051}
    ]
    assert untagged == {"backendRefs": [{"group": "", "kind": "Service", "name": "pricing", "port": 50051}]}
    other_ns = route("GRPCRoute", namespace="sandboxes")
    valid(other_ns)
    assert other_ns["spec"]["rules"][0]["backendRefs"][0]["namespace"] == "sandboxes"


def test_which_route_a_service_gets() -> None:
    assert objects.gateway_route_kind("grpc") == "GRPCRoute"
    # GEP-1426: a GRPCRoute beside the team's HTTPRoute would switch the team's off.
    assert objects.gateway_route_kind("grpc", team_http_routes=True) == "HTTPRoute"
    assert objects.gateway_route_kind("http2") == "HTTPRoute"
    assert objects.gateway_route_kind("http") == "HTTPRoute"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"key": "abc_123"}, "routing key 'abc_123' is not [a-z0-9]{6,16}"),
        ({"key": "ABC123"}, "routing key 'ABC123' is not"),
        ({"key": "abc123\nx"}, "is not [a-z0-9]{6,16}"),
        ({"kind": "TCPRoute"}, "route kind 'TCPRoute' is not one of HTTPRoute, GRPCRoute"),
    ],
)
def test_a_route_that_would_be_invalid_is_refused_with_its_cause(change: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        route(**{"kind": "GRPCRoute", **change})


def test_a_service_name_that_would_make_an_invalid_object_is_refused_by_the_config() -> None:
    for name in ("Pricing", "pricing_v1", "-pricing", "p" * 41):
        text = (
            "version: 1\nruntime: {kind: kubernetes}\nservices:\n"
            f"  {json.dumps(name)}:\n    protocol: grpc\n    paths: [x/**]\n"
            "    kubernetes: {namespace: shop, workload: deployment/p, image: 'p:{sha}'}\n"
        )
        with pytest.raises(ConfigError, match="must be a DNS-1123 label"):
            parse_config(text)


# ---- the fork Service's appProtocol ----


@pytest.mark.parametrize(
    ("protocol", "declared", "expected"),
    [
        ("http", None, None),
        ("http", "http", "http"),
        ("grpc", None, "grpc"),
        ("grpc", "http", "grpc"),  # HTTP/1.1 to a gRPC server fails: the service's protocol wins
        ("grpc", "kubernetes.io/h2c", "kubernetes.io/h2c"),  # the team's own HTTP/2 value stays
        ("http2", None, "kubernetes.io/h2c"),
        ("http2", "HTTP2", "HTTP2"),
    ],
)
def test_app_protocol(protocol: Any, declared: str | None, expected: str | None) -> None:
    assert objects.app_protocol(protocol, declared) == expected


def fork_of(protocol: Any, baseline_port: dict[str, Any] | None = None) -> dict[str, Any]:
    baseline = {
        "metadata": {"name": "pricing"},
        "spec": {
            "selector": {"matchLabels": {"app": "pricing"}},
            "template": {
                "metadata": {"labels": {"app": "pricing"}},
                "spec": {
                    "containers": [{"name": "app", "image": "p:1", "ports": [{"containerPort": 50051}]}]
                },
            },
        },
    }
    baseline_service = {"spec": {"ports": [baseline_port]}} if baseline_port else None
    fork = objects.fork_deployment(
        baseline,
        service="pricing",
        spec=SPEC,
        key=KEY,
        image="p:2",
        namespace="shop",
        expires_at=EXPIRES,
        services_in_namespace=[],
    )
    svc = objects.fork_service(
        fork,
        service="pricing",
        spec=SPEC,
        key=KEY,
        expires_at=EXPIRES,
        baseline_service=baseline_service,
        protocol=protocol,
    )
    valid(fork)
    valid(svc)
    return svc


def test_a_grpc_forks_service_tells_the_mesh_to_speak_http2() -> None:
    assert fork_of("grpc")["spec"]["ports"] == [
        {"name": "http", "port": 50051, "protocol": "TCP", "targetPort": 50051, "appProtocol": "grpc"}
    ]
    copied = fork_of("grpc", {"name": "rpc", "port": 50051, "targetPort": "rpc"})
    assert copied["spec"]["ports"] == [
        {"port": 50051, "name": "rpc", "targetPort": "rpc", "appProtocol": "grpc"}
    ]
    h2c = fork_of("http2", {"name": "web", "port": 50051, "appProtocol": "http"})
    assert h2c["spec"]["ports"][0]["appProtocol"] == "kubernetes.io/h2c"
    assert "appProtocol" not in fork_of("http")["spec"]["ports"][0]


# ---- loopgate render ----

PRICING = """\
version: 1
runtime:
  kind: kubernetes
  kubernetes: {routing: gateway-api, sandbox_namespace: sandboxes}
services:
  orders:
    paths: ["services/orders/**"]
    kubernetes: {namespace: shop, workload: deployment/orders, port: 80, image: "shop/orders:{sha}"}
  pricing:
    protocol: grpc
    paths: ["services/pricing/**"]
    kubernetes: {namespace: shop, workload: deployment/pricing, port: 50051, image: "shop/pricing:{sha}"}
"""


@pytest.mark.parametrize("routing", ["gateway-api", "istio"])
def test_render_shows_a_grpcroute_for_a_grpc_service(tmp_path: Path, routing: str) -> None:
    config = tmp_path / ".loopgate.yml"
    config.write_text(PRICING)
    args = ["render", "--runtime", "kubernetes", "--config", str(config), "--sandbox", KEY]
    done = run_cli(*args, "--routing", routing, "--controls")
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d is not None]
    problems = {f"{d['kind']}/{d['metadata']['name']}": validate_object(d) for d in docs}
    assert {k: v for k, v in problems.items() if v} == {}
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    fork_services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert fork_services[f"pricing-lg-{KEY}"]["spec"]["ports"][0]["appProtocol"] == "grpc"
    assert "appProtocol" not in fork_services[f"orders-lg-{KEY}"]["spec"]["ports"][0]
    if routing == "istio":
        assert not {k for k, _ in kinds} & {"GRPCRoute", "HTTPRoute"}
        return
    grpc_routes = sorted(name for kind, name in kinds if kind == "GRPCRoute")
    assert len(grpc_routes) == 3 and f"pricing-lg-{KEY}" in grpc_routes  # the sandbox and its controls
    assert all(name.startswith("pricing-") for name in grpc_routes)
    assert sorted(name for kind, name in kinds if kind == "HTTPRoute")[0].startswith("orders-lg-")
    grants = [d for d in docs if d["kind"] == "ReferenceGrant"]
    assert grants and all(
        {f["kind"] for f in g["spec"]["from"]} == {"HTTPRoute", "GRPCRoute"} for g in grants
    )


def test_render_refuses_a_bad_key_for_a_grpc_service(tmp_path: Path) -> None:
    config = tmp_path / ".loopgate.yml"
    config.write_text(PRICING)
    done = run_cli("render", "--runtime", "kubernetes", "--config", str(config), "--sandbox", "abc_123")
    assert done.returncode == 2
    assert "abc_123" in done.stderr and len(done.stderr.strip().splitlines()) == 1


# ---- the fake API server ----


@pytest.fixture(scope="module")
def api() -> Iterator[client.ApiClient]:
    with FakeCluster() as cluster:
        cluster.store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
        yield cluster.api_client()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda r: r["spec"]["rules"][0].update(timeouts={"request": "1s"}),
            "spec.rules[0].timeouts: unknown field",
        ),
        (
            lambda r: r["spec"]["rules"][0]["matches"][0]["headers"][0].update(type="Prefix"),
            "Unsupported value",
        ),
        (lambda r: r["spec"]["rules"][0]["matches"][0].update(path={"value": "/"}), "unknown field"),
        (
            lambda r: r["spec"]["rules"][0]["matches"][1]["headers"][0].update(name="bad name"),
            "must match pattern",
        ),
    ],
)
def test_the_fake_serves_grpcroutes_and_refuses_invalid_ones(
    api: client.ApiClient, edit: Any, message: str
) -> None:
    custom = client.CustomObjectsApi(api)
    args = ("gateway.networking.k8s.io", "v1", "shop", "grpcroutes")
    good = route("GRPCRoute")
    good["metadata"].pop("namespace")
    good["metadata"]["name"] = f"ok-{abs(hash(message)) % 10_000}"
    assert custom.create_namespaced_custom_object(*args, good)["kind"] == "GRPCRoute"
    bad = route("GRPCRoute")
    bad["metadata"]["name"] = "bad"
    edit(bad)
    with pytest.raises(ApiException) as error:
        custom.create_namespaced_custom_object(*args, bad)
    assert error.value.status == 422
    assert message in json.loads(error.value.body)["message"]


# ---- how the fake mesh picks a GRPCRoute rule ----


def headers(**values: str) -> dict[str, str]:
    return {k.replace("_", "-"): v for k, v in values.items()}


def test_the_fake_mesh_routes_by_loopgates_grpcroute_with_exact_member_semantics() -> None:
    ours = route("GRPCRoute")
    ours["metadata"]["creationTimestamp"] = "2026-11-29T10:00:00Z"
    assert method_of(QUOTE) == ("shop.pricing.v1.Pricing", "Quote") and method_of("/healthz") is None

    def target(**hdrs: str) -> str | None:
        chosen = route_grpc([ours], QUOTE, headers(**hdrs))
        return chosen.service if chosen else None

    assert target() == "pricing"
    assert target(baggage=f"loopgate-sandbox={KEY}") == f"pricing-lg-{KEY}"
    assert target(baggage=f"a=b, loopgate-sandbox={KEY};p=1,c=d") == f"pricing-lg-{KEY}"
    assert target(x_loopgate_sandbox=KEY) == f"pricing-lg-{KEY}"
    assert target(baggage="loopgate-sandbox=abc1234") == "pricing"
    assert target(baggage="xloopgate-sandbox=abc123") == "pricing"
    assert target(x_loopgate_sandbox="abc1234") == "pricing"


def test_grpcroute_precedence_method_then_headers_then_age() -> None:
    def grpc_route(name: str, stamp: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "namespace": "shop", "creationTimestamp": stamp},
            "spec": {"rules": rules},
        }

    def to(service: str, **match: Any) -> dict[str, Any]:
        return {"matches": [match] if match else [], "backendRefs": [{"name": service}]}

    routes = [
        grpc_route("a", "2026-01-02T00:00:00Z", [to("any")]),
        grpc_route("b", "2026-01-01T00:00:00Z", [to("svc", method={"service": "shop.pricing.v1.Pricing"})]),
        grpc_route(
            "c",
            "2026-01-03T00:00:00Z",
            [to("exact", method={"service": "shop.pricing.v1.Pricing", "method": "Quote"})],
        ),
        grpc_route(
            "d",
            "2026-01-04T00:00:00Z",
            [to("regex", method={"type": "RegularExpression", "service": r"shop\..*", "method": "W.*"})],
        ),
    ]

    def chosen(path: str, **hdrs: str) -> str | None:
        target = route_grpc(routes, path, headers(**hdrs))
        return target.service if target else None

    assert chosen(QUOTE) == "exact"
    assert chosen("/shop.pricing.v1.Pricing/Watch") == "svc"  # a longer service beats the regex's
    assert chosen("/shop.other.v1.Other/Watch") == "regex"
    assert chosen("/other.Other/Get") == "any"
    assert route_grpc([], QUOTE, {}) is None
