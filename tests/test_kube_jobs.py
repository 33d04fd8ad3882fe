"""Suites and builds as Jobs, and the diff's probes through the service proxy, on the fake cluster.

The fake's kubelet runs each Job pod as a local process (the image's working directory holds a tiny
script), the fake's Job controller writes Complete/Failed as the real one does, and the API server
proxies to a pod that really serves HTTP: what comes back is what the cluster said, over the wire of the
official client.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes.client
import psutil
import pytest

from bot.config import InfrastructureError
from bot.config.kubernetes import KubernetesBuild
from bot.runtimes.kubernetes import jobobjects, jobs, objects, probes
from bot.runtimes.kubernetes.builds import run_build
from bot.runtimes.kubernetes.jobs import JobOutcome, run_job, suite_outcome
from bot.runtimes.protocol import ProbeError, ProbeRequest
from tests.kube_fake import FakeCluster, NotFound
from tests.kube_fake.images import ImageSpec
from tests.kube_fake.server import KubeServer
from tests.kube_fake.store import Store

pytestmark = pytest.mark.timeout(180)  # a hang fails in 3 min; a busy 2-core CI host is no hang

NS = "loopgate"
KEY = "abc123"
SUITE_IMAGE = "registry.example/e2e:base"
WEB_IMAGE = "registry.example/web:1"

REPORT = (
    b'<?xml version="1.0" encoding="utf-8"?>\n<testsuites><testsuite name="e2e" tests="2" failures="1">'
    b'<testcase classname="e2e" name="test_ok"/><testcase classname="e2e" name="test_checkout">'
    b'<failure message="expected 200, got 500">\xc3\xa9\x00</failure></testcase></testsuite></testsuites>\n'
)

SCRIPTS = {
    # Writes a report with a failing test and exits 1, as pytest --junitxml would.
    "fails.sh": 'echo "collected 2 items"\n'
    'printf %s "$REPORT_B64" | base64 -d > "$LOOPGATE_JUNIT_XML"\n'
    'echo "1 failed, 1 passed"\nexit 1\n',
    # Prints a forged block (another nonce) and writes no report.
    "forges.sh": "echo '----- loopgate junit begin 0123456789abcdef0123456789abcdef -----'\n"
    'printf %s "$REPORT_B64"; echo\n'
    "echo '----- loopgate junit end 0123456789abcdef0123456789abcdef -----'\n"
    "echo '----- loopgate junit begin -----'\necho done\n",
    "sleeps.sh": 'sleep 300 &\necho $! > "$PIDFILE"\necho started\nwait\n',
    "passes.sh": 'echo ok\n: > "$LOOPGATE_JUNIT_XML"\n',
    # Stands for Kaniko: its args follow; `--destination=…good…` builds, anything else fails as Kaniko does.
    "kaniko.sh": 'echo "INFO[0000] Retrieving image manifest python:3.11-slim"\n'
    'echo "INFO[0001] Executing 0 build triggers"\n'
    'case "$*" in *--destination=*good*) echo "INFO[0002] Pushed $*"; exit 0;; esac\n'
    'case "$*" in *--destination=*locked*) echo "error checking push permissions -- make sure you'
    ' entered the correct tag name: UNAUTHORIZED: authentication required"; exit 1;; esac\n'
    'echo "INFO[0002] Running: [/bin/sh -c pip install -r requirements.txt]"\n'
    "echo 'ERROR: No matching distribution found for flask==99'\n"
    'echo "error building image: error building stage: failed to execute command: exit status 1"\n'
    "exit 1\n",
}

WEB = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BINARY = bytes(range(256)) * 3

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, status, body, content_type, extra=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/healthz":
            return self.answer(200, b"ok", "text/plain")
        if self.path == "/fail":
            return self.answer(500, b'{"error": "boom"}', "application/json", [("X-Trace", "t-1")])
        if self.path == "/binary":
            return self.answer(200, BINARY, "application/octet-stream")
        if self.path == "/status-shaped":
            body = b'{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Conflict","code":409}'
            return self.answer(409, body, "application/json")
        if self.path == "/redirect":
            return self.answer(302, b"", "text/plain", [("Location", "/binary")])
        echoed = (self.headers.get("baggage") or "-") + "|" + self.path
        self.answer(200, echoed.encode(), "text/plain; charset=utf-8", [("X-Custom", "A b")])

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.answer(201, body[::-1], self.headers.get("Content-Type") or "application/x-none")

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


@pytest.fixture
def images(tmp_path: Path) -> dict[str, ImageSpec]:
    for name, text in SCRIPTS.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "web.py").write_text(WEB)
    env = {"REPORT_B64": base64.b64encode(REPORT).decode()}
    return {
        SUITE_IMAGE: ImageSpec(argv=["sh"], cwd=tmp_path, env=env),
        objects.KANIKO_IMAGE: ImageSpec(argv=["sh", "kaniko.sh"], cwd=tmp_path),
        WEB_IMAGE: ImageSpec(argv=[sys.executable, "web.py", "{port}"], cwd=tmp_path),
    }


@pytest.fixture
def cluster(images: dict[str, ImageSpec]) -> Iterator[FakeCluster]:
    with FakeCluster(images) as running:
        running.store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        yield running
        assert not running.server_errors


@pytest.fixture
def api(cluster: FakeCluster) -> Iterator[kubernetes.client.ApiClient]:
    client = cluster.api_client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(autouse=True)
def no_process_left(tmp_path: Path) -> Iterator[None]:
    """Nothing a Job started outlives the test."""
    yield
    deadline = time.monotonic() + 5
    while True:
        left = []
        for child in psutil.Process().children(recursive=True):
            try:
                if child.cwd().startswith(str(tmp_path)):
                    left.append(child)
            except psutil.Error:
                continue
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not left, f"processes left running: {left}"


def suite_job(
    tmp_path: Path, script: str, *, nonce: str, timeout_s: float = 60, env: dict[str, str] | None = None
) -> dict[str, Any]:
    return objects.suite_job(
        name=objects.suite_job_name(KEY, "E2E tests"),
        namespace=NS,
        key=KEY,
        suite_name="E2E tests",
        image=SUITE_IMAGE,
        command=["sh", script],
        env={
            "LOOPGATE_ROUTING_KEY": KEY,
            "LOOPGATE_JUNIT_XML": str(tmp_path / "junit" / "junit.xml"),
            **(env or {}),
        },
        timeout_s=timeout_s,
        nonce=nonce,
        expires_at=objects.expires_at(3600, datetime.now(UTC)),
    )


def job_gone(cluster: FakeCluster, name: str) -> bool:
    try:
        cluster.store.get("Job", NS, name)
    except NotFound:
        return True
    return False


def deletes(cluster: FakeCluster, name: str) -> list[str]:
    """The propagation policy of each DELETE of the Job the client sent."""
    return [
        r.query.get("propagationPolicy") or (r.body or {}).get("propagationPolicy") or "-"
        for r in cluster.requests
        if r.method == "DELETE" and r.path.endswith(f"/jobs/{name}")
    ]


# ---------------------------------------------------------------------------------------------- suites


def test_a_failing_suite_comes_back_with_its_exit_code_and_report(
    cluster: FakeCluster, api: kubernetes.client.ApiClient, tmp_path: Path
) -> None:
    nonce = objects.new_nonce()
    job = suite_job(tmp_path, "fails.sh", nonce=nonce)
    name = job["metadata"]["name"]
    added: list[str] = []
    unsubscribe = cluster.store.subscribe(
        lambda type_, obj: (
            added.append(obj["metadata"]["resourceVersion"])
            if type_ == "ADDED" and obj["kind"] == "Job"
            else None
        )
    )
    try:
        outcome = run_job(api, job, timeout_s=60, should_stop=None, nonce=nonce)
    finally:
        unsubscribe()
    assert (outcome.exit_code, outcome.timed_out) == (1, False)
    assert outcome.reason is not None and "BackoffLimitExceeded" in outcome.reason
    suite = suite_outcome(outcome, nonce)
    assert suite.junit_xml == REPORT
    assert (suite.exit_code, suite.timed_out) == (1, False)
    assert "1 failed, 1 passed" in suite.log_tail and "collected 2 items" in suite.log_tail
    assert nonce not in suite.log_tail and base64.b64encode(REPORT).decode()[:40] not in suite.log_tail
    assert 0 < suite.duration_ms < 60_000
    # Always deleted at the end, in the background.
    assert job_gone(cluster, name)
    assert deletes(cluster, name) == ["Background"]
    # Completion was watched by name from the Job's creation, not polled.
    watches = [
        r for r in cluster.requests if r.path.endswith("/jobs") and r.query.get("watch", "").lower() == "true"
    ]
    assert watches and watches[0].query["fieldSelector"] == f"metadata.name={name}"
    assert watches[0].query["resourceVersion"] == added[0]
    assert len(watches) <= 10


def test_a_passing_suite_exits_zero_with_an_empty_report_carried_as_none(
    cluster: FakeCluster, api: kubernetes.client.ApiClient, tmp_path: Path
) -> None:
    nonce = objects.new_nonce()
    outcome = run_job(
        api, suite_job(tmp_path, "passes.sh", nonce=nonce), timeout_s=60, should_stop=None, nonce=nonce
    )
    suite = suite_outcome(outcome, nonce)
    assert (suite.exit_code, suite.timed_out, outcome.reason) == (0, False, None)
    assert suite.junit_xml is None  # an empty file is no report (`[ -s … ]`)
    assert suite.log_tail == "ok"


def test_forged_delimiter_lines_are_ignored(
    cluster: FakeCluster, api: kubernetes.client.ApiClient, tmp_path: Path
) -> None:
    nonce = objects.new_nonce()
    outcome = run_job(
        api, suite_job(tmp_path, "forges.sh", nonce=nonce), timeout_s=60, should_stop=None, nonce=nonce
    )
    suite = suite_outcome(outcome, nonce)
    assert suite.exit_code == 0
    assert suite.junit_xml is None
    assert "----- loopgate junit begin 0123456789abcdef0123456789abcdef -----" in suite.log_tail
    assert "done" in suite.log_tail


def test_the_jobs_deadline_is_a_timeout(
    cluster: FakeCluster, api: kubernetes.client.ApiClient, tmp_path: Path
) -> None:
    nonce = objects.new_nonce()
    pidfile = tmp_path / "pid"
    job = suite_job(tmp_path, "sleeps.sh", nonce=nonce, timeout_s=4, env={"PIDFILE": str(pidfile)})
    assert job["spec"]["activeDeadlineSeconds"] == 4
    started = time.monotonic()
    outcome = run_job(api, job, timeout_s=4, should_stop=None, nonce=nonce)
    assert time.monotonic() - started < 20
    assert (outcome.exit_code, outcome.timed_out) == (None, True)
    assert outcome.reason is not None and outcome.reason.startswith("DeadlineExceeded")
    # The controller deleted the pod, and its log, at the deadline: what it said before is kept.
    assert outcome.log.startswith("started\n")
    suite = suite_outcome(outcome, nonce)
    assert suite.timed_out and suite.exit_code is None
    assert "DeadlineExceeded" in suite.log_tail
    assert job_gone(cluster, job["metadata"]["name"])
    # The pod's processes went with it, what the suite left in the background too.
    pid = int(pidfile.read_text())
    if psutil.pid_exists(pid):
        _, alive = psutil.wait_procs([psutil.Process(pid)], timeout=5)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


def test_should_stop_deletes_the_job_and_nothing_keeps_running(
    cluster: FakeCluster, api: kubernetes.client.ApiClient, tmp_path: Path
) -> None:
    nonce = objects.new_nonce()
    pidfile = tmp_path / "pid"
    job = suite_job(tmp_path, "sleeps.sh", nonce=nonce, timeout_s=300, env={"PIDFILE": str(pidfile)})
    name = job["metadata"]["name"]
    asked: list[float] = []

    def should_stop() -> bool:
        asked.append(time.monotonic())
        return pidfile.exists() and pidfile.read_text().strip() != ""

    started = time.monotonic()
    outcome = run_job(api, job, timeout_s=300, should_stop=should_stop, nonce=nonce)
    assert time.monotonic() - started < 30
    assert (outcome.exit_code, outcome.timed_out) == (None, False)
    assert outcome.reason is not None and "stopped" in outcome.reason
    assert "started" in outcome.log
    assert job_gone(cluster, name)
    assert deletes(cluster, name)[0] == "Foreground"
    assert not cluster.store.list("Pod", NS, f"job-name={name}")
    sleeper = int(pidfile.read_text())
    assert not psutil.pid_exists(sleeper) or psutil.Process(sleeper).status() == psutil.STATUS_ZOMBIE
    # Looked at between watch windows, not in a tight loop.
    assert len(asked) < 40


def test_a_suite_image_that_cannot_be_pulled_is_an_infrastructure_error_not_a_timeout(
    cluster: FakeCluster, api: kubernetes.client.ApiClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs, "POD_CHECK_S", 0.5)
    nonce = objects.new_nonce()
    job = suite_job(tmp_path, "passes.sh", nonce=nonce, timeout_s=60)
    job["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.example/e2e:never-built"
    started = time.monotonic()
    with pytest.raises(InfrastructureError) as stuck:
        run_job(api, job, timeout_s=60, should_stop=None, nonce=nonce)
    assert time.monotonic() - started < 15
    assert "could not start its container 'suite'" in str(stuck.value)
    assert "registry.example/e2e:never-built" in str(stuck.value)
    assert job_gone(cluster, job["metadata"]["name"])


def test_a_run_stopped_before_its_job_is_created_creates_nothing(
    cluster: FakeCluster, api: kubernetes.client.ApiClient, tmp_path: Path
) -> None:
    nonce = objects.new_nonce()
    outcome = run_job(
        api,
        suite_job(tmp_path, "passes.sh", nonce=nonce),
        timeout_s=60,
        should_stop=lambda: True,
        nonce=nonce,
    )
    assert (outcome.exit_code, outcome.timed_out) == (None, False)
    assert not [r for r in cluster.requests if r.path.endswith("/jobs")]


def test_a_watch_whose_resource_version_expired_is_listed_again(
    images: dict[str, ImageSpec], tmp_path: Path
) -> None:
    running = FakeCluster(images)
    running.store = Store(history=5)
    running.server = KubeServer(running.store)
    with running as cluster:
        client = cluster.api_client()
        try:
            cluster.store.create(
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "churn", "namespace": NS}}
            )
            churned = threading.Event()

            def churn_once() -> bool:
                # Before the first watch: more changes than the history keeps, so the Job's
                # resourceVersion is too old to watch from (410 Gone).
                if not churned.is_set() and not job_gone(cluster, objects.suite_job_name(KEY, "E2E tests")):
                    churned.set()
                    for i in range(20):
                        cluster.store.set_annotations("ConfigMap", NS, "churn", {"n": str(i)})
                return False

            nonce = objects.new_nonce()
            outcome = run_job(
                client,
                suite_job(tmp_path, "fails.sh", nonce=nonce),
                timeout_s=60,
                should_stop=churn_once,
                nonce=nonce,
            )
            assert outcome.exit_code == 1
            assert suite_outcome(outcome, nonce).junit_xml == REPORT
            lists = [
                r
                for r in cluster.requests
                if r.path.endswith("/jobs")
                and r.method == "GET"
                and r.query.get("watch", "").lower() != "true"
            ]
            assert lists and lists[0].query["fieldSelector"].startswith("metadata.name=")
        finally:
            client.close()


def test_a_job_the_api_server_refuses_is_an_infrastructure_error_with_the_cause(
    cluster: FakeCluster, api: kubernetes.client.ApiClient, tmp_path: Path
) -> None:
    nonce = objects.new_nonce()
    job = suite_job(tmp_path, "passes.sh", nonce=nonce)
    job["spec"]["template"]["spec"]["containers"][0]["bogusField"] = True
    with pytest.raises(InfrastructureError) as refused:
        run_job(api, job, timeout_s=60, should_stop=None, nonce=nonce)
    assert "bogusField" in str(refused.value) and "invalid" in str(refused.value)
    assert job_gone(cluster, job["metadata"]["name"])


def test_an_over_large_report_is_dropped_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    nonce = objects.new_nonce()
    outcome = JobOutcome(
        exit_code=0,
        timed_out=False,
        duration_ms=5,
        log="tests ran\n" + "\n".join([objects.junit_begin(nonce), "PD94", objects.junit_end(nonce)]) + "\n",
        reason=None,
    )
    assert suite_outcome(outcome, nonce).junit_xml == b"<?x"
    for module in (jobobjects, jobs):
        monkeypatch.setattr(module, "JUNIT_MAX_BYTES", 2)
    over = suite_outcome(outcome, nonce)
    assert over.junit_xml is None
    assert over.log_tail == "tests ran\n[loopgate] the JUnit report is over 0 MiB: ignored"
    monkeypatch.undo()
    tail_only = suite_outcome(JobOutcome(0, False, 5, "\n".join(str(i) for i in range(1000)), None), nonce)
    assert tail_only.log_tail.splitlines()[0] == "940" and len(tail_only.log_tail.splitlines()) == 60


# ---------------------------------------------------------------------------------------------- builds


def build_job(destination: str) -> dict[str, Any]:
    return objects.build_job(
        name=objects.build_job_name(KEY, "orders"),
        namespace=NS,
        key=KEY,
        service="orders",
        build=KubernetesBuild(context="services/orders", registry="registry.example/orders"),
        git_context="git://git.example/shop.git#refs/heads/main",
        destination=destination,
        expires_at=objects.expires_at(3600, datetime.now(UTC)),
    )


def test_a_kaniko_build_that_fails_says_why(cluster: FakeCluster, api: kubernetes.client.ApiClient) -> None:
    destination = "registry.example/orders:deadbeef"
    outcome = run_build(api, build_job(destination), service="orders", destination=destination, timeout_s=60)
    assert (outcome.ok, outcome.source, outcome.service) == (False, destination, "orders")
    assert outcome.detail == (
        "build failed: error building image: error building stage: failed to execute command: exit status 1"
    )
    assert outcome.log_tail is not None and "No matching distribution" in outcome.log_tail
    assert job_gone(cluster, objects.build_job_name(KEY, "orders"))


def test_a_registry_that_refuses_the_push_is_an_infrastructure_error(
    cluster: FakeCluster, api: kubernetes.client.ApiClient
) -> None:
    destination = "registry.example/locked:deadbeef"
    with pytest.raises(InfrastructureError, match=r"built but not pushed.*UNAUTHORIZED"):
        run_build(api, build_job(destination), service="orders", destination=destination, timeout_s=60)
    assert job_gone(cluster, objects.build_job_name(KEY, "orders"))


def test_a_kaniko_build_that_pushes_is_ok(cluster: FakeCluster, api: kubernetes.client.ApiClient) -> None:
    destination = "registry.example/orders:good"
    outcome = run_build(api, build_job(destination), service="orders", destination=destination, timeout_s=60)
    assert (outcome.ok, outcome.source, outcome.detail) == (True, destination, None)
    assert outcome.log_tail is not None and f"--destination={destination}" in outcome.log_tail
    assert outcome.duration_ms > 0


# ---------------------------------------------------------------------------------------------- probes


def web(cluster: FakeCluster) -> None:
    """A Deployment serving HTTP behind the Service `web` (port 80 → 8080), and `nobody`, a Service
    whose selector matches no pod."""
    labels = {"app": "web"}
    cluster.store.create(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": NS, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "web",
                                "image": WEB_IMAGE,
                                "ports": [{"containerPort": 8080}],
                                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
                            }
                        ]
                    },
                },
            },
        }
    )
    for name, app in (("web", "web"), ("nobody", "nobody")):
        cluster.store.create(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"selector": {"app": app}, "ports": [{"port": 80, "targetPort": 8080}]},
            }
        )
    wait_for("a ready web pod", lambda: any(ready(p) for p in cluster.store.list("Pod", NS, "app=web")))


def ready(pod: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def send(
    api: kubernetes.client.ApiClient, request: ProbeRequest, service: str = "web", **headers: str
) -> Any:
    return probes.send(api, namespace=NS, service_name=service, port=80, request=request, headers=headers)


def test_probes_through_the_service_proxy_keep_the_answer_exactly(
    cluster: FakeCluster, api: kubernetes.client.ApiClient
) -> None:
    web(cluster)
    tagged = send(api, ProbeRequest("web", "GET", "/orders?id=1&x=%2F"), baggage=f"loopgate-sandbox={KEY}")
    assert tagged.status == 200
    assert tagged.body == f"loopgate-sandbox={KEY}|/orders?id=1&x=%2F".encode()
    assert tagged.headers["content-type"] == "text/plain; charset=utf-8"
    assert tagged.headers["x-custom"] == "A b"
    assert all(name == name.lower() for name in tagged.headers)

    untagged = send(api, ProbeRequest("web", "GET", "/x", headers={"Accept": "text/plain"}))
    assert untagged.body == b"-|/x"

    # The runtime's baggage replaces the request's own, whatever its case.
    replaced = send(api, ProbeRequest("web", "GET", "/y", headers={"Baggage": "a=1"}), baggage="b=2")
    assert replaced.body == b"b=2|/y"

    failed = send(api, ProbeRequest("web", "GET", "/fail"))
    assert (failed.status, failed.body, failed.headers["x-trace"]) == (500, b'{"error": "boom"}', "t-1")
    assert failed.headers["content-type"] == "application/json"

    binary = send(api, ProbeRequest("web", "GET", "/binary"))
    assert (
        binary.body == bytes(range(256)) * 3 and binary.headers["content-type"] == "application/octet-stream"
    )

    # A JSON body that looks like a Status is still the service's answer.
    conflict = send(api, ProbeRequest("web", "GET", "/status-shaped"))
    assert conflict.status == 409 and json.loads(conflict.body)["reason"] == "Conflict"

    # Redirects are answers, not followed.
    redirect = send(api, ProbeRequest("web", "GET", "/redirect"))
    assert (redirect.status, redirect.headers["location"]) == (302, "/binary")

    raw = bytes([0, 255, 10, 13, 128]) + "é".encode()
    posted = send(
        api,
        ProbeRequest(
            "web", "POST", "/orders", headers={"Content-Type": "application/octet-stream"}, body=raw
        ),
    )
    assert (posted.status, posted.body) == (201, raw[::-1])
    assert posted.headers["content-type"] == "application/octet-stream"
    proxied = [r for r in cluster.requests if "/services/web:80/proxy/" in r.path]
    assert proxied and all(
        r.path.startswith(f"/api/v1/namespaces/{NS}/services/web:80/proxy/") for r in proxied
    )


def test_a_service_without_a_ready_pod_is_a_probe_error(
    cluster: FakeCluster, api: kubernetes.client.ApiClient
) -> None:
    web(cluster)
    with pytest.raises(ProbeError, match="no endpoints available"):
        send(api, ProbeRequest("nobody", "GET", "/"), service="nobody")
    with pytest.raises(ProbeError, match="not found"):
        send(api, ProbeRequest("ghost", "GET", "/"), service="ghost")


def test_an_unreachable_api_server_is_a_one_line_probe_error() -> None:
    configuration = kubernetes.client.Configuration()
    configuration.host = "http://127.0.0.1:9"
    with kubernetes.client.ApiClient(configuration) as client, pytest.raises(ProbeError) as error:
        send(client, ProbeRequest("web", "GET", "/"))
    assert "\n" not in str(error.value) and str(error.value)


def test_headers_the_api_server_would_consume_are_refused() -> None:
    with kubernetes.client.ApiClient() as client:
        for header in ("Authorization", "Impersonate-User"):
            with pytest.raises(ProbeError, match="consumes"):
                send(client, ProbeRequest("web", "GET", "/", headers={header: "x"}))


def test_a_server_that_ends_watches_at_once_is_not_polled_in_a_tight_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[float] = []

    class Instant:
        def stream(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
            opened.append(time.monotonic())
            yield from ()

    monkeypatch.setattr(jobs.kubernetes.watch, "Watch", Instant)
    batch = SimpleNamespace(list_namespaced_job=lambda *args, **kwargs: None)
    watched = jobs._Watched(batch, NS, "lg-abc123-e2e", "5")
    assert watched.until_finished(time.monotonic() + 3, None) == ("deadline", None)
    assert 2 <= len(opened) <= 5
