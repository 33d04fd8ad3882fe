"""The Kubernetes runtime's object builders (bot/runtimes/kubernetes/objects.py): every object validated
strictly against the published schemas, and the behaviours the runtime relies on — forks no baseline
Service selects, exact route add/remove, an exact baggage-member regex, a JUnit report carried back
through a suite's log that test output cannot forge."""

from __future__ import annotations

import base64
import copy
import json
import os
import random
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.config import ConfigError, parse_config
from bot.config.kubernetes import KubernetesBuild, KubernetesService
from bot.config.schema import Routing
from bot.runtimes.kubernetes import objects
from tests.github_fake.contract import contracts_dir
from tests.kube_fake.validate import validate_object

KEY = "abc123"
EXPIRES = "2026-11-29T17:00:00Z"
ROUTING = Routing()
SPEC = KubernetesService(namespace="shop", workload="deployment/orders", image="shop/orders:{sha}")
LOOPGATE_LABELS = {
    "loopgate.dev/sandbox": KEY,
    "loopgate.dev/role": "fork",
    "loopgate.dev/service": "orders",
    "app.kubernetes.io/managed-by": "loopgate",
}


def valid(obj: dict[str, Any]) -> None:
    assert validate_object(obj) == [], obj


def baseline_deployment() -> dict[str, Any]:
    """A Deployment as the API server returns it: server-managed fields, GitOps marks, two containers."""
    pod_labels = {"app": "orders", "tier": "backend", "app.kubernetes.io/name": "orders", "team": "shop"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "orders",
            "namespace": "shop",
            "uid": "7d0c9c52-1111-2222-3333-444455556666",
            "resourceVersion": "81234",
            "generation": 7,
            "creationTimestamp": "2026-11-01T10:00:00Z",
            "selfLink": "/apis/apps/v1/namespaces/shop/deployments/orders",
            "managedFields": [{"manager": "kubectl", "operation": "Apply", "apiVersion": "apps/v1"}],
            "ownerReferences": [
                {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", "name": "shop", "uid": "u1"}
            ],
            "labels": {"app": "orders", "app.kubernetes.io/instance": "shop"},
            "annotations": {
                "deployment.kubernetes.io/revision": "12",
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
                "argocd.argoproj.io/tracking-id": "shop:apps/Deployment:shop/orders",
            },
        },
        "spec": {
            "replicas": 3,
            "minReadySeconds": 5,
            "selector": {"matchLabels": {"app": "orders", "tier": "backend"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "creationTimestamp": None,
                    "labels": pod_labels,
                    "annotations": {
                        "sidecar.istio.io/inject": "true",
                        "kubectl.kubernetes.io/last-applied-configuration": "{}",
                    },
                },
                "spec": {
                    "containers": [
                        {"name": "log-shipper", "image": "fluent/fluent-bit:3"},
                        {
                            "name": "orders",
                            "image": "shop/orders:old",
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "env": [{"name": "DB", "value": "orders"}],
                            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                        },
                    ]
                },
            },
        },
        "status": {"replicas": 3, "readyReplicas": 3, "observedGeneration": 7},
    }


def service(name: str, selector: dict[str, str] | None, port: int = 80) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": [{"name": "http", "port": port, "targetPort": "http"}]}
    if selector is not None:
        spec["selector"] = selector
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": spec,
    }


SERVICES = [
    service("orders", {"app": "orders"}),
    service("orders-internal", {"app.kubernetes.io/name": "orders", "tier": "backend"}),
    service("backend-all", {"tier": "backend"}),
    service("payments", {"app": "payments"}),  # selects other pods: its keys are not rewritten for it
    service("external-db", None),  # no selector: hand-made endpoints
]


def fork(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "service": "orders",
        "spec": SPEC.model_copy(update={"container": "orders"}),
        "key": KEY,
        "image": "shop/orders:new",
        "namespace": "shop",
        "expires_at": EXPIRES,
        "services_in_namespace": SERVICES,
    }
    args.update(overrides)
    baseline = args.pop("baseline", baseline_deployment())
    return objects.fork_deployment(baseline, **args)


# ---- names, labels, expiry, images ----


def test_labels_and_expiry() -> None:
    assert objects.labels(KEY, "fork", "orders") == LOOPGATE_LABELS
    assert "loopgate.dev/service" not in objects.labels(KEY, "suite")
    with pytest.raises(ValueError):
        objects.labels("ABC123", "fork", "orders")
    with pytest.raises(ValueError):
        objects.labels(KEY, "janitor", "orders")
    now = datetime(2026, 11, 29, 16, 0, 0, 123456, tzinfo=UTC)
    assert objects.expires_at(3600, now) == "2026-11-29T17:00:00Z"
    assert objects.expires_at(60, now.astimezone(timezone(timedelta(hours=5)))) == "2026-11-29T16:01:00Z"
    assert objects.expires_at(1, now.replace(tzinfo=None)) == "2026-11-29T16:00:01Z"
    assert objects.parse_expires_at("2026-11-29T17:00:00Z") == datetime(2026, 11, 29, 17, tzinfo=UTC)
    assert objects.parse_expires_at("tomorrow") is None


def test_image_for_fills_every_field_and_leaves_the_rest() -> None:
    template = "reg.example:5000/{service}/app:{sha}-{merge_sha}-{base_sha}"
    image = objects.image_for(template, sha="h1", merge_sha="m1", base_sha="b1", service="orders")
    assert image == "reg.example:5000/orders/app:h1-m1-b1"
    assert (
        objects.image_for("app@sha256:{x}", sha="", merge_sha="", base_sha="", service="") == "app@sha256:{x}"
    )


def test_long_names_stay_within_63_characters_deterministically() -> None:
    long_deployment = "a" * 60 + ".v2"
    name = objects.fork_deployment_name(long_deployment, "k" * 16)
    assert len(name) <= 63 and name.endswith("-lg-" + "k" * 16)
    assert name == objects.fork_deployment_name(long_deployment, "k" * 16)
    assert name != objects.fork_deployment_name("a" * 60 + ".v3", "k" * 16)
    assert objects.fork_deployment_name("orders", KEY) == "orders-lg-abc123"
    assert objects.fork_service_name("orders", KEY) == "orders-lg-abc123"
    assert objects.fork_service_name("2fa", KEY)[0].isalpha()
    assert objects.suite_job_name(KEY, "E2E_Checkout.v2") == "lg-abc123-e2e-checkout-v2"
    long_suite = objects.suite_job_name("k" * 16, "S" * 63)
    assert len(long_suite) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", long_suite)
    assert len(objects.build_job_name("k" * 16, "s" * 40)) <= 63


# ---- fork Deployment ----


def test_fork_deployment_is_the_baseline_template_with_the_new_image_and_nothing_server_managed() -> None:
    baseline = baseline_deployment()
    original = copy.deepcopy(baseline)
    out = fork(baseline=baseline)
    valid(out)
    assert baseline == original, "the builder must not edit its input"
    meta = out["metadata"]
    assert meta["name"] == "orders-lg-abc123" and meta["namespace"] == "shop"
    assert meta["labels"] == LOOPGATE_LABELS
    assert meta["annotations"]["loopgate.dev/expires-at"] == EXPIRES
    for gone in ("uid", "resourceVersion", "generation", "creationTimestamp", "selfLink", "managedFields"):
        assert gone not in meta
    assert "ownerReferences" not in meta and "status" not in out
    assert "deployment.kubernetes.io/revision" not in meta["annotations"]
    assert "kubectl.kubernetes.io/last-applied-configuration" not in meta["annotations"]
    spec = out["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert spec["selector"] == {"matchLabels": LOOPGATE_LABELS}
    assert spec["progressDeadlineSeconds"] > spec["minReadySeconds"] == 5
    template = spec["template"]
    assert "creationTimestamp" not in template["metadata"]
    assert template["metadata"]["annotations"] == {"sidecar.istio.io/inject": "true"}
    shipper, orders = template["spec"]["containers"]
    assert shipper["image"] == "fluent/fluent-bit:3", "only the chosen container gets the new image"
    assert orders["image"] == "shop/orders:new"
    assert orders["readinessProbe"] == original["spec"]["template"]["spec"]["containers"][1]["readinessProbe"]
    assert all(e["name"] != "LOOPGATE_SANDBOX" for c in (shipper, orders) for e in c.get("env", []))


def test_fork_replaces_the_first_container_by_default_and_refuses_an_unknown_one() -> None:
    out = fork(spec=SPEC)
    assert out["spec"]["template"]["spec"]["containers"][0]["image"] == "shop/orders:new"
    with pytest.raises(ConfigError, match=r"no container 'api'.*log-shipper, orders"):
        fork(spec=SPEC.model_copy(update={"container": "api"}))


def test_no_service_selecting_the_baseline_selects_the_fork() -> None:
    out = fork()
    pod_labels = out["spec"]["template"]["metadata"]["labels"]
    baseline_labels = baseline_deployment()["spec"]["template"]["metadata"]["labels"]
    selecting = objects.selecting_services(baseline_labels, SERVICES)
    assert {s["metadata"]["name"] for s in selecting} == {"orders", "orders-internal", "backend-all"}
    assert objects.selecting_services(pod_labels, SERVICES) == []
    assert not objects.selects({"app": "orders", "tier": "backend"}, pod_labels), (
        "nor the baseline Deployment"
    )
    assert pod_labels["team"] == "shop", "labels no selector uses are kept"
    assert pod_labels["app"] == "orders-lg-abc123", (
        "offending keys are kept, with values no selector asks for"
    )
    assert {k: pod_labels[k] for k in LOOPGATE_LABELS} == LOOPGATE_LABELS


def test_fork_drops_spreading_against_the_baseline_but_keeps_placement() -> None:
    """A required anti-affinity to `app=orders` would leave the one-pod fork Pending wherever the baseline
    runs on every node; node affinity and affinity to other pods say where it may run at all."""
    baseline = baseline_deployment()
    zone = {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["apps"]}]}]
    }
    near_cache = {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "kubernetes.io/hostname"}
    not_beside_db = {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}
    baseline["spec"]["template"]["spec"]["affinity"] = {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": zone},
        "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [near_cache]},
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {"matchLabels": {"app": "orders"}},
                    "topologyKey": "kubernetes.io/hostname",
                },
                not_beside_db,
            ],
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 50,
                    "podAffinityTerm": {
                        "labelSelector": {
                            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["backend"]}]
                        },
                        "topologyKey": "topology.kubernetes.io/zone",
                    },
                }
            ],
        },
    }
    baseline["spec"]["template"]["spec"]["topologySpreadConstraints"] = [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "orders"}},
        }
    ]
    out = fork(baseline=baseline)
    valid(out)
    pod = out["spec"]["template"]["spec"]
    assert "topologySpreadConstraints" not in pod
    assert pod["affinity"] == {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": zone},
        "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [near_cache]},
        "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [not_beside_db]},
    }


def test_label_selector_semantics() -> None:
    pod = {"app": "orders", "tier": "backend"}
    sel = objects.label_selector_selects
    assert sel({}, pod) and sel(None, pod)
    assert sel({"matchLabels": {"app": "orders"}}, pod)
    assert not sel({"matchLabels": {"app": "orders", "x": "y"}}, pod)
    assert sel({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["backend", "x"]}]}, pod)
    assert not sel({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["backend"]}]}, pod)
    assert sel({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}, pod)
    assert sel({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, pod)
    assert not sel({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, pod)


label_keys = st.sampled_from(["app", "tier", "version", "app.kubernetes.io/name", "team", "track"])
label_values = st.sampled_from(["orders", "backend", "v1", "v2", "shop", "stable", "x" * 60])


@settings(max_examples=200, deadline=None)
@given(
    pod_labels=st.dictionaries(label_keys, label_values, min_size=1, max_size=6),
    selectors=st.lists(st.dictionaries(label_keys, label_values, max_size=3), max_size=6),
    subsets=st.lists(st.lists(st.booleans(), min_size=6, max_size=6), max_size=4),
)
def test_fork_labels_escape_every_selector_property(
    pod_labels: dict[str, str], selectors: list[dict[str, str]], subsets: list[list[bool]]
) -> None:
    """Random Services — some built from subsets of the pods' labels so they select the baseline — and a
    random baseline: no Service that selects the baseline selects the fork; unrelated labels survive."""
    items = sorted(pod_labels.items())
    selectors = selectors + [
        dict(kv for kv, keep in zip(items, mask, strict=False) if keep) for mask in subsets
    ]
    services = [service(f"s{i}", sel or None) for i, sel in enumerate(selectors)]
    baseline = baseline_deployment()
    baseline["spec"]["selector"] = {"matchLabels": dict(items[:1])}
    baseline["spec"]["template"]["metadata"]["labels"] = dict(pod_labels)
    out = fork(baseline=baseline, services_in_namespace=services)
    fork_labels = out["spec"]["template"]["metadata"]["labels"]
    selecting = objects.selecting_services(pod_labels, services)
    assert not [s for s in selecting if objects.selects(objects.service_selector(s), fork_labels)]
    used = {k for s in selecting for k in objects.service_selector(s)} | {items[0][0]}
    for k, v in pod_labels.items():
        if k not in used:
            assert fork_labels[k] == v
    assert validate_object(out) == []


def test_long_label_values_and_names_stay_valid() -> None:
    baseline = baseline_deployment()
    baseline["metadata"]["name"] = "orders-" + "x" * 56
    baseline["spec"]["template"]["metadata"]["labels"]["app"] = "y" * 63
    services = [service("orders", {"app": "y" * 63})]
    out = fork(baseline=baseline, services_in_namespace=services, key="k" * 16)
    valid(out)
    assert len(out["metadata"]["name"]) <= 63
    assert objects.selecting_services(out["spec"]["template"]["metadata"]["labels"], services) == []


# ---- fork Service ----


def test_fork_service_selects_exactly_the_fork_on_the_callers_port() -> None:
    out_fork = fork()
    svc = objects.fork_service(out_fork, service="orders", spec=SPEC, key=KEY, expires_at=EXPIRES)
    valid(svc)
    assert svc["metadata"]["name"] == "orders-lg-abc123"
    assert svc["metadata"]["labels"] == LOOPGATE_LABELS
    assert svc["spec"]["selector"] == out_fork["spec"]["selector"]["matchLabels"]
    assert objects.selects(svc["spec"]["selector"], out_fork["spec"]["template"]["metadata"]["labels"])
    assert not objects.selects(
        svc["spec"]["selector"], baseline_deployment()["spec"]["template"]["metadata"]["labels"]
    )
    # SPEC names no container: the first (log-shipper) has no ports, so the target is the caller's port.
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80}]
    port_spec = SPEC.model_copy(update={"container": "orders"})
    by_container = objects.fork_service(
        out_fork, service="orders", spec=port_spec, key=KEY, expires_at=EXPIRES
    )
    assert by_container["spec"]["ports"] == [
        {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}
    ]
    named = objects.fork_service(
        out_fork,
        service="orders",
        spec=port_spec,
        key=KEY,
        expires_at=EXPIRES,
        baseline_service={
            "spec": {"ports": [{"name": "web", "port": 80, "targetPort": "http", "appProtocol": "http"}]}
        },
    )
    valid(named)
    assert named["spec"]["ports"] == [
        {"port": 80, "name": "web", "appProtocol": "http", "targetPort": "http"}
    ]


# ---- the baggage member regex ----

MEMBER = "loopgate-sandbox"


def reference_match(header: str, member: str, key: str) -> bool:
    """W3C baggage parsed the long way: members split on `,`, properties after `;`, OWS stripped."""
    for item in header.split(","):
        head = re.split(r";|%3[Bb]", item, maxsplit=1)[0]  # OpenTelemetry re-sends `;` as %3B
        name, eq, value = head.partition("=")
        if eq and name.strip(" \t") == member and value.strip(" \t") == key:
            return True
    return False


POSITIVE = [
    "loopgate-sandbox=abc123",
    " loopgate-sandbox = abc123 ",
    "\tloopgate-sandbox=abc123\t",
    "a=b,loopgate-sandbox=abc123",
    "a=b, loopgate-sandbox=abc123;ttl=60,c=d",
    "loopgate-sandbox=abc123;prop",
    "loopgate-sandbox=abc123%3Bprop=1",
    "userId=alice,loopgate-sandbox=abc123,serverNode=DF%2028",
    "x=1;p,loopgate-sandbox=abc123",
    "loopgate-sandbox=other,loopgate-sandbox=abc123",
    "a=b,,loopgate-sandbox=abc123",
]
NEGATIVE = [
    "",
    "loopgate-sandbox=abc1234",
    "loopgate-sandbox=xabc123",
    "loopgate-sandbox=abc12",
    "xloopgate-sandbox=abc123",
    "loopgate-sandbox-x=abc123",
    "loopgate-sandbox=",
    "loopgate-sandbox",
    "abc123",
    "other=abc123",
    "a=loopgate-sandbox=abc123",
    "a=b;loopgate-sandbox=abc123",
    "a=b,c=d;loopgate-sandbox=abc123",
    "a=b;p=loopgate-sandbox=abc123",
    "loopgate-sandbox=abc 123",
    "loopgate_sandbox=abc123",
    "LOOPGATE-SANDBOX=abc123",
    "loopgate-sandbox=ABC123",
    "loopgate-sandbox=abc123x;p",
]


@pytest.mark.parametrize("header", POSITIVE)
def test_baggage_regex_matches_the_member(header: str) -> None:
    assert re.fullmatch(objects.baggage_regex(MEMBER, KEY), header)


@pytest.mark.parametrize("header", NEGATIVE)
def test_baggage_regex_refuses_everything_else(header: str) -> None:
    assert not re.fullmatch(objects.baggage_regex(MEMBER, KEY), header)


def test_baggage_regex_is_re2_and_escapes_the_member() -> None:
    regex = objects.baggage_regex("loopgate.sandbox", KEY)
    for construct in ("(?=", "(?!", "(?<", "\\1", "\\2"):
        assert construct not in regex
    assert re.fullmatch(regex, "loopgate.sandbox=abc123")
    assert not re.fullmatch(regex, "loopgateXsandbox=abc123")
    with pytest.raises(ValueError):
        objects.baggage_regex(MEMBER, "abc.*")


members = st.one_of(
    st.just(MEMBER),
    st.sampled_from(["loopgate-sandboxx", "xloopgate-sandbox", "userId", "loopgate", "sandbox"]),
)
values = st.sampled_from([KEY, KEY + "4", "x" + KEY, KEY[:-1], "alice", "", "abc123abc123"])
ows = st.sampled_from(["", " ", "\t", "  "])
props = st.sampled_from(["", ";ttl=1", ";p", ";loopgate-sandbox=abc123"])


@st.composite
def baggage_headers(draw: st.DrawFn) -> str:
    items = []
    for _ in range(draw(st.integers(0, 5))):
        o1, o2, o3, o4 = (draw(ows) for _ in range(4))
        items.append(f"{o1}{draw(members)}{o2}={o3}{draw(values)}{o4}{draw(props)}")
    return ",".join(items)


@settings(max_examples=500, deadline=None)
@given(header=baggage_headers())
def test_baggage_regex_agrees_with_a_baggage_parser(header: str) -> None:
    assert bool(re.fullmatch(objects.baggage_regex(MEMBER, KEY), header)) == reference_match(
        header, MEMBER, KEY
    )


RE2_SCRIPT = r"""
const { RE2 } = require("re2-wasm");
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const re = new RE2("^(?:" + input.regex + ")$", "u");
process.stdout.write(JSON.stringify(input.headers.map((h) => re.test(h))));
"""


def test_baggage_regex_means_the_same_to_re2() -> None:
    """RE2 itself (re2-wasm, which the pinned @kubernetes-models validators load) agrees with Python and
    with the baggage parser on every listed shape and on a few hundred random headers; RE2 refuses
    lookarounds, so compiling there proves the regex is one Envoy accepts."""
    node_modules = contracts_dir()
    if shutil.which("node") is None or not (node_modules / "re2-wasm").is_dir():
        pytest.fail(f"node and re2-wasm (in {node_modules}) are needed: run `make contracts`")
    rng = random.Random(7)
    headers = POSITIVE + NEGATIVE
    parts = [
        MEMBER,
        "loopgate-sandboxx",
        "xloopgate-sandbox",
        "userId",
        " ",
        "\t",
        "=",
        ",",
        ";p",
        "%3Bp",
        KEY,
        KEY + "4",
    ]
    headers += ["".join(rng.choice(parts) for _ in range(rng.randint(1, 12))) for _ in range(400)]
    regex = objects.baggage_regex(MEMBER, KEY)
    payload = json.dumps({"regex": regex, "headers": headers})
    done = subprocess.run(
        ["node", "-e", RE2_SCRIPT],
        input=payload,
        capture_output=True,
        text=True,
        cwd=node_modules,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    for header, re2_says in zip(headers, answers, strict=True):
        assert re2_says == bool(re.fullmatch(regex, header)) == reference_match(header, MEMBER, KEY), header


# ---- Istio ----


def foreign_route(i: int) -> dict[str, Any]:
    route: dict[str, Any] = {
        "name": f"team-route-{i}",
        "match": [{"uri": {"prefix": f"/v{i}"}}],
        "route": [
            {"destination": {"host": "orders.shop.svc.cluster.local", "subset": f"v{i}"}, "weight": 100}
        ],
        "timeout": f"{i + 1}s",
    }
    if i % 3 == 0:
        del route["name"]  # unnamed routes are foreign too
    return route


def virtual_service(routes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "orders", "namespace": "shop", "resourceVersion": "42"},
        "spec": {
            "hosts": ["orders.shop.svc.cluster.local"],
            "gateways": ["mesh"],
            "http": routes,
            "tcp": [{"route": [{"destination": {"host": "orders-tcp"}}]}],
        },
    }


def route_for(key: str) -> dict[str, Any]:
    return objects.istio_route(
        key=key, routing=ROUTING, fork_host=f"orders-lg-{key}.shop.svc.cluster.local", port=80
    )


def test_istio_route_matches_baggage_or_header_and_validates_in_place() -> None:
    route = route_for(KEY)
    assert route["name"] == "loopgate-abc123"
    baggage, header = route["match"]
    assert baggage == {"headers": {"baggage": {"regex": objects.baggage_regex(MEMBER, KEY)}}}
    assert header == {"headers": {"x-loopgate-sandbox": {"exact": KEY}}}
    assert route["route"] == [
        {"destination": {"host": "orders-lg-abc123.shop.svc.cluster.local", "port": {"number": 80}}}
    ]
    vs = objects.with_route(virtual_service([foreign_route(1), foreign_route(2)]), route)
    valid(vs)
    assert [r.get("name") for r in vs["spec"]["http"]] == ["loopgate-abc123", "team-route-1", "team-route-2"]


def test_owned_virtual_service_defaults_to_the_baseline() -> None:
    host = "orders.shop.svc.cluster.local"
    vs = objects.owned_virtual_service(service="orders", spec=SPEC, baseline_host=host)
    valid(vs)
    assert vs["metadata"]["name"] == "orders-loopgate"
    assert vs["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "loopgate"
    assert vs["spec"]["hosts"] == [host]
    assert vs["spec"]["http"] == [
        {"name": "baseline", "route": [{"destination": {"host": host, "port": {"number": 80}}}]}
    ]
    assert objects.route_keys(vs) == []
    with_two = objects.with_route(objects.with_route(vs, route_for("aaaaaa")), route_for("bbbbbb"))
    valid(with_two)
    assert objects.route_keys(with_two) == ["aaaaaa", "bbbbbb"]
    assert with_two["spec"]["http"][-1]["name"] == "baseline"


def test_with_route_replaces_a_same_named_route_in_place() -> None:
    vs = objects.with_route(
        objects.with_route(virtual_service([foreign_route(1)]), route_for("aaaaaa")), route_for(KEY)
    )
    moved = route_for("aaaaaa")
    moved["route"][0]["destination"]["host"] = "elsewhere"
    again = objects.with_route(vs, moved)
    assert [r.get("name") for r in again["spec"]["http"]] == [
        "loopgate-aaaaaa",
        "loopgate-abc123",
        "team-route-1",
    ]
    assert again["spec"]["http"][0]["route"][0]["destination"]["host"] == "elsewhere"
    with pytest.raises(ValueError):
        objects.with_route(vs, foreign_route(4))


def test_a_virtual_service_without_http_routes_gets_them_back_exactly() -> None:
    vs = virtual_service([])
    del vs["spec"]["http"]
    added = objects.with_route(vs, route_for(KEY))
    assert objects.route_keys(added) == [KEY]
    assert objects.without_route(added, KEY) == vs
    assert objects.without_route(vs, KEY) == vs


keys20 = [f"key{i:03d}x" for i in range(20)]

# Names a team may give its own routes, some close to loopgate's shape but not of it.
foreign_names = st.one_of(
    st.none(),
    st.sampled_from(
        ["default", "loopgate", "loopgate-ab", "loopgate-ABC123", "loopgate-abc123-v2", "xloopgate-abc123"]
    ),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True).filter(
        lambda n: not objects.LOOPGATE_ROUTE_RE.fullmatch(n)
    ),
)
string_matches = st.sampled_from(["exact", "prefix", "regex"]).flatmap(
    lambda how: st.builds(lambda v: {how: v}, st.from_regex(r"/[a-z0-9/]{0,12}", fullmatch=True))
)
matches = st.lists(
    st.one_of(
        st.builds(lambda m: {"uri": m}, string_matches),
        st.builds(lambda m: {"headers": {"x-team": m}}, string_matches),
        st.builds(lambda m, p: {"uri": m, "port": p}, string_matches, st.integers(1, 65535)),
    ),
    max_size=3,
)
destinations = st.fixed_dictionaries(
    {"host": st.sampled_from(["orders", "orders.shop.svc.cluster.local", "orders-canary"])},
    optional={
        "subset": st.sampled_from(["v1", "v2"]),
        "port": st.builds(lambda n: {"number": n}, st.integers(1, 65535)),
    },
)


@st.composite
def foreign_routes(draw: st.DrawFn) -> dict[str, Any]:
    route: dict[str, Any] = {}
    name = draw(foreign_names)
    if name is not None:
        route["name"] = name
    if found := draw(matches):
        route["match"] = found
    route["route"] = [{"destination": d} for d in draw(st.lists(destinations, min_size=1, max_size=2))]
    if draw(st.booleans()):
        route["timeout"] = f"{draw(st.integers(1, 30))}s"
    if draw(st.booleans()):
        route["retries"] = {"attempts": draw(st.integers(0, 5)), "perTryTimeout": "2s"}
    return route


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    foreign=st.lists(foreign_routes(), min_size=2, max_size=6),
    ops=st.lists(st.tuples(st.sampled_from(keys20), st.booleans()), min_size=1, max_size=80),
    removal_order=st.randoms(use_true_random=False),
)
def test_removing_every_loopgate_route_restores_the_spec_exactly(
    foreign: list[dict[str, Any]], ops: list[tuple[str, bool]], removal_order: random.Random
) -> None:
    """Interleaved adds and removes of 20 keys on random VirtualServices with several foreign routes:
    every live key has exactly one route, above every foreign route; foreign routes never move or change;
    and once every key is removed the spec is the original, exactly."""
    original = virtual_service(foreign)
    vs = copy.deepcopy(original)
    live: set[str] = set()
    for step, (key, add) in enumerate(ops):
        vs = objects.with_route(vs, route_for(key)) if add else objects.without_route(vs, key)
        (live.add if add else live.discard)(key)
        http = vs["spec"]["http"]
        keys = objects.route_keys(vs)
        assert sorted(keys) == sorted(live) and len(keys) == len(set(keys))
        assert [r for r in http if not objects.is_loopgate_route(r)] == original["spec"]["http"]
        assert all(objects.is_loopgate_route(r) for r in http[: len(keys)])
        if step % 10 == 0:
            assert validate_object(vs) == []
    leftovers = sorted(live)
    removal_order.shuffle(leftovers)
    for key in leftovers:
        vs = objects.without_route(vs, key)
    assert vs["spec"] == original["spec"]
    assert vs == original


# ---- Gateway API ----


def test_http_route_is_a_gamma_route_to_the_fork() -> None:
    route = objects.http_route(
        service="orders",
        spec=SPEC,
        key=KEY,
        routing=ROUTING,
        fork_service="orders-lg-abc123",
        namespace="shop",
        expires_at=EXPIRES,
    )
    valid(route)
    assert route["metadata"]["name"] == "orders-lg-abc123" and route["metadata"]["namespace"] == "shop"
    assert route["metadata"]["labels"]["loopgate.dev/role"] == "route"
    assert route["spec"]["parentRefs"] == [{"group": "", "kind": "Service", "name": "orders", "port": 80}]
    tagged, untagged = route["spec"]["rules"]
    assert tagged["matches"] == [
        {
            "headers": [
                {"type": "RegularExpression", "name": "baggage", "value": objects.baggage_regex(MEMBER, KEY)}
            ]
        },
        {"headers": [{"type": "Exact", "name": "x-loopgate-sandbox", "value": KEY}]},
    ]
    assert tagged["backendRefs"] == [{"group": "", "kind": "Service", "name": "orders-lg-abc123", "port": 80}]
    assert untagged == {"backendRefs": [{"group": "", "kind": "Service", "name": "orders", "port": 80}]}


def test_http_route_to_a_fork_in_another_namespace_comes_with_a_reference_grant() -> None:
    route = objects.http_route(
        service="orders",
        spec=SPEC,
        key=KEY,
        routing=Routing(header="x-sbx", baggage_member="sbx"),
        fork_service="orders-lg-abc123",
        namespace="sandboxes",
        expires_at=EXPIRES,
        parent_service="orders-svc",
    )
    valid(route)
    assert route["metadata"]["namespace"] == "shop"
    assert route["spec"]["parentRefs"][0]["name"] == "orders-svc"
    assert route["spec"]["rules"][0]["backendRefs"][0]["namespace"] == "sandboxes"
    assert route["spec"]["rules"][0]["matches"][1]["headers"][0]["name"] == "x-sbx"
    grant = objects.reference_grant(
        key=KEY, route_namespace="shop", namespace="sandboxes", expires_at=EXPIRES
    )
    valid(grant)
    assert grant["metadata"]["namespace"] == "sandboxes"
    assert grant["spec"]["from"] == [  # one grant for the sandbox's routes of either kind
        {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "shop"},
        {"group": "gateway.networking.k8s.io", "kind": "GRPCRoute", "namespace": "shop"},
    ]


# ---- suite and build Jobs ----


def suite(nonce: str = "n0nce0123456789", **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "name": objects.suite_job_name(KEY, "e2e"),
        "namespace": "shop",
        "key": KEY,
        "suite_name": "e2e",
        "image": "shop/e2e:base",
        "command": ["pytest", "-q", "--junitxml=$(LOOPGATE_JUNIT_XML)"],
        "env": objects.suite_env(parse_config(SHOP_CONFIG), KEY),
        "timeout_s": 119.2,
        "nonce": nonce,
        "expires_at": EXPIRES,
    }
    args.update(overrides)
    return objects.suite_job(**args)


SHOP_CONFIG = """\
version: 1
runtime: {kind: kubernetes}
services:
  orders:
    paths: [services/orders/**]
    kubernetes: {namespace: shop, workload: deployment/orders, port: 8080, image: "shop/orders:{sha}"}
  payment-api:
    paths: [services/payments/**]
    kubernetes: {namespace: pay, workload: deployment/payments, image: "shop/payments:{sha}"}
verify:
  suites:
    - {name: e2e, kubernetes: {image: "shop/e2e:{base_sha}", command: [pytest]}}
"""


def test_suite_env_names_every_service_and_the_tag() -> None:
    config = parse_config(SHOP_CONFIG)
    assert objects.suite_env(config, KEY) == {
        "LOOPGATE_ROUTING_KEY": KEY,
        "LOOPGATE_BAGGAGE": "loopgate-sandbox=abc123",
        "LOOPGATE_ORDERS_URL": "http://orders.shop.svc.cluster.local:8080",
        "LOOPGATE_PAYMENT_API_URL": "http://payment-api.pay.svc.cluster.local:80",
        "LOOPGATE_JUNIT_XML": "/tmp/loopgate/junit.xml",
    }
    untagged = objects.suite_env(config, None, {"orders": "orders-v2"})
    assert "LOOPGATE_ROUTING_KEY" not in untagged and "LOOPGATE_BAGGAGE" not in untagged
    assert untagged["LOOPGATE_ORDERS_URL"] == "http://orders-v2.shop.svc.cluster.local:8080"
    assert objects.jobs_namespace(config) == "shop"


def test_suite_job_runs_once_with_a_deadline_and_no_token() -> None:
    job = suite()
    valid(job)
    spec = job["spec"]
    assert job["metadata"]["labels"]["loopgate.dev/role"] == "suite"
    assert job["metadata"]["annotations"]["loopgate.dev/expires-at"] == EXPIRES
    assert spec["activeDeadlineSeconds"] == 120 and spec["backoffLimit"] == 0
    assert spec["ttlSecondsAfterFinished"] == 300
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["command"][:2] == ["sh", "-c"]
    assert container["command"][3:] == ["loopgate-suite", "pytest", "-q", "--junitxml=$(LOOPGATE_JUNIT_XML)"]
    script = container["command"][2]
    assert "$(" not in script and "$$" not in script, "Kubernetes would expand them"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["LOOPGATE_ROUTING_KEY"] == KEY and env["LOOPGATE_JUNIT_XML"] == "/tmp/loopgate/junit.xml"
    long = suite(name=objects.suite_job_name("k" * 16, "a-very-long-suite-name-" * 4), key="k" * 16)
    valid(long)
    with pytest.raises(ValueError):
        suite(nonce="bad nonce")


def test_build_job_runs_kaniko_from_the_git_context_with_the_registry_secret() -> None:
    build = KubernetesBuild(
        context="services/orders",
        dockerfile="Dockerfile.prod",
        registry="reg.example/orders",
        secret="regcred",
        timeout=600,
    )
    job = objects.build_job(
        name=objects.build_job_name(KEY, "orders"),
        namespace="shop",
        key=KEY,
        service="orders",
        build=build,
        git_context="git://github.com/acme/shop.git#refs/heads/main#0123abc",
        destination="reg.example/orders:0123abc",
        expires_at=EXPIRES,
    )
    valid(job)
    assert job["metadata"]["name"] == "lg-abc123-build-orders"
    assert job["metadata"]["labels"]["loopgate.dev/role"] == "build"
    assert job["spec"]["activeDeadlineSeconds"] == 600 and job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    (kaniko,) = pod["containers"]
    assert kaniko["image"] == "gcr.io/kaniko-project/executor:v1.23.2"
    assert kaniko["args"] == [
        "--context=git://github.com/acme/shop.git#refs/heads/main#0123abc",
        "--dockerfile=Dockerfile.prod",
        "--destination=reg.example/orders:0123abc",
        "--context-sub-path=services/orders",
    ]
    assert kaniko["volumeMounts"] == [{"name": "registry", "mountPath": "/kaniko/.docker", "readOnly": True}]
    assert pod["volumes"][0]["secret"] == {
        "secretName": "regcred",
        "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
    }
    plain = objects.build_job(
        name="lg-abc123-build-orders",
        namespace="shop",
        key=KEY,
        service="orders",
        build=KubernetesBuild(registry="reg.example/orders"),
        git_context="dir:///workspace",
        destination="reg.example/orders:1",
        expires_at=EXPIRES,
    )
    valid(plain)
    assert "volumes" not in plain["spec"]["template"]["spec"]


# ---- the JUnit report carried back through the log ----


@pytest.fixture
def sh_and_base64_only(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH holds nothing but `sh` and `base64`, as the smallest suite image."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "base64"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    return {"PATH": str(bin_dir), "LOOPGATE_JUNIT_XML": str(tmp_path / "out" / "junit.xml")}


def run_wrapped(env: dict[str, str], nonce: str, user_script: str) -> tuple[int, str]:
    """The Job's command as the container runtime would start it, stdout and stderr in one log."""
    command = ["sh", "-c", objects.suite_script(nonce), "loopgate-suite", "sh", "-c", user_script]
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    return done.returncode, done.stdout.decode()


def test_wrapper_keeps_the_exit_code_and_carries_the_report(sh_and_base64_only: dict[str, str]) -> None:
    """Test output that prints delimiter lines of another nonce (a forged, passing report) is ignored."""
    nonce, other = objects.new_nonce(), "0" * 32
    forged = base64.b64encode(b"<testsuite tests='1' failures='0'/>").decode()
    user = (
        'echo "1 failed"; '
        f"printf '%s\\n' '{objects.junit_begin(other)}' {forged} '{objects.junit_end(other)}'; "
        'printf "%s" "<testsuite tests=\'1\' failures=\'1\'/>" > "$LOOPGATE_JUNIT_XML"; '
        "printf 'no newline at the end'; exit 3"
    )
    Path(sh_and_base64_only["LOOPGATE_JUNIT_XML"]).parent.mkdir()
    code, log = run_wrapped(sh_and_base64_only, nonce, user)
    assert code == 3
    report, rest = objects.junit_from_log(log, nonce)
    assert report == b"<testsuite tests='1' failures='1'/>"
    assert rest.startswith("1 failed\n") and rest.endswith("no newline at the end")
    assert objects.junit_begin(other) in rest and nonce not in rest


def test_a_log_with_only_forged_delimiters_has_no_report(sh_and_base64_only: dict[str, str]) -> None:
    nonce, other = objects.new_nonce(), "f" * 32
    payload = base64.b64encode(b"<testsuite failures='0'/>").decode()
    user = f"printf '%s\\n' '{objects.junit_begin(other)}' {payload} '{objects.junit_end(other)}'; exit 1"
    code, log = run_wrapped(sh_and_base64_only, nonce, user)  # the suite writes no report
    assert code == 1
    assert objects.junit_begin(other) in log
    assert objects.junit_from_log(log, nonce) == (None, log)


def test_a_one_mebibyte_report_round_trips(sh_and_base64_only: dict[str, str]) -> None:
    nonce = objects.new_nonce()
    report = (b"<testsuite>" + os.urandom(1024 * 1024) + b"</testsuite>")[: 1024 * 1024]
    junit = Path(sh_and_base64_only["LOOPGATE_JUNIT_XML"])
    junit.parent.mkdir()
    junit.write_bytes(report)  # as the suite would have; `cp` is not in the minimal image
    code, log = run_wrapped(sh_and_base64_only, nonce, "echo done; exit 0")
    assert code == 0
    got, rest = objects.junit_from_log(log, nonce)
    assert got is not None and len(got) == 1024 * 1024 and got == report
    assert rest == "done\n"


def test_the_wrapper_makes_the_report_directory_when_it_can(tmp_path: Path) -> None:
    nonce = objects.new_nonce()
    env = {"PATH": os.environ["PATH"], "LOOPGATE_JUNIT_XML": str(tmp_path / "a" / "b" / "junit.xml")}
    code, log = run_wrapped(env, nonce, 'printf "<r/>" > "$LOOPGATE_JUNIT_XML"; exit 0')
    assert code == 0
    assert objects.junit_from_log(log, nonce) == (b"<r/>", "")


def test_junit_from_log_edge_cases() -> None:
    nonce = "abcdef0123456789"
    block = "\n" + objects.junit_begin(nonce) + "\n" + base64.b64encode(b"<r/>").decode() + "\n"
    end = objects.junit_end(nonce) + "\n"
    assert objects.junit_from_log("out\n" + block + end, nonce) == (b"<r/>", "out\n")
    assert objects.junit_from_log(block[1:] + end, nonce) == (b"<r/>", "")
    truncated = "out\n" + block
    assert objects.junit_from_log(truncated, nonce) == (None, truncated)
    garbage = "out\n\n" + objects.junit_begin(nonce) + "\n!!not base64!!\n" + end
    assert objects.junit_from_log(garbage, nonce) == (None, garbage)
    inline = "say " + objects.junit_begin(nonce) + "\n" + base64.b64encode(b"<x/>").decode() + "\n" + end
    assert objects.junit_from_log(inline, nonce)[0] is None, "a begin marker must start a line"


def test_a_fork_never_mounts_the_baselines_persistent_volume_claims() -> None:
    """Its SQLite file or uploads on the baseline's claim would be the fork's to corrupt."""
    baseline = baseline_deployment()
    pod = baseline["spec"]["template"]["spec"]
    pod["volumes"] = [
        {"name": "data", "persistentVolumeClaim": {"claimName": "orders-data"}},
        {"name": "config", "configMap": {"name": "orders-config"}},
    ]
    pod["containers"][1]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    out = fork(baseline=baseline)
    valid(out)
    volumes = out["spec"]["template"]["spec"]["volumes"]
    config = {"name": "config", "configMap": {"name": "orders-config"}}
    assert volumes == [{"name": "data", "emptyDir": {}}, config]
    assert "persistentVolumeClaim" not in str(out)
