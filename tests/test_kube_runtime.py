"""The Kubernetes runtime against the contract fake, over the wire with the official client.

The fake's API server validates every body strictly (a 422 fails the runtime, and these tests check that
none was answered); its kubelet runs pods as local processes and its mesh routes by the VirtualServices
and HTTPRoutes the runtime writes. Nothing is mocked: where a test needs the cluster to misbehave (a
VirtualService changed between loopgate's read and its write), it makes the fake's store do it.
"""

from __future__ import annotations

import copy
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.config import Config, ConfigError, InfrastructureError, RuntimeSettings
from bot.runtimes.kubernetes import objects
from bot.runtimes.kubernetes.client import Kube
from bot.runtimes.kubernetes.gc import sweep
from bot.runtimes.kubernetes.routes import NONE_NOTE
from bot.runtimes.kubernetes.runtime import KubernetesRuntime
from bot.runtimes.protocol import ProbeRequest, Sandbox, Source, SuiteRequest
from tests.kube_fake import FakeCluster
from tests.kube_fake.images import ImageSpec

pytestmark = pytest.mark.timeout(180)  # a hang fails in 3 min; a busy 2-core CI host is no hang

NS = "shop"
SIDECAR = "docker.io/istio/proxyv2:1.24.0"
MANAGED = "app.kubernetes.io/managed-by=loopgate"

ECHO = """\
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            return self.answer(200, {"ok": True})
        self.answer(200, {"service": os.environ["NAME"], "version": os.environ.get("VERSION", "1"),
                          "path": self.path})

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


@pytest.fixture
def images(tmp_path: Path) -> dict[str, ImageSpec]:
    (tmp_path / "echo.py").write_text(ECHO)
    python = sys.executable
    return {
        "echo:base": ImageSpec(argv=[python, "echo.py", "{port}"], cwd=tmp_path),
        "echo:head": ImageSpec(argv=[python, "echo.py", "{port}"], cwd=tmp_path, env={"VERSION": "2"}),
        "crash:head": ImageSpec(
            argv=[python, "-c", "import sys; sys.stderr.write('boom: no config\\n'); sys.exit(3)"],
            cwd=tmp_path,
        ),
        "oom:head": ImageSpec(
            argv=[python, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], cwd=tmp_path
        ),
        "suite:base": ImageSpec(argv=[python], cwd=tmp_path),
        SIDECAR: ImageSpec(argv=["sleep", "infinity"], cwd=tmp_path),
    }


def baseline_objects(name: str) -> list[dict[str, Any]]:
    """The team's Deployment and Service, meshed (an `istio-proxy` container second)."""
    labels = {"app": name}
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": {**labels, "version": "v1"}},
                    "spec": {
                        "containers": [
                            {
                                "name": "app",
                                "image": "echo:base",
                                "ports": [{"name": "http", "containerPort": 8080}],
                                "env": [{"name": "NAME", "value": name}],
                                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                            },
                            {"name": "istio-proxy", "image": SIDECAR},
                        ]
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        },
    ]


def team_virtual_service(name: str) -> dict[str, Any]:
    """A VirtualService as a team writes it: two routes of its own, labels and annotations loopgate
    must leave exactly as they are."""
    host = f"{name}.{NS}.svc.cluster.local"
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"team": "shop"},
            "annotations": {"owner": "shop-team"},
        },
        "spec": {
            "hosts": [name],
            "http": [
                {
                    "name": "canary-header",
                    "match": [{"headers": {"x-canary": {"exact": "1"}}}],
                    "route": [{"destination": {"host": host, "port": {"number": 80}}}],
                },
                {"name": "default", "route": [{"destination": {"host": host, "port": {"number": 80}}}]},
            ],
        },
    }


def config(
    *,
    routing: str = "istio",
    image: str = "echo:{sha}",
    services: tuple[str, ...] = ("web",),
    **settings: Any,
) -> Config:
    return Config.model_validate(
        {
            "version": 1,
            "runtime": {
                "kind": "kubernetes",
                "kubernetes": {"routing": routing, "ready_timeout": 20, **settings},
            },
            "services": {
                name: {
                    "paths": [f"{name}/**"],
                    "kubernetes": {
                        "namespace": NS,
                        "workload": f"deployment/{name}",
                        "port": 80,
                        "image": image,
                    },
                }
                for name in services
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
    """Every request the fake refused as invalid (422) or malformed (400)."""
    return [f"{r.method} {r.path}: {r.body}" for r in cluster.requests if r.status in (400, 422)]


@pytest.fixture
def shop(images: dict[str, ImageSpec]) -> Iterator[FakeCluster]:
    with FakeCluster(images=images, routing="istio") as cluster:
        for obj in baseline_objects("web") + baseline_objects("api"):
            cluster.store.create(obj)
        wait_for("the baseline Available", lambda: available(cluster, "web") and available(cluster, "api"))
        yield cluster


def runtime_for(cluster: FakeCluster, tmp_path: Path) -> KubernetesRuntime:
    return KubernetesRuntime(RuntimeSettings(state_dir=tmp_path / "state"), api_client=cluster.api_client())


def start(runtime: KubernetesRuntime, tmp_path: Path, cfg: Config) -> Sandbox:
    baseline = runtime.up_baseline(Source(tmp_path, "base"), cfg)
    return runtime.new_sandbox(baseline, cfg, Source(tmp_path, "head"))


def through_mesh(cluster: FakeCluster, service: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    port = cluster.mesh.port_of(NS, service)
    answer = httpx.get(f"http://127.0.0.1:{port}/who", headers=headers or {}, timeout=10)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def comparable(vs: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    meta = vs["metadata"]
    return vs["spec"], meta.get("labels"), meta.get("annotations"), meta["name"]


# -- baseline -----------------------------------------------------------------------------------------


def test_baseline_is_the_clusters_own(shop: FakeCluster, tmp_path: Path) -> None:
    runtime = runtime_for(shop, tmp_path)
    cfg = config(services=("api", "web"))
    baseline = runtime.up_baseline(Source(tmp_path, "base"), cfg)
    assert baseline.reused
    assert dict(baseline.entry_urls) == {
        "api": "http://api.shop.svc.cluster.local:80",
        "web": "http://web.shop.svc.cluster.local:80",
    }
    assert runtime.baseline_health(baseline) is None
    again = runtime.up_baseline(Source(tmp_path, "other"), cfg)
    assert again.env_id == baseline.env_id  # one cluster, one baseline, whatever the commit

    missing = config(services=("nope",))
    with pytest.raises(ConfigError, match=r"services\.nope\.kubernetes\.workload"):
        runtime.up_baseline(Source(tmp_path, "base"), missing)


def test_unavailable_baseline_is_an_infrastructure_error_with_the_reason(
    images: dict[str, ImageSpec], tmp_path: Path
) -> None:
    with FakeCluster(images=images) as cluster:
        deployment, service = baseline_objects("web")
        deployment["spec"]["template"]["spec"]["containers"][0]["image"] = "echo:missing"
        cluster.store.create(deployment)
        cluster.store.create(service)
        wait_for(
            "the pull failure",
            lambda: any(
                "ErrImagePull" in str(p.get("status")) or "ImagePullBackOff" in str(p.get("status"))
                for p in cluster.store.list("Pod", NS)
            ),
        )
        runtime = runtime_for(cluster, tmp_path)
        with pytest.raises(
            InfrastructureError, match=r"web .*not Available.*(ErrImagePull|ImagePullBackOff)"
        ):
            runtime.up_baseline(Source(tmp_path, "base"), config())


# -- fork, route, probe, teardown ---------------------------------------------------------------------


def test_fork_route_and_teardown_with_istio(shop: FakeCluster, tmp_path: Path) -> None:
    original = shop.store.create(team_virtual_service("web"))
    runtime = runtime_for(shop, tmp_path)
    cfg = config(services=("api", "web"))
    sandbox = start(runtime, tmp_path, cfg)
    key = sandbox.routing_key
    spec = cfg.services["web"]

    built = runtime.build(sandbox, "web", spec)
    assert built.ok and built.source == "echo:head"
    forked = runtime.fork(sandbox, "web", spec)
    assert forked.status == "ready", forked.detail
    assert forked.url == f"http://web-lg-{key}.shop.svc.cluster.local:80"

    fork = shop.store.get("Deployment", NS, f"web-lg-{key}")
    labels = fork["metadata"]["labels"]
    assert labels["loopgate.dev/sandbox"] == key and labels["loopgate.dev/role"] == "fork"
    assert labels["loopgate.dev/service"] == "web" and labels["app.kubernetes.io/managed-by"] == "loopgate"
    assert "loopgate.dev/expires-at" in fork["metadata"]["annotations"]
    assert fork["spec"]["template"]["spec"]["containers"][0]["image"] == "echo:head"
    fork_pods = shop.store.list("Pod", NS, label_selector=f"loopgate.dev/sandbox={key}")
    assert len(fork_pods) == 1
    # The baseline Service never selects the fork's pods; the fork's Service selects only them.
    baseline_pods = shop.store.list("Pod", NS, label_selector="app=web")
    assert fork_pods[0]["metadata"]["name"] not in {p["metadata"]["name"] for p in baseline_pods}
    fork_service = shop.store.get("Service", NS, f"web-lg-{key}")
    assert fork_service["spec"]["selector"]["loopgate.dev/sandbox"] == key

    assert runtime.route(sandbox) is None
    vs = shop.store.get("VirtualService", NS, "web")
    assert [r["name"] for r in vs["spec"]["http"]] == [f"loopgate-{key}", "canary-header", "default"]
    assert vs["spec"]["http"][1:] == original["spec"]["http"]

    # The mesh sends tagged requests (baggage member or header) to the fork, everything else to the
    # baseline; a longer key sharing the prefix is not the sandbox's.
    assert through_mesh(shop, "web")["version"] == "1"
    assert through_mesh(shop, "web", {"baggage": f"a=b,loopgate-sandbox={key}"})["version"] == "2"
    assert through_mesh(shop, "web", {"x-loopgate-sandbox": key})["version"] == "2"
    assert through_mesh(shop, "web", {"baggage": f"loopgate-sandbox={key}0"})["version"] == "1"

    # Probes go through the API server's service proxy: tagged to the fork, untagged to the baseline.
    request = ProbeRequest("web", "GET", "/who")
    tagged = runtime.probe(sandbox, request, tagged=True)
    untagged = runtime.probe(sandbox, request, tagged=False)
    assert tagged.status == 200 and b'"version": "2"' in tagged.body
    assert untagged.status == 200 and b'"version": "1"' in untagged.body

    # What the sidecars saw: the sandbox's tagged requests at its fork, untagged ones at the baseline,
    # never the other key's.
    seen = wait_for(
        "the access log",
        lambda: (
            [r for r in runtime.observed_requests(sandbox) if r.service == "web" and r.path == "/who"]
            if len(runtime.observed_requests(sandbox)) >= 4
            else None
        ),
    )
    assert {(r.routing_key, r.target) for r in seen} == {(key, key), (None, None)}
    assert all(r.status == 200 for r in seen)

    # Another process (a restarted App, `loopgate sandbox delete`) finds the forks by their labels.
    other = runtime_for(shop, tmp_path)
    other.up_baseline(Source(tmp_path, "base"), cfg)
    adopted = other.probe(sandbox, request, tagged=True)
    assert b'"version": "2"' in adopted.body

    other.teardown(sandbox)
    after = shop.store.get("VirtualService", NS, "web")
    assert comparable(after) == comparable(original)
    wait_for(
        "nothing of the sandbox left", lambda: not shop.store.list("Pod", NS, f"loopgate.dev/sandbox={key}")
    )
    for kind in ("Deployment", "Service", "Job"):
        assert shop.store.list(kind, NS, f"loopgate.dev/sandbox={key}") == []
    assert through_mesh(shop, "web", {"x-loopgate-sandbox": key})["version"] == "1"
    assert refused(shop) == []


def test_owned_virtual_service_when_the_team_has_none(shop: FakeCluster, tmp_path: Path) -> None:
    runtime = runtime_for(shop, tmp_path)
    cfg = config()
    sandbox = start(runtime, tmp_path, cfg)
    runtime.build(sandbox, "web", cfg.services["web"])
    assert runtime.fork(sandbox, "web", cfg.services["web"]).status == "ready"
    runtime.route(sandbox)
    owned = shop.store.get("VirtualService", NS, "web-loopgate")
    assert owned["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "loopgate"
    assert [r["name"] for r in owned["spec"]["http"]] == [f"loopgate-{sandbox.routing_key}", "baseline"]
    assert through_mesh(shop, "web", {"x-loopgate-sandbox": sandbox.routing_key})["version"] == "2"
    assert through_mesh(shop, "web")["version"] == "1"
    runtime.unroute(sandbox)
    assert shop.store.list("VirtualService", NS) == []  # loopgate's own, gone with its last route
    runtime.teardown(sandbox)
    assert refused(shop) == []


def test_fork_whose_image_cannot_be_pulled_is_start_failed_with_reason_and_events(
    shop: FakeCluster, tmp_path: Path
) -> None:
    runtime = runtime_for(shop, tmp_path)
    cfg = config(image="echo:{sha}-missing")
    cfg = cfg.model_copy(
        update={
            "services": {
                "web": cfg.services["web"].model_copy(
                    update={
                        "kubernetes": cfg.services["web"].kubernetes.model_copy(update={"ready_timeout": 3})  # type: ignore[union-attr]
                    }
                )
            }
        }
    )
    sandbox = start(runtime, tmp_path, cfg)
    runtime.build(sandbox, "web", cfg.services["web"])
    started = time.monotonic()
    outcome = runtime.fork(sandbox, "web", cfg.services["web"])
    assert time.monotonic() - started < 15
    assert outcome.status == "start_failed"
    assert outcome.detail is not None
    assert "never became Available within 3s" in outcome.detail
    assert "ImagePullBackOff" in outcome.detail
    assert 'Failed to pull image "echo:head-missing"' in outcome.detail  # the Warning event's message
    runtime.teardown(sandbox)
    assert refused(shop) == []


def test_crash_looping_fork_names_the_crash_and_carries_its_log(shop: FakeCluster, tmp_path: Path) -> None:
    runtime = runtime_for(shop, tmp_path)
    cfg = config(image="crash:{sha}", ready_timeout=4)
    sandbox = start(runtime, tmp_path, cfg)
    runtime.build(sandbox, "web", cfg.services["web"])
    outcome = runtime.fork(sandbox, "web", cfg.services["web"])
    assert outcome.status == "start_failed"
    assert outcome.detail is not None and "last terminated: Error (exit 3)" in outcome.detail
    assert "CrashLoopBackOff" in outcome.detail or "Back-off restarting failed container" in outcome.detail
    assert outcome.log_tail is not None and "boom: no config" in outcome.log_tail
    runtime.teardown(sandbox)


def test_oom_killed_fork_says_so(shop: FakeCluster, tmp_path: Path) -> None:
    runtime = runtime_for(shop, tmp_path)
    cfg = config(image="oom:{sha}", ready_timeout=3)
    sandbox = start(runtime, tmp_path, cfg)
    runtime.build(sandbox, "web", cfg.services["web"])
    outcome = runtime.fork(sandbox, "web", cfg.services["web"])
    assert outcome.status == "start_failed"
    assert outcome.detail is not None and "OOMKilled (exit 137)" in outcome.detail
    runtime.teardown(sandbox)


def test_a_conflicting_write_between_read_and_replace_is_retried(shop: FakeCluster, tmp_path: Path) -> None:
    """The fake's store changes the VirtualService right after loopgate read it, three times: each
    replace gets a 409, and loopgate reads again until its write lands."""
    original = shop.store.create(team_virtual_service("web"))
    runtime = runtime_for(shop, tmp_path)
    cfg = config()
    sandbox = start(runtime, tmp_path, cfg)
    runtime.build(sandbox, "web", cfg.services["web"])
    assert runtime.fork(sandbox, "web", cfg.services["web"]).status == "ready"

    store = shop.store
    real_list = store.list
    bumps = {"left": 3}

    def list_then_bump(kind: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        items = real_list(kind, *args, **kwargs)
        if kind == "VirtualService" and bumps["left"] > 0:
            bumps["left"] -= 1
            current = store.get("VirtualService", NS, "web")
            current["metadata"]["annotations"]["touched"] = str(bumps["left"])
            store.replace(current)
        return items

    store.list = list_then_bump  # type: ignore[method-assign]
    try:
        shop.clear_requests()
        runtime.route(sandbox)
    finally:
        store.list = real_list  # type: ignore[method-assign]
    conflicts = [r for r in shop.requests if r.method == "PUT" and r.status == 409]
    assert len(conflicts) == 3
    vs = store.get("VirtualService", NS, "web")
    assert objects.route_keys(vs) == [sandbox.routing_key]
    assert vs["metadata"]["annotations"]["touched"] == "0"  # the other writer's change is kept
    runtime.teardown(sandbox)
    after = store.get("VirtualService", NS, "web")
    assert after["spec"] == original["spec"]


def test_gateway_api_routes_one_httproute_per_sandbox(images: dict[str, ImageSpec], tmp_path: Path) -> None:
    with FakeCluster(images=images, routing="gateway-api") as cluster:
        for obj in baseline_objects("web"):
            cluster.store.create(obj)
        wait_for("web Available", lambda: available(cluster, "web"))
        runtime = runtime_for(cluster, tmp_path)
        cfg = config(routing="gateway-api")
        sandbox = start(runtime, tmp_path, cfg)
        key = sandbox.routing_key
        runtime.build(sandbox, "web", cfg.services["web"])
        assert runtime.fork(sandbox, "web", cfg.services["web"]).status == "ready"
        assert runtime.route(sandbox) is None
        route = cluster.store.get("HTTPRoute", NS, f"web-lg-{key}")
        assert route["spec"]["parentRefs"][0]["name"] == "web"
        assert route["metadata"]["labels"]["loopgate.dev/sandbox"] == key
        wait_for(
            "the tagged request at the fork",
            lambda: through_mesh(cluster, "web", {"x-loopgate-sandbox": key})["version"] == "2",
        )
        assert through_mesh(cluster, "web")["version"] == "1"
        runtime.teardown(sandbox)
        assert cluster.store.list("HTTPRoute", NS) == []
        assert refused(cluster) == []


def test_routing_none_leaves_routes_to_the_mesh(shop: FakeCluster, tmp_path: Path) -> None:
    runtime = runtime_for(shop, tmp_path)
    cfg = config(routing="none")
    sandbox = start(runtime, tmp_path, cfg)
    runtime.build(sandbox, "web", cfg.services["web"])
    assert runtime.fork(sandbox, "web", cfg.services["web"]).status == "ready"
    assert runtime.route(sandbox) == NONE_NOTE
    assert shop.store.list("VirtualService", NS) == []
    runtime.teardown(sandbox)


def test_suite_runs_as_a_job_with_the_sandbox_env(shop: FakeCluster, tmp_path: Path) -> None:
    runtime = runtime_for(shop, tmp_path)
    cfg = config()
    sandbox = start(runtime, tmp_path, cfg)
    script = (
        "import os; print('key', os.environ.get('LOOPGATE_ROUTING_KEY'), os.environ.get('LOOPGATE_BAGGAGE'))"
    )
    from bot.config.kubernetes import KubernetesSuite

    suite = SuiteRequest(
        "e2e",
        None,
        30,
        "base",
        kubernetes=KubernetesSuite(image="suite:{base_sha}", command=[sys.executable, "-c", script]),
    )
    shop.clear_requests()
    outcome = runtime.run_suite(sandbox, suite)
    assert outcome.exit_code == 0, outcome.log_tail
    key = sandbox.routing_key
    assert f"key {key} loopgate-sandbox={key}" in outcome.log_tail
    job = next(r.body for r in shop.requests if r.method == "POST" and r.path.endswith("/jobs"))
    assert job["metadata"]["name"] == f"lg-{key}-e2e"
    assert job["metadata"]["labels"]["loopgate.dev/sandbox"] == key
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LOOPGATE_WEB_URL"] == "http://web.shop.svc.cluster.local:80"
    baseline = runtime.run_suite(sandbox, SuiteRequest(**{**suite.__dict__, "target": "baseline"}))
    assert "key None None" in baseline.log_tail

    with pytest.raises(ConfigError, match="kubernetes"):
        runtime.run_suite(sandbox, SuiteRequest("e2e", "pytest", 30, "base"))
    runtime.teardown(sandbox)
    assert refused(shop) == []


# -- limits and gc ------------------------------------------------------------------------------------


def fork_objects(key: str, *, expires: datetime, service: str = "web") -> list[dict[str, Any]]:
    """A sandbox's fork Deployment and Service as the runtime makes them (objects.py's builders)."""
    spec = config().services["web"].kubernetes
    assert spec is not None
    stamp = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    baseline, baseline_service = baseline_objects(service)
    deployment = objects.fork_deployment(
        baseline,
        service=service,
        spec=spec,
        key=key,
        image="echo:head",
        namespace=NS,
        expires_at=stamp,
        services_in_namespace=[baseline_service],
    )
    fork_svc = objects.fork_service(deployment, service=service, spec=spec, key=key, expires_at=stamp)
    return [deployment, fork_svc]


def keys(n: int, prefix: str = "k") -> list[str]:
    return [f"{prefix}{i:06d}" for i in range(n)]


def test_max_sandboxes_is_enforced_with_one_list_call(tmp_path: Path) -> None:
    with FakeCluster() as cluster:
        for obj in baseline_objects("web"):
            cluster.store.create(obj)
        later = datetime.now(UTC) + timedelta(hours=1)
        for key in keys(3):
            for obj in fork_objects(key, expires=later):
                cluster.store.create(obj)
        expired_key = "expired01"
        for obj in fork_objects(expired_key, expires=datetime.now(UTC) - timedelta(minutes=1)):
            cluster.store.create(obj)
        runtime = runtime_for(cluster, tmp_path)
        # The fake has no kubelet here: mark the baseline Available as the controller would.
        cluster.store.set_status(
            "Deployment",
            NS,
            "web",
            {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
        )
        cfg = config(max_sandboxes=3)
        baseline = runtime.up_baseline(Source(tmp_path, "base"), cfg)
        cluster.clear_requests()
        with pytest.raises(
            InfrastructureError,
            match=r"the cluster already holds 3 sandboxes \(runtime\.kubernetes\.max_sandboxes = 3\)",
        ):
            runtime.new_sandbox(baseline, cfg, Source(tmp_path, "head"))
        assert [(r.method, r.path) for r in cluster.requests] == [("GET", "/apis/apps/v1/deployments")]
        assert runtime.new_sandbox(baseline, config(max_sandboxes=4), Source(tmp_path, "head")).routing_key


def test_gc_removes_expired_objects_and_routes_whose_fork_is_gone(tmp_path: Path) -> None:
    with FakeCluster() as cluster:
        store = cluster.store
        now = datetime.now(UTC)
        live, expired_key, orphan = "live0001", "expired1", "orphan01"
        for obj in fork_objects(live, expires=now + timedelta(hours=1)):
            store.create(obj)
        for obj in fork_objects(expired_key, expires=now - timedelta(seconds=1)):
            store.create(obj)
        team = team_virtual_service("web")
        original = store.create(team)
        vs = copy.deepcopy(original)
        for key in (live, expired_key, orphan):
            route = objects.istio_route(
                key=key, routing=config().routing, fork_host=f"web-lg-{key}.shop.svc.cluster.local", port=80
            )
            vs = objects.with_route(vs, route)
        store.replace(vs)
        # loopgate's own VirtualService for another service, holding only the orphan's route.
        spec = config(services=("api",)).services["api"].kubernetes
        assert spec is not None
        owned = objects.owned_virtual_service(
            service="api", spec=spec, baseline_host="api.shop.svc.cluster.local"
        )
        owned = objects.with_route(
            owned,
            objects.istio_route(
                key=orphan, routing=config().routing, fork_host="api-lg-orphan01.shop", port=80
            ),
        )
        store.create(owned)

        web_spec = config().services["web"].kubernetes
        assert web_spec is not None
        later = (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        for key in (live, orphan):  # the orphan's HTTPRoute outlives its fork (a crash mid-teardown)
            store.create(
                objects.http_route(
                    service="web",
                    spec=web_spec,
                    key=key,
                    routing=config().routing,
                    fork_service=f"web-lg-{key}",
                    namespace=NS,
                    expires_at=later,
                )
            )
        store.create(
            objects.suite_job(
                name=f"lg-{expired_key}-e2e",
                namespace=NS,
                key=expired_key,
                suite_name="e2e",
                image="suite:base",
                command=["true"],
                env={},
                timeout_s=60,
                nonce=objects.new_nonce(),
                expires_at=(now - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
        )

        runtime = runtime_for(cluster, tmp_path)
        removed = runtime.gc()
        assert any(f"Job shop/lg-{expired_key}-e2e" in line for line in removed)
        assert any(f"HTTPRoute shop/web-lg-{orphan}" in line for line in removed)
        assert [r["metadata"]["name"] for r in store.list("HTTPRoute", NS)] == [f"web-lg-{live}"]
        assert any(f"Deployment shop/web-lg-{expired_key}" in line for line in removed)
        assert any(f"Service shop/web-lg-{expired_key}" in line for line in removed)
        assert any(f"loopgate-{orphan}" in line for line in removed)
        assert store.list("Deployment", NS, label_selector=f"loopgate.dev/sandbox={expired_key}") == []
        assert [d["metadata"]["name"] for d in store.list("Deployment", NS)] == [f"web-lg-{live}"]
        kept = store.get("VirtualService", NS, "web")
        assert objects.route_keys(kept) == [live]
        assert kept["spec"]["http"][1:] == original["spec"]["http"]
        assert [v["metadata"]["name"] for v in store.list("VirtualService", NS)] == ["web"]
        assert runtime.gc() == []  # nothing left to do
        assert refused(cluster) == []


def test_a_thousand_sandboxes_cost_one_list_call_per_kind(tmp_path: Path) -> None:
    """1,000 sandboxes' objects in the fake (made straight in its store): a gc sweep and a route change
    each make at most one list call per kind and take well under a second of the client's own time."""
    with FakeCluster() as cluster:
        store = cluster.store
        later = datetime.now(UTC) + timedelta(hours=1)
        vs = team_virtual_service("web")
        routing = config().routing
        all_keys = keys(1000)
        for key in all_keys:
            for obj in fork_objects(key, expires=later):
                store.create(obj)
        # The VirtualService as 1,000 route additions leave it (loopgate's routes above the team's, in
        # the order added), built in one go: with_route copies the object each time, O(n²) for seeding.
        ours = [
            objects.istio_route(key=k, routing=routing, fork_host=f"web-lg-{k}.shop", port=80)
            for k in all_keys
        ]
        vs["spec"]["http"] = ours + vs["spec"]["http"]
        assert objects.route_keys(objects.with_route(vs, ours[-1])) == all_keys
        store.create(vs)
        kube = Kube(cluster.api_client())

        cluster.clear_requests()
        started = time.thread_time()
        assert sweep(kube) == []
        sweep_cpu = time.thread_time() - started
        lists = [r.path for r in cluster.requests if r.method == "GET"]
        assert len(lists) == len(set(lists)) <= 6, lists
        assert all("/namespaces/" not in path for path in lists)  # cluster-wide, once per kind
        assert sweep_cpu < 1.0, f"gc took {sweep_cpu:.2f}s of client time"

        # One more sandbox's route into the VirtualService that holds the 1,000.
        from bot.runtimes.kubernetes.forks import Fork
        from bot.runtimes.kubernetes.routes import add_istio_route, remove_istio_routes

        spec = config().services["web"].kubernetes
        assert spec is not None
        fork = Fork("web", NS, "web-lg-new00001", "web-lg-new00001", 80)
        cluster.clear_requests()
        started = time.thread_time()
        add_istio_route(
            kube,
            service="web",
            spec=spec,
            routing=routing,
            key="new00001",
            fork=fork,
            baseline_host="web.shop.svc.cluster.local",
        )
        remove_istio_routes(kube, NS, {"new00001"})
        route_cpu = time.thread_time() - started
        gets = [r for r in cluster.requests if r.method == "GET"]
        assert len(gets) == 2, [r.path for r in gets]  # one list per change
        assert route_cpu < 1.0, f"the route change took {route_cpu:.2f}s of client time"
        assert objects.route_keys(store.get("VirtualService", NS, "web"))[-1] == all_keys[-1]


def test_missing_kubeconfig_is_one_line_infrastructure_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    runtime = KubernetesRuntime(RuntimeSettings(state_dir=tmp_path, kubeconfig=tmp_path / "nope"))
    with pytest.raises(InfrastructureError) as raised:
        runtime.gc()
    assert "\n" not in str(raised.value) and str(tmp_path / "nope") in str(raised.value)


def test_concurrent_forks_do_not_share_state(shop: FakeCluster, tmp_path: Path) -> None:
    """Two sandboxes forking the same service at once each get their own fork and route."""
    runtime = runtime_for(shop, tmp_path)
    cfg = config()
    sandboxes = [start(runtime, tmp_path, cfg) for _ in range(2)]
    results: list[str] = []

    def go(sandbox: Sandbox) -> None:
        runtime.build(sandbox, "web", cfg.services["web"])
        results.append(runtime.fork(sandbox, "web", cfg.services["web"]).status)
        runtime.route(sandbox)

    threads = [threading.Thread(target=go, args=(s,)) for s in sandboxes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["ready", "ready"]
    vs = shop.store.get("VirtualService", NS, "web-loopgate")
    assert sorted(objects.route_keys(vs)) == sorted(s.routing_key for s in sandboxes)
    for sandbox in sandboxes:
        assert through_mesh(shop, "web", {"x-loopgate-sandbox": sandbox.routing_key})["version"] == "2"
        runtime.teardown(sandbox)
    assert shop.store.list("VirtualService", NS) == []


def test_an_object_the_api_refuses_is_an_infrastructure_error_naming_the_cause(tmp_path: Path) -> None:
    with FakeCluster() as cluster:
        kube = Kube(cluster.api_client())
        cluster.store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        deployment = fork_objects("bad00001", expires=datetime.now(UTC))[0]
        deployment["spec"]["replicas"] = "one"
        with pytest.raises(InfrastructureError, match=r"create Deployment shop/web-lg-bad00001: .*invalid"):
            kube.create(deployment)


def test_sweep_every_runs_gc_until_stopped(tmp_path: Path) -> None:
    with FakeCluster() as cluster:
        for obj in fork_objects("old00001", expires=datetime.now(UTC) - timedelta(seconds=1)):
            cluster.store.create(obj)
        runtime = runtime_for(cluster, tmp_path)
        stop = threading.Event()
        thread = threading.Thread(target=runtime.sweep_every, args=(0.05, stop))
        thread.start()
        try:
            wait_for("the sweep", lambda: cluster.store.list("Deployment", NS) == [], timeout=10)
        finally:
            stop.set()
            thread.join(timeout=10)
        assert not thread.is_alive()


@pytest.mark.parametrize(
    ("origin", "context"),
    [
        ("https://github.com/acme/shop.git", "git://github.com/acme/shop.git##"),
        ("https://x-access-token:ghs_secret@github.com/acme/shop.git", "git://github.com/acme/shop.git##"),
        ("git@github.com:acme/shop.git", "git://github.com/acme/shop.git##"),
        ("ssh://deploy:pw@git.example/acme/shop.git", "git://git.example/acme/shop.git##"),
    ],
)
def test_kaniko_fetches_the_pushed_head_never_a_credential(tmp_path: Path, origin: str, context: str) -> None:
    from bot.runtimes.kubernetes.runtime import _git_context
    from tests.gitrepo import GitRepo

    repo = GitRepo.init(tmp_path / "repo", {"a": "1"})
    repo.git("remote", "add", "origin", origin)
    sha = repo.git("rev-parse", "HEAD")
    built = _git_context(repo.path, sha)
    assert built == context + sha
    assert "secret" not in built and "pw" not in built
