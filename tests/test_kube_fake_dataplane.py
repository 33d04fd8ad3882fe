"""The fake cluster's data plane: workloads really run as local processes, the mesh really routes.

loopgate's end-to-end test on the fake cluster is only worth something if a fork that cannot pull its
image, or crashes, looks exactly as it would on a real cluster, and if tagged requests reach a fork only
through the routes loopgate wrote. These tests drive the kubelet and the mesh with a tiny real HTTP
service (a script written here, run by the current interpreter) on 127.0.0.1, nothing mocked.
"""

from __future__ import annotations

import functools
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.kube_fake import FakeCluster
from tests.kube_fake.images import ImageSpec
from tests.kube_fake.kubelet import PORTS_ANNOTATION
from tests.kube_fake.mesh import (
    APP_PORTS_ANNOTATION,
    Mesh,
    Request,
    apply_header_ops,
    route_gateway_api,
    route_istio,
)
from tests.kube_fake.store import Store

pytestmark = pytest.mark.timeout(180)  # a hang fails in 3 min; a busy 2-core CI host is no hang

NS = "shop"
KEY = "abc123"
# What loopgate matches: the exact W3C baggage member, never a substring of a longer key.
BAGGAGE_REGEX = rf"^(.*,)?\s*loopgate-sandbox={KEY}\s*(;[^,]*)?(,.*)?$"

ECHO = """\
import json, os, sys, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HEALTHY = [True]

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            return self.answer(200 if HEALTHY[0] else 500, {"ok": HEALTHY[0]})
        if self.path == "/fail":
            HEALTHY[0] = False
        if self.path.startswith("/hop"):
            request = urllib.request.Request(os.environ["NEXT_URL"] + "/who")
            if self.headers.get("baggage"):
                request.add_header("baggage", self.headers["baggage"])
            with urllib.request.urlopen(request, timeout=5) as reply:
                return self.answer(200, {"via": os.environ["NAME"], "next": json.loads(reply.read())})
        self.answer(200, {"service": os.environ["NAME"], "path": self.path,
                          "baggage": self.headers.get_all("baggage") or []})

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

print("listening on", sys.argv[1], flush=True)
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


@pytest.fixture
def images(tmp_path: Path) -> dict[str, ImageSpec]:
    """`echo:1` serves HTTP; `crash:1` writes to stderr and exits 3; `oom:1` dies of SIGKILL (137);
    `tools:1` is a working directory with a script for Jobs."""
    (tmp_path / "echo.py").write_text(ECHO)
    (tmp_path / "suite.py").write_text(
        "import os, sys\n"
        "print('suite in', os.getcwd(), os.environ.get('TARGET'))\n"
        "sys.exit(int(sys.argv[1]))\n"
    )
    python = sys.executable
    return {
        "echo:1": ImageSpec(argv=[python, "echo.py", "{port}"], cwd=tmp_path),
        "crash:1": ImageSpec(
            argv=[python, "-c", "import sys; sys.stderr.write('boom: no config\\n'); sys.exit(3)"],
            cwd=tmp_path,
        ),
        "oom:1": ImageSpec(
            argv=[python, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], cwd=tmp_path
        ),
        "tools:1": ImageSpec(argv=[python], cwd=tmp_path, env={"TOOLS": "1"}),
    }


@pytest.fixture(autouse=True)
def no_process_left(tmp_path: Path) -> Iterator[None]:
    """Nothing the cluster started outlives it: no child process runs anything from this test's dir, and
    no kubelet or mesh thread is left."""
    yield
    deadline = time.monotonic() + 3
    while True:
        left = []
        for child in psutil.Process().children(recursive=True):
            try:
                if str(tmp_path) in " ".join(child.cmdline()) or child.cwd().startswith(str(tmp_path)):
                    left.append(child)
            except psutil.Error:
                continue
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not left, f"processes left running: {left}"
    threads = [t.name for t in threading.enumerate() if t.name.startswith(("fake-kubelet", "fake-mesh"))]
    assert not threads, f"threads left running: {threads}"


def wait_for(what: str, check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def service(name: str, app: str, target: int | str = 8080) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": 80, "targetPort": target}]},
    }


def deployment(
    name: str, app: str, image: str = "echo:1", env: dict[str, str] | None = None, replicas: int = 1
) -> dict[str, Any]:
    """A meshed Deployment as a team writes it: the app container first, then the Istio sidecar."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": app}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {"labels": {"app": app}},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": image,
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "env": [{"name": "NAME", "value": name}]
                            + [{"name": k, "value": v} for k, v in (env or {}).items()],
                            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                        },
                        {"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.24.0"},
                    ]
                },
            },
        },
    }


def job(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            **spec,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "suite",
                            "image": "tools:1",
                            "command": command,
                            "env": [{"name": "TARGET", "value": f"http://web.{NS}.svc.cluster.local:80"}],
                        }
                    ],
                }
            },
        },
    }


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def available(store: Store, name: str) -> bool:
    c = condition(store.get("Deployment", NS, name), "Available")
    return c is not None and c["status"] == "True"


def pods_of(store: Store, app: str) -> list[dict[str, Any]]:
    return store.list("Pod", NS, label_selector=f"app={app}")


def create(store: Store, *objects: dict[str, Any]) -> None:
    for obj in objects:
        store.create(obj)


def access_log(store: Store, app: str) -> list[dict[str, Any]]:
    lines = []
    for pod in pods_of(store, app):
        text = store.read_log(NS, pod["metadata"]["name"], "istio-proxy")
        lines += [json.loads(line) for line in text.splitlines()]
    return lines


def test_deployment_runs_and_answers_through_the_service_proxy_and_the_mesh(
    images: dict[str, ImageSpec],
) -> None:
    with FakeCluster(images=images, routing="none") as cluster:
        store = cluster.store
        create(store, service("web", "web", target="http"), service("front", "front"))
        create(
            store,
            deployment("web", "web", replicas=2),
            deployment("front", "front", env={"NEXT_URL": "http://web:80"}),
        )
        wait_for("web and front Available", lambda: available(store, "web") and available(store, "front"))

        status = store.get("Deployment", NS, "web")["status"]
        assert (status["readyReplicas"], status["availableReplicas"], status["observedGeneration"]) == (
            2,
            2,
            1,
        )
        pod = pods_of(store, "web")[0]
        assert pod["metadata"]["name"].startswith("web-") and len(pod["metadata"]["name"]) == len("web-") + 5
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
        assert pod["status"]["podIP"] == "127.0.0.1" and pod["status"]["phase"] == "Running"
        inbound = json.loads(pod["metadata"]["annotations"][PORTS_ANNOTATION])
        app = json.loads(pod["metadata"]["annotations"][APP_PORTS_ANNOTATION])
        assert list(inbound) == list(app) == ["8080"] and inbound != app  # the sidecar stands in front
        assert all(s["ready"] for s in pod["status"]["containerStatuses"])

        proxied = httpx.get(f"{cluster.url}/api/v1/namespaces/{NS}/services/web:80/proxy/hello", timeout=5)
        assert proxied.status_code == 200 and proxied.json()["service"] == "web"

        mesh = f"http://127.0.0.1:{cluster.mesh.port_of(NS, 'front')}"
        hop = httpx.get(f"{mesh}/hop", headers={"baggage": "k=v", "traceparent": "00-ab-cd-01"}, timeout=5)
        # front's NEXT_URL (`http://web:80`) was resolved by the cluster DNS emulation to web's mesh port.
        assert hop.json() == {"via": "front", "next": {"service": "web", "path": "/who", "baggage": ["k=v"]}}

        front_log = wait_for("front's access log", lambda: access_log(store, "front"))
        assert [
            (e["method"], e["path"], e["response_code"], e["baggage"], e["traceparent"]) for e in front_log
        ] == [("GET", "/hop", 200, "k=v", "00-ab-cd-01")]
        assert front_log[0]["upstream_cluster"].startswith("inbound|")
        assert front_log[0]["x_loopgate_sandbox"] == "-"
        assert front_log[0]["start_time"].endswith("Z") and isinstance(front_log[0]["duration"], int)
        # The inbound sidecar logs whatever reaches the pod: the service proxy's request too, as in a cluster.
        web_log = wait_for(
            "web's access log", lambda: len(access_log(store, "web")) == 2 and access_log(store, "web")
        )
        assert sorted(e["path"] for e in web_log) == ["/hello", "/who"]

        # A template change replaces the pods; scaling down removes the extra one.
        web = store.get("Deployment", NS, "web")
        old = {p["metadata"]["name"] for p in pods_of(store, "web")}
        web["spec"]["replicas"] = 1
        web["spec"]["template"]["metadata"]["labels"]["rev"] = "2"
        store.replace(web)
        wait_for(
            "the new pod alone",
            lambda: (
                [
                    p["metadata"]["name"]
                    for p in pods_of(store, "web")
                    if p["metadata"]["name"] not in old and p["status"].get("phase") == "Running"
                ]
                and len(pods_of(store, "web")) == 1
            ),
        )
        wait_for(
            "observedGeneration 2",
            lambda: (
                store.get("Deployment", NS, "web")["status"]["observedGeneration"] == 2
                and available(store, "web")
            ),
        )


def _route_pair(store: Store) -> None:
    create(store, service("web", "web"), service(f"web-lg-{KEY}", f"web-lg-{KEY}"))
    create(store, deployment("web", "web"), deployment(f"web-lg-{KEY}", f"web-lg-{KEY}"))
    wait_for(
        "baseline and fork Available", lambda: available(store, "web") and available(store, f"web-lg-{KEY}")
    )


def _served_by(port: int, headers: dict[str, str]) -> str:
    return str(httpx.get(f"http://127.0.0.1:{port}/api", headers=headers, timeout=5).json()["service"])


def test_istio_virtual_service_routes_tagged_requests_to_the_fork(images: dict[str, ImageSpec]) -> None:
    with FakeCluster(images=images, routing="istio") as cluster:
        store = cluster.store
        _route_pair(store)
        port = cluster.mesh.port_of(NS, "web")
        assert _served_by(port, {"baggage": f"loopgate-sandbox={KEY}"}) == "web"  # no VirtualService yet
        fork = f"web-lg-{KEY}.{NS}.svc.cluster.local"
        store.create(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": "web", "namespace": NS},
                "spec": {
                    "hosts": ["web"],
                    "http": [
                        {
                            "name": f"loopgate-{KEY}",
                            "match": [
                                {"headers": {"baggage": {"regex": BAGGAGE_REGEX}}},
                                {"headers": {"x-loopgate-sandbox": {"exact": KEY}}},
                            ],
                            "headers": {"request": {"add": {"baggage": f"loopgate-sandbox={KEY}"}}},
                            "route": [{"destination": {"host": fork, "port": {"number": 80}}}],
                        },
                        {"name": "default", "route": [{"destination": {"host": "web"}}]},
                    ],
                },
            }
        )
        assert _served_by(port, {}) == "web"
        assert _served_by(port, {"baggage": f"k=v,loopgate-sandbox={KEY}"}) == f"web-lg-{KEY}"
        assert _served_by(port, {"baggage": f"loopgate-sandbox={KEY}4"}) == "web"
        tagged = httpx.get(
            f"http://127.0.0.1:{port}/api", headers={"x-loopgate-sandbox": KEY}, timeout=5
        ).json()
        assert tagged["service"] == f"web-lg-{KEY}" and tagged["baggage"] == [f"loopgate-sandbox={KEY}"]

        # Like Envoy's, the access log is written as the answer completes: it may trail the response a little.
        fork_log = wait_for(
            "two fork log lines",
            lambda: len(access_log(store, f"web-lg-{KEY}")) == 2 and access_log(store, f"web-lg-{KEY}"),
        )
        assert [e["x_loopgate_sandbox"] for e in fork_log] == ["-", KEY]
        assert fork_log[1]["baggage"] == f"loopgate-sandbox={KEY}"
        wait_for("three baseline log lines", lambda: len(access_log(store, "web")) == 3)


def test_gateway_api_httproute_routes_tagged_requests_to_the_fork(images: dict[str, ImageSpec]) -> None:
    with FakeCluster(images=images, routing="gateway-api") as cluster:
        store = cluster.store
        _route_pair(store)
        port = cluster.mesh.port_of(NS, "web")
        store.create(
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": {"name": f"web-lg-{KEY}", "namespace": NS},
                "spec": {
                    "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                    "rules": [
                        {
                            "matches": [
                                {
                                    "headers": [
                                        {
                                            "type": "RegularExpression",
                                            "name": "baggage",
                                            "value": BAGGAGE_REGEX,
                                        }
                                    ]
                                },
                                {"headers": [{"type": "Exact", "name": "x-loopgate-sandbox", "value": KEY}]},
                            ],
                            "backendRefs": [{"name": f"web-lg-{KEY}", "port": 80}],
                        }
                    ],
                },
            }
        )
        assert _served_by(port, {}) == "web"
        assert _served_by(port, {"baggage": f"loopgate-sandbox={KEY}"}) == f"web-lg-{KEY}"
        assert _served_by(port, {"baggage": f"loopgate-sandbox={KEY}4"}) == "web"
        assert _served_by(port, {"x-loopgate-sandbox": KEY}) == f"web-lg-{KEY}"

        # The mesh reports the route as a GAMMA implementation does.
        parents = store.get("HTTPRoute", NS, f"web-lg-{KEY}")["status"]["parents"]
        assert [(c["type"], c["status"]) for c in parents[0]["conditions"]] == [
            ("Accepted", "True"),
            ("ResolvedRefs", "True"),
        ]


def test_unknown_image_never_becomes_available(images: dict[str, ImageSpec]) -> None:
    with FakeCluster(images=images) as cluster:
        store = cluster.store
        create(store, deployment("web", "web", image="registry.example/web:deadbeef"))

        def backing_off() -> bool:
            pods = pods_of(store, "web")
            state = (
                pods[0].get("status", {}).get("containerStatuses", [{}])[0].get("state", {}) if pods else {}
            )
            return bool(state.get("waiting", {}).get("reason") == "ImagePullBackOff")

        wait_for("ImagePullBackOff", backing_off)
        deploy = store.get("Deployment", NS, "web")
        assert condition(deploy, "Available")["reason"] == "MinimumReplicasUnavailable"  # type: ignore[index]
        assert "readyReplicas" not in deploy["status"]  # zero counts are omitted, as the API server does
        events = [(e["type"], e["reason"], e["message"]) for e in store.list("Event", NS)]
        assert (
            "Warning",
            "Failed",
            'Failed to pull image "registry.example/web:deadbeef": not found',
        ) in events
        assert any(reason == "BackOff" for _, reason, _ in events)
        assert pods_of(store, "web")[0]["status"]["phase"] == "Pending"


def test_crashing_container_backs_off_and_keeps_its_log(images: dict[str, ImageSpec]) -> None:
    with FakeCluster(images=images) as cluster:
        store = cluster.store
        create(store, deployment("crash", "crash", image="crash:1"), deployment("oom", "oom", image="oom:1"))

        def last_state(app: str) -> dict[str, Any] | None:
            pods = pods_of(store, app)
            statuses = pods[0].get("status", {}).get("containerStatuses") if pods else None
            return statuses[0] if statuses and statuses[0]["restartCount"] >= 1 else None

        crashed = wait_for("a restart of crash", lambda: last_state("crash"))
        assert crashed["lastState"]["terminated"]["exitCode"] == 3
        assert crashed["lastState"]["terminated"]["reason"] == "Error"
        wait_for(
            "CrashLoopBackOff",
            lambda: (
                (last_state("crash") or {}).get("state", {}).get("waiting", {}).get("reason")
                == "CrashLoopBackOff"
            ),
        )
        pod = pods_of(store, "crash")[0]["metadata"]["name"]
        assert "boom: no config" in store.read_log(NS, pod, "app")
        assert any(
            e["reason"] == "BackOff" and e["message"].startswith("Back-off restarting failed container app")
            for e in store.list("Event", NS)
        )
        oom = wait_for("a restart of oom", lambda: last_state("oom"))
        assert oom["lastState"]["terminated"] | {"startedAt": "", "finishedAt": "", "containerID": ""} == {
            "exitCode": 137,
            "reason": "OOMKilled",
            "startedAt": "",
            "finishedAt": "",
            "containerID": "",
        }
        assert not available(store, "crash")


def test_jobs_complete_fail_and_hit_their_deadline(images: dict[str, ImageSpec]) -> None:
    with FakeCluster(images=images) as cluster:
        store = cluster.store
        create(
            store,
            service("web", "web"),
            job("passes", ["python", "suite.py", "0"], backoffLimit=0),
            job("fails", ["python", "suite.py", "1"], backoffLimit=0),
            job("hangs", ["sh", "-c", "echo started; sleep 30"], backoffLimit=0, activeDeadlineSeconds=1),
            job("expires", ["true"], backoffLimit=0, ttlSecondsAfterFinished=1),
            job("retries", ["python", "suite.py", "2"], backoffLimit=1),
        )

        def finished(name: str) -> dict[str, Any] | None:
            obj = store.get("Job", NS, name)
            return next(
                (c for c in obj.get("status", {}).get("conditions", []) if c["status"] == "True"), None
            )

        passed = wait_for("passes to finish", lambda: finished("passes"))
        assert passed["type"] == "Complete"
        status = store.get("Job", NS, "passes")["status"]
        assert status["succeeded"] == 1 and "failed" not in status
        assert status["completionTime"] >= status["startTime"]
        pod = store.list("Pod", NS, label_selector="job-name=passes")[0]
        assert pod["metadata"]["labels"]["batch.kubernetes.io/job-name"] == "passes"
        # The command ran in the image's working directory, with the Service address resolved to the mesh.
        log = store.read_log(NS, pod["metadata"]["name"], "suite")
        assert log.startswith(
            f"suite in {images['tools:1'].cwd} http://127.0.0.1:{cluster.mesh.port_of(NS, 'web')}"
        )

        failed = wait_for("fails to finish", lambda: finished("fails"))
        assert (failed["type"], failed["reason"]) == ("Failed", "BackoffLimitExceeded")
        assert store.get("Job", NS, "fails")["status"]["failed"] == 1
        assert store.list("Pod", NS, label_selector="job-name=fails")[0]["status"]["phase"] == "Failed"

        retried = wait_for("retries to give up", lambda: finished("retries"))
        assert retried["reason"] == "BackoffLimitExceeded"
        assert store.get("Job", NS, "retries")["status"]["failed"] == 2
        assert len(store.list("Pod", NS, label_selector="job-name=retries")) == 2

        job_events = {(e["involvedObject"]["name"], e["reason"]) for e in store.list("Event", NS)}
        assert {
            ("passes", "SuccessfulCreate"),
            ("passes", "Completed"),
            ("fails", "BackoffLimitExceeded"),
        } <= job_events

        hung = wait_for("hangs to hit its deadline", lambda: finished("hangs"), timeout=5)
        assert (hung["type"], hung["reason"]) == ("Failed", "DeadlineExceeded")
        wait_for(
            "the deadline's pod to go", lambda: not store.list("Pod", NS, label_selector="job-name=hangs")
        )

        wait_for(
            "expires to be deleted after its TTL",
            lambda: not store.list("Job", NS, field_selector="metadata.name=expires"),
            timeout=5,
        )
        assert not store.list("Pod", NS, label_selector="job-name=expires")


def test_cluster_dns_rewrites_service_addresses_only() -> None:
    store = Store()
    create(store, service("orders", "orders"))
    mesh = Mesh(store, routing="none")
    mesh.start()
    try:
        port = mesh.port_of(NS, "orders")
        at = f"127.0.0.1:{port}"
        assert mesh.dns("http://orders.shop.svc.cluster.local:80/v1", "other") == f"http://{at}/v1"
        assert mesh.dns("http://orders.shop.svc", "other") == f"http://{at}"
        assert mesh.dns("http://orders.shop:80", "other") == f"http://{at}"
        assert mesh.dns("orders:80", NS) == at
        assert mesh.dns("a=http://orders:80,b=orders.shop:80", NS) == f"a=http://{at},b={at}"
        for unchanged in (
            "orders",
            "orders:80",
            "http://orders.example.com:80",
            "localhost:8080",
            "billing.shop:80",
        ):
            assert mesh.dns(unchanged, "other") == unchanged
        # An FQDN of a Service that does not exist yet gets its port now and keeps it when it appears.
        early = mesh.dns("http://payments.shop.svc.cluster.local", NS)
        create(store, service("payments", "payments"))
        assert early == f"http://127.0.0.1:{mesh.port_of(NS, 'payments')}"
    finally:
        mesh.stop()


def test_volumes_are_the_pods_own(images: dict[str, ImageSpec]) -> None:
    """An emptyDir at a fixed path is a fresh directory per pod (two suites never share a report file);
    a Secret volume holds its keys as files; a missing Secret keeps the pod ContainerCreating."""
    script = (
        'test ! -e "$REPORT" && echo "$HOSTNAME" > "$REPORT" && cat /tmp/loopgate/report /etc/creds/token'
    )
    with FakeCluster(images=images) as cluster:
        store = cluster.store
        store.create(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "creds", "namespace": NS},
                "data": {"token": "czNjcjN0"},
            }
        )
        for name, secret in (("one", "creds"), ("two", "creds"), ("three", "missing")):
            body = job(name, ["sh", "-c", script], backoffLimit=0)
            pod_spec = body["spec"]["template"]["spec"]
            pod_spec["volumes"] = [
                {"name": "work", "emptyDir": {}},
                {
                    "name": "creds",
                    "secret": {"secretName": secret, "items": [{"key": "token", "path": "token"}]},
                },
            ]
            pod_spec["containers"][0]["env"].append({"name": "REPORT", "value": "/tmp/loopgate/report"})
            pod_spec["containers"][0]["volumeMounts"] = [
                {"name": "work", "mountPath": "/tmp/loopgate"},
                {"name": "creds", "mountPath": "/etc/creds", "readOnly": True},
            ]
            store.create(body)

        def complete(name: str) -> dict[str, Any] | None:
            return condition(store.get("Job", NS, name), "Complete")

        for name in ("one", "two"):
            done = wait_for(f"{name} to finish", functools.partial(complete, name))
            assert done["status"] == "True"
            pod = store.list("Pod", NS, label_selector=f"job-name={name}")[0]["metadata"]["name"]
            assert store.read_log(NS, pod, "suite") == f"{pod}\ns3cr3t\n"
        events = wait_for(
            "FailedMount",
            lambda: [e["message"] for e in store.list("Event", NS) if e["reason"] == "FailedMount"],
        )
        assert events[0] == 'MountVolume.SetUp failed for volume "creds" : secret "missing" not found'
        assert not condition(store.get("Job", NS, "three"), "Complete")


def test_readiness_is_probed_while_the_pod_runs(images: dict[str, ImageSpec]) -> None:
    with FakeCluster(images=images) as cluster:
        store = cluster.store
        body = deployment("web", "web")
        probe = body["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
        probe.update(periodSeconds=1, failureThreshold=1)
        create(store, service("web", "web"), body)
        wait_for("web Available", lambda: available(store, "web"))
        port = cluster.mesh.port_of(NS, "web")
        assert httpx.get(f"http://127.0.0.1:{port}/fail", timeout=5).status_code == 200
        wait_for("web unavailable", lambda: not available(store, "web"), timeout=5)
        answer = httpx.get(f"http://127.0.0.1:{port}/api", timeout=5)
        assert (answer.status_code, answer.text) == (503, "no healthy upstream")


def _request(path: str = "/", **headers: str) -> Request:
    return Request.of("GET", path, [(k.replace("_", "-"), v) for k, v in headers.items()], 80)


def _http_route(name: str, created: str, matches: list[dict[str, Any]], backend: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NS, "creationTimestamp": created},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
            "rules": [{"matches": matches, "backendRefs": [{"name": backend, "port": 80}]}],
        },
    }


def test_gateway_api_precedence_between_routes() -> None:
    """More header matches win over fewer; between equals the oldest route wins; a longer path prefix
    wins over header matches; element-wise prefixes (`/api` does not match `/apix`)."""
    tagged = {"headers": [{"name": "x-loopgate-sandbox", "value": KEY}]}
    both = {
        "headers": [tagged["headers"][0], {"name": "x-user", "type": "RegularExpression", "value": "a.*"}]
    }
    routes = [
        _http_route("one-header-old", "2026-01-01T00:00:00Z", [tagged], "old"),
        _http_route("one-header-new", "2026-02-01T00:00:00Z", [tagged], "new"),
        _http_route("two-headers", "2026-03-01T00:00:00Z", [both], "two"),
        _http_route(
            "api", "2026-04-01T00:00:00Z", [{"path": {"type": "PathPrefix", "value": "/api"}}], "api"
        ),
    ]

    def chosen(req: Request) -> str | None:
        decision = route_gateway_api(routes, NS, "web", 80, req)
        return decision.service if decision else None

    assert chosen(_request("/", x_loopgate_sandbox=KEY)) == "old"
    assert chosen(_request("/", x_loopgate_sandbox=KEY, x_user="ann")) == "two"
    assert chosen(_request("/api/items", x_loopgate_sandbox=KEY)) == "api"
    assert chosen(_request("/apix", x_loopgate_sandbox=f"{KEY}4")) is None
    assert chosen(_request("/", x_loopgate_sandbox=KEY.upper())) is None


def test_istio_match_semantics_and_header_edits() -> None:
    vs: dict[str, Any] = {
        "metadata": {"name": "web", "namespace": NS, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {
            "hosts": [f"web.{NS}.svc.cluster.local"],
            "http": [
                {
                    "match": [{"uri": {"prefix": "/admin"}, "headers": {"x-role": {"exact": "ops"}}}],
                    "route": [{"destination": {"host": "admin"}}],
                },
                {
                    "match": [{"headers": {"baggage": {"regex": BAGGAGE_REGEX}}}],
                    "headers": {"request": {"add": {"baggage": "hop=1"}, "set": {"x-fork": "yes"}}},
                    "route": [{"destination": {"host": f"web-lg-{KEY}.{NS}", "port": {"number": 8080}}}],
                },
            ],
        },
    }
    other_mesh = {**vs, "spec": {**vs["spec"], "gateways": ["shop-gateway"]}}  # binds to a gateway only
    assert route_istio([other_mesh], NS, "web", _request("/admin", x_role="ops")) is None
    admin = route_istio([vs], NS, "web", _request("/admin/users", x_role="ops"))
    assert admin is not None and (admin.namespace, admin.service) == (NS, "admin")
    assert route_istio([vs], NS, "web", _request("/admin", x_role="dev")) is None  # every condition must hold
    fork = route_istio([vs], NS, "web", _request("/", baggage=f"loopgate-sandbox={KEY};p=1,k=v"))
    assert fork is not None and (fork.service, fork.port) == (f"web-lg-{KEY}", 8080)
    edited = apply_header_ops([("Baggage", f"loopgate-sandbox={KEY}"), ("x-fork", "no")], fork.headers)
    assert edited == [("Baggage", f"loopgate-sandbox={KEY}"), ("x-fork", "yes"), ("baggage", "hop=1")]
    # Two baggage lines are one list to the next matcher and to the access log.
    assert Request.of("GET", "/", edited, 80).headers["baggage"] == f"loopgate-sandbox={KEY},hop=1"
