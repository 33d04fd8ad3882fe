"""`loopgate render --runtime kubernetes`: every object it prints passes strict validation (published
Kubernetes schemas, Istio and Gateway API CRD validators), for the example shop switched to Kubernetes;
bad input exits 2 with one line that says why."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.config import parse_config
from bot.runtimes.kubernetes import objects
from bot.runtimes.kubernetes.render import render_sandbox, skeleton_deployment, to_yaml
from tests.conftest import run_cli
from tests.kube_fake.validate import validate_object

SERVICES = ("gateway", "orders", "inventory", "payments")

SHOP = """\
version: 1
runtime:
  kind: kubernetes
  kubernetes: {routing: istio, ttl: 1800}
services:
  gateway:
    paths: ["services/gateway/**"]
    kubernetes: {namespace: shop, workload: deployment/gateway, port: 80, image: "shop/gateway:{sha}"}
  orders:
    paths: ["services/orders/**"]
    kubernetes: {namespace: shop, workload: deployment/orders, port: 80, image: "shop/orders:{sha}"}
  inventory:
    paths: ["services/inventory/**"]
    kubernetes: {namespace: shop, workload: deployment/inventory, port: 80, image: "shop/inventory:{sha}"}
  payments:
    paths: ["services/payments/**"]
    kubernetes: {namespace: shop, workload: deployment/payments, port: 80, image: "shop/payments:{sha}"}
verify:
  suites:
    - name: e2e
      timeout: 120
      paths: ["e2e/**"]
      kubernetes:
        image: "shop/e2e:{base_sha}"
        command: [python, -m, pytest, e2e, -q, "--junitxml=$(LOOPGATE_JUNIT_XML)"]
"""


def write(tmp_path: Path, text: str, name: str = ".loopgate.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def render(*args: str) -> tuple[int, str, str]:
    done = run_cli("render", *args)
    return done.returncode, done.stdout, done.stderr


def documents(stdout: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(stdout) if d is not None]


def assert_valid(docs: list[dict[str, Any]]) -> None:
    problems = {f"{d['kind']}/{d['metadata']['name']}": validate_object(d) for d in docs}
    assert {k: v for k, v in problems.items() if v} == {}


def by_kind(docs: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d["metadata"]["name"])
    return out


@pytest.mark.parametrize("routing", ["istio", "gateway-api"])
def test_render_of_the_shop_passes_strict_validation(tmp_path: Path, routing: str) -> None:
    config = write(tmp_path, SHOP)
    code, out, err = render(
        "--runtime",
        "kubernetes",
        "--config",
        str(config),
        "--sandbox",
        "abc123",
        "--routing",
        routing,
        "--head",
        "1111111",
        "--base",
        "2222222",
    )
    assert code == 0, err
    assert out.startswith("# loopgate render: the objects the Kubernetes runtime would create or patch")
    assert "SKELETON" in out
    docs = documents(out)
    assert_valid(docs)
    kinds = by_kind(docs)
    assert kinds["Deployment"] == [f"{s}-lg-abc123" for s in sorted(SERVICES)]
    assert kinds["Service"] == [f"{s}-lg-abc123" for s in sorted(SERVICES)]
    assert kinds["Job"] == ["lg-abc123-e2e"]
    if routing == "istio":
        assert kinds["VirtualService"] == [f"{s}-loopgate" for s in sorted(SERVICES)]
        assert "HTTPRoute" not in kinds
    else:
        assert kinds["HTTPRoute"] == [f"{s}-lg-abc123" for s in sorted(SERVICES)]
        assert "VirtualService" not in kinds and "ReferenceGrant" not in kinds
    images = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["image"]
        for d in docs
        if d["kind"] in ("Deployment", "Job")
    }
    assert images["orders-lg-abc123"] == "shop/orders:1111111"
    assert images["lg-abc123-e2e"] == "shop/e2e:2222222"
    for doc in docs:
        if doc["kind"] != "VirtualService":
            assert doc["metadata"]["labels"]["loopgate.dev/sandbox"] == "abc123"


def test_render_with_routing_none_and_one_service(tmp_path: Path) -> None:
    config = write(tmp_path, SHOP)
    code, out, err = render(
        "--runtime",
        "kubernetes",
        "--config",
        str(config),
        "--sandbox",
        "abc123",
        "--routing",
        "none",
        "--service",
        "orders",
    )
    assert code == 0, err
    docs = documents(out)
    assert_valid(docs)
    assert by_kind(docs) == {
        "Deployment": ["orders-lg-abc123"],
        "Service": ["orders-lg-abc123"],
        "Job": ["lg-abc123-e2e"],
    }
    assert "Istio" not in out and "Routing none" in out
    code, out, err = render("--config", str(config), "--sandbox", "abc123", "--service", "orders")
    assert code == 0, err  # the config's own runtime.kind is kubernetes
    assert by_kind(documents(out))["VirtualService"] == ["orders-loopgate"]


def test_render_in_a_sandbox_namespace_with_an_in_cluster_build(tmp_path: Path) -> None:
    """Forks and Jobs in `sandbox_namespace`, routes beside the baseline Services with a ReferenceGrant;
    a service built in the cluster gets a Kaniko Job and the image it pushes."""
    text = SHOP.replace(
        "kubernetes: {routing: istio, ttl: 1800}",
        "kubernetes: {routing: gateway-api, sandbox_namespace: loopgate-sandboxes}",
    )
    text = text.replace(
        'port: 80, image: "shop/payments:{sha}"}',
        "port: 80, build: {context: services/payments, registry: reg.example/shop/payments,"
        " secret: regcred}}",
    )
    config = write(tmp_path, text)
    code, out, err = render(
        "--runtime",
        "kubernetes",
        "--config",
        str(config),
        "--sandbox",
        "abc123",
        "--head",
        "1111111",
        "--service",
        "payments",
        "--service",
        "orders",
    )
    assert code == 0, err
    docs = documents(out)
    assert_valid(docs)
    kinds = by_kind(docs)
    assert kinds["ReferenceGrant"] == ["lg-abc123-from-shop"]
    assert kinds["Job"] == ["lg-abc123-build-payments", "lg-abc123-e2e"]
    namespaces = {(d["kind"], d["metadata"]["name"]): d["metadata"]["namespace"] for d in docs}
    assert namespaces[("Deployment", "payments-lg-abc123")] == "loopgate-sandboxes"
    assert namespaces[("HTTPRoute", "payments-lg-abc123")] == "shop"
    assert namespaces[("Job", "lg-abc123-e2e")] == "loopgate-sandboxes"
    fork = next(
        d for d in docs if d["metadata"]["name"] == "payments-lg-abc123" and d["kind"] == "Deployment"
    )
    assert fork["spec"]["template"]["spec"]["containers"][0]["image"] == "reg.example/shop/payments:1111111"


def test_a_config_written_for_local_renders_with_runtime_kubernetes(tmp_path: Path) -> None:
    local = SHOP.replace("  kind: kubernetes\n  kubernetes: {routing: istio, ttl: 1800}\n", "  kind: local\n")
    local = local.replace(
        "    kubernetes: {namespace", '    local: {run: "serve {port}"}\n    kubernetes: {namespace'
    )
    local = local.replace("      timeout: 120\n", "      timeout: 120\n      run: pytest e2e\n")
    config = write(tmp_path, local)
    code, out, err = render("--runtime", "kubernetes", "--config", str(config), "--sandbox", "abc123")
    assert code == 0, err
    docs = documents(out)
    assert_valid(docs)
    assert len(by_kind(docs)["VirtualService"]) == 4  # the default routing
    code, _, err = render("--config", str(config), "--sandbox", "abc123")
    assert code == 2 and "render needs --runtime kubernetes" in err


LOCAL_ONLY_ORDERS = """\
version: 1
services:
  gateway:
    paths: ["services/gateway/**"]
    local: {run: "serve {port}"}
    kubernetes: {namespace: shop, workload: deployment/gateway, image: "shop/gateway:{sha}"}
  orders:
    paths: ["services/orders/**"]
    local: {run: "serve {port}"}
"""


def test_a_missing_kubernetes_section_is_named_with_its_line(tmp_path: Path) -> None:
    config = write(tmp_path, LOCAL_ONLY_ORDERS)
    code, out, err = render("--runtime", "kubernetes", "--config", str(config), "--sandbox", "abc123")
    assert code == 2 and out == ""
    assert err.strip() == (
        f"loopgate: {config}:7 services.orders: no `kubernetes:` section,"
        " which render --runtime kubernetes needs"
    )
    code, out, err = render(
        "--runtime", "kubernetes", "--config", str(config), "--sandbox", "abc123", "--service", "gateway"
    )
    assert code == 0, err
    assert_valid(documents(out))


def test_an_invalid_config_exits_2_with_file_and_line(tmp_path: Path) -> None:
    config = write(tmp_path, SHOP.replace("workload: deployment/orders", "workload: statefulset/orders"))
    line = SHOP.splitlines().index("  orders:") + 3
    code, out, err = render("--runtime", "kubernetes", "--config", str(config), "--sandbox", "abc123")
    assert code == 2 and out == ""
    assert err.startswith(f"loopgate: {config}:{line} services.orders.kubernetes.workload:")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("key", ["abc12", "ABC123", "abc_123", "a" * 17, "abc123;x"])
def test_a_bad_sandbox_key_exits_2_in_one_line(tmp_path: Path, key: str) -> None:
    config = write(tmp_path, SHOP)
    code, out, err = render("--runtime", "kubernetes", "--config", str(config), "--sandbox", key)
    assert code == 2 and out == ""
    assert err.strip() == f"loopgate: --sandbox {key!r} is not a routing key: 6 to 16 of a-z and 0-9"


def test_other_bad_input_exits_2(tmp_path: Path) -> None:
    config = write(tmp_path, SHOP)
    base = ["--config", str(config), "--sandbox", "abc123"]
    code, _, err = render("--runtime", "local", *base)
    assert code == 2 and err.strip() == "loopgate: render needs --runtime kubernetes"
    code, _, err = render("--runtime", "kubernetes", *base, "--routing", "linkerd")
    assert code == 2 and "istio, gateway-api, none" in err
    code, _, err = render("--runtime", "kubernetes", *base, "--service", "billing")
    assert code == 2 and err.strip().startswith("loopgate: unknown service 'billing'")
    code, _, err = render(
        "--runtime", "kubernetes", "--config", str(tmp_path / "nope.yml"), "--sandbox", "abc123"
    )
    assert code == 2 and "no such file" in err


# ---- render_sandbox in process: deterministic, and with what the cluster holds ----


def test_render_sandbox_is_deterministic_given_clock_and_nonce() -> None:
    config = parse_config(SHOP)
    now = datetime(2026, 11, 29, 16, 0, tzinfo=UTC)
    args: dict[str, Any] = {
        "key": "abc123",
        "routing": None,
        "services": None,
        "head_sha": "h",
        "base_sha": "b",
        "now": now,
        "nonce": "0123456789abcdef",
    }
    first, second = render_sandbox(config, **args), render_sandbox(config, **args)
    assert to_yaml(first) == to_yaml(second)
    assert {d["metadata"].get("annotations", {}).get(objects.EXPIRES_AT) for d in first} == {
        "2026-11-29T16:30:00Z",
        None,
    }


def test_render_sandbox_forks_the_real_baseline_when_given() -> None:
    config = parse_config(SHOP)
    spec = config.services["orders"].kubernetes
    assert spec is not None
    baseline = skeleton_deployment("orders", spec)
    container = baseline["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": "DATABASE_URL", "value": "postgres://orders"}]
    real_service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "orders-api", "namespace": "shop"},
        "spec": {"selector": {"app": "orders"}, "ports": [{"port": 80, "targetPort": 80}]},
    }
    docs = render_sandbox(
        config,
        key="abc123",
        routing="istio",
        services=["orders"],
        head_sha="h",
        base_sha="b",
        baselines={"orders": baseline},
        services_in_namespace={"shop": [real_service]},
    )
    assert_valid(docs)
    fork = docs[0]
    assert fork["spec"]["template"]["spec"]["containers"][0]["env"] == container["env"]
    assert not objects.selects({"app": "orders"}, fork["spec"]["template"]["metadata"]["labels"])


def test_render_shows_the_postgres_copy_a_fork_gets(tmp_path: Path) -> None:
    """DESIGN "Data": the record, the copy's Secret (its password is made at fork time) and the copy
    Job come before the fork, whose state variable reads the copy's URL from that Secret."""
    config = SHOP.replace(
        "kubernetes: {routing: istio, ttl: 1800}",
        "kubernetes: {routing: istio, ttl: 1800, postgres: {host: pg.db.svc.cluster.local, secret: pgadm}}",
    ).replace(
        '"shop/payments:{sha}"}\n', '"shop/payments:{sha}"}\n    state: {postgres: {database: payments}}\n'
    )
    code, out, err = render(
        "--config", str(write(tmp_path, config)), "--sandbox", "abc123", "--service", "payments"
    )
    assert code == 0, err
    docs = documents(out)
    assert_valid(docs)
    kinds = [d["kind"] for d in docs]
    assert kinds[:4] == ["ConfigMap", "Secret", "Job", "Deployment"]
    assert docs[0]["data"]["database"] == "payments_lg_abc123"
    job_env = {e["name"]: e for e in docs[2]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert job_env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "pgadm", "key": "password"}
    fork_env = {e["name"]: e for e in docs[3]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert fork_env["LOOPGATE_STATE"]["valueFrom"]["secretKeyRef"]["name"] == docs[1]["metadata"]["name"]
