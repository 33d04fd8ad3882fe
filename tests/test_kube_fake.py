"""The Kubernetes contract fake, driven over the wire by the official `kubernetes` client.

What the runtime relies on is tested here as a real API server behaves: resourceVersion and 409, 404,
422 with a `Status` for bodies the published schemas reject (Kubernetes, Istio, Gateway API), label and
field selectors, watches, propagation on delete, pod logs, events and the service proxy.
"""

from __future__ import annotations

import http.server
import itertools
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.kube_fake import FakeCluster, Invalid, Store, validate_object
from tests.kube_fake.server import KubeServer
from tests.kube_fake.validate import CRD_VALIDATOR

_names = itertools.count(1)


@pytest.fixture(scope="module")
def cluster() -> Iterator[FakeCluster]:
    with FakeCluster() as fake:
        yield fake
        assert fake.server_errors == []


@pytest.fixture
def api(cluster: FakeCluster) -> Iterator[client.ApiClient]:
    api_client = cluster.api_client()
    yield api_client
    api_client.close()


@pytest.fixture
def ns(cluster: FakeCluster) -> str:
    name = f"t{next(_names)}"
    cluster.store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def deployment(name: str, labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name, **(labels or {})}},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.example/app:1", **extra}]},
            },
        },
    }


def virtual_service(name: str, **route_extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "loopgate"}},
        "spec": {
            "hosts": [name],
            "http": [
                {
                    "name": "loopgate-abc123",
                    "match": [{"headers": {"x-loopgate-sandbox": {"exact": "abc123"}}}],
                    "route": [{"destination": {"host": f"{name}-lg-abc123", "port": {"number": 80}}}],
                    **route_extra,
                },
                {"route": [{"destination": {"host": name}}]},
            ],
        },
    }


def pod(name: str, labels: dict[str, str], containers: tuple[str, ...] = ("app",)) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": c, "image": "registry.example/app:1"} for c in containers]},
    }


def status_of(error: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(error.body)
    assert body["kind"] == "Status" and body["status"] == "Failure" and body["code"] == error.status
    return body


# ---- create, get, list, replace, patch, delete ----


def test_create_get_and_list_by_label_selector(api: client.ApiClient, ns: str, cluster: FakeCluster) -> None:
    apps = client.AppsV1Api(api)
    created = apps.create_namespaced_deployment(ns, deployment("orders", {"loopgate.dev/role": "fork"}))
    apps.create_namespaced_deployment(ns, deployment("payments"))
    apps.create_namespaced_deployment(ns, deployment("stock", {"loopgate.dev/role": "suite"}))
    assert created.metadata.uid and created.metadata.generation == 1 and created.spec.replicas == 1
    assert int(created.metadata.resource_version) > 0 and created.metadata.creation_timestamp is not None

    got = apps.read_namespaced_deployment("orders", ns)
    assert got.metadata.uid == created.metadata.uid

    def names(selector: str) -> list[str]:
        return [d.metadata.name for d in apps.list_namespaced_deployment(ns, label_selector=selector).items]

    assert names("loopgate.dev/role=fork") == ["orders"]
    assert names("loopgate.dev/role") == ["orders", "stock"]
    assert names("!loopgate.dev/role") == ["payments"]
    assert names("loopgate.dev/role in (fork,suite),app!=stock") == ["orders"]
    assert names("loopgate.dev/role notin (fork)") == ["payments", "stock"]
    listing = [r for r in cluster.requests if r.method == "GET" and r.path.endswith(f"/{ns}/deployments")]
    assert listing[-1].query == {"labelSelector": "loopgate.dev/role notin (fork)"}
    assert cluster.written_objects()[-1]["metadata"]["name"] == "stock"


def test_already_exists_stale_replace_and_not_found(api: client.ApiClient, ns: str) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(ns, deployment("orders"))
    with pytest.raises(ApiException) as exists:
        apps.create_namespaced_deployment(ns, deployment("orders"))
    assert exists.value.status == 409 and status_of(exists.value)["reason"] == "AlreadyExists"

    current = apps.read_namespaced_deployment("orders", ns)
    current.spec.replicas = 2
    replaced = apps.replace_namespaced_deployment("orders", ns, current)
    assert replaced.metadata.generation == 2
    assert int(replaced.metadata.resource_version) > int(current.metadata.resource_version)
    with pytest.raises(ApiException) as stale:
        apps.replace_namespaced_deployment("orders", ns, current)  # still the old resourceVersion
    assert stale.value.status == 409 and status_of(stale.value)["reason"] == "Conflict"

    for call in (
        lambda: apps.read_namespaced_deployment("nope", ns),
        lambda: apps.delete_namespaced_deployment("nope", ns),
        lambda: apps.replace_namespaced_deployment("nope", ns, deployment("nope")),
    ):
        with pytest.raises(ApiException) as missing:
            call()
        body = status_of(missing.value)
        assert missing.value.status == 404 and body["reason"] == "NotFound"
        assert body["details"] == {"name": "nope", "group": "apps", "kind": "deployments"}


def test_patches_merge_and_json_patch(api: client.ApiClient, ns: str, cluster: FakeCluster) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(ns, deployment("orders"))
    merged = apps.patch_namespaced_deployment("orders", ns, {"metadata": {"annotations": {"a": "1"}}})
    assert merged.metadata.annotations == {"a": "1"} and merged.metadata.generation == 1
    patched = apps.patch_namespaced_deployment(
        "orders", ns, [{"op": "replace", "path": "/spec/replicas", "value": 3}]
    )
    assert patched.spec.replicas == 3 and patched.metadata.generation == 2
    assert cluster.requests[-1].content_type == "application/json-patch+json"

    with pytest.raises(ApiException) as failed_test:
        apps.patch_namespaced_deployment("orders", ns, [{"op": "test", "path": "/spec/replicas", "value": 9}])
    assert failed_test.value.status == 422
    with pytest.raises(ApiException) as invalid:
        apps.patch_namespaced_deployment("orders", ns, {"spec": {"replicaz": 2}})
    assert invalid.value.status == 422
    assert status_of(invalid.value)["details"]["causes"][0]["field"] == "spec.replicaz"
    with pytest.raises(ApiException) as stale:  # a resourceVersion in a patch is a precondition
        apps.patch_namespaced_deployment(
            "orders", ns, {"metadata": {"resourceVersion": "1"}, "spec": {"replicas": 1}}
        )
    assert stale.value.status == 409


def test_delete_propagation_cascades_or_orphans(api: client.ApiClient, ns: str, cluster: FakeCluster) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    for name, policy in (("cascade", "Background"), ("foreground", "Foreground"), ("orphan", "Orphan")):
        owner = apps.create_namespaced_deployment(ns, deployment(name))
        ref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": owner.metadata.uid}
        cluster.store.create(
            {
                **pod(f"{name}-1", {"app": name}),
                "metadata": {
                    "name": f"{name}-1",
                    "namespace": ns,
                    "labels": {"app": name},
                    "ownerReferences": [ref],
                },
            }
        )
        answer = apps.delete_namespaced_deployment(
            name, ns, body=client.V1DeleteOptions(propagation_policy=policy)
        )
        assert answer.status == "Success"
        left = core.list_namespaced_pod(ns, label_selector=f"app={name}").items
        if policy == "Orphan":
            assert [p.metadata.name for p in left] == [f"{name}-1"] and left[
                0
            ].metadata.owner_references is None
        else:
            assert left == []
    sent = [r.body for r in cluster.requests if r.method == "DELETE"]
    assert sent[-1] == {"propagationPolicy": "Orphan"}


def test_deletecollection_by_label_and_namespace_deletion(api: client.ApiClient, ns: str) -> None:
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    for name, key in (
        ("lg-aaa111-e2e", "aaa111"),
        ("lg-bbb222-e2e", "bbb222"),
        ("lg-aaa111-build", "aaa111"),
    ):
        batch.create_namespaced_job(
            ns,
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": name, "labels": {"loopgate.dev/sandbox": key}},
                "spec": {
                    "template": {
                        "spec": {"restartPolicy": "Never", "containers": [{"name": "s", "image": "e2e:1"}]}
                    }
                },
            },
        )
    batch.delete_collection_namespaced_job(ns, label_selector="loopgate.dev/sandbox=aaa111")
    assert [j.metadata.name for j in batch.list_namespaced_job(ns).items] == ["lg-bbb222-e2e"]
    job = batch.read_namespaced_job("lg-bbb222-e2e", ns)
    assert job.spec.template.metadata.labels["job-name"] == "lg-bbb222-e2e"  # as the real Job controller sets

    core.delete_namespace(ns)
    with pytest.raises(ApiException) as gone:
        batch.read_namespaced_job("lg-bbb222-e2e", ns)
    assert gone.value.status == 404
    with pytest.raises(ApiException) as no_namespace:  # creating in a missing namespace is a 404
        core.create_namespaced_config_map(
            ns, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
        )
    assert no_namespace.value.status == 404


# ---- strict validation: 422 ----


def test_unknown_field_in_a_deployment_is_422(api: client.ApiClient, ns: str) -> None:
    apps = client.AppsV1Api(api)
    with pytest.raises(ApiException) as error:
        apps.create_namespaced_deployment(ns, deployment("orders", bogus=True))
    body = status_of(error.value)
    assert error.value.status == 422 and body["reason"] == "Invalid"
    assert body["details"]["causes"] == [
        {
            "reason": "FieldValueNotFound",
            "message": "unknown field",
            "field": "spec.template.spec.containers[0].bogus",
        }
    ]
    with pytest.raises(ApiException) as selector:  # the server's own rule, beyond the schema
        bad = deployment("payments")
        bad["spec"]["selector"] = {"matchLabels": {"app": "other"}}
        apps.create_namespaced_deployment(ns, bad)
    assert selector.value.status == 422
    with pytest.raises(ApiException):
        apps.read_namespaced_deployment("orders", ns)


def test_virtual_service_unknown_field_and_wrong_type_are_422(api: client.ApiClient, ns: str) -> None:
    custom = client.CustomObjectsApi(api)
    args = ("networking.istio.io", "v1", ns, "virtualservices")
    created = custom.create_namespaced_custom_object(*args, virtual_service("orders"))
    assert created["metadata"]["generation"] == 1

    with pytest.raises(ApiException) as unknown:
        custom.create_namespaced_custom_object(*args, virtual_service("payments", bogus=1))
    assert unknown.value.status == 422
    assert [c["field"] for c in status_of(unknown.value)["details"]["causes"]] == ["spec.http[0].bogus"]

    wrong = virtual_service("stock")
    wrong["spec"]["http"][0]["route"][0]["destination"]["port"]["number"] = "80"
    with pytest.raises(ApiException) as typed:
        custom.create_namespaced_custom_object(*args, wrong)
    assert typed.value.status == 422
    assert "spec.http[0].route[0].destination.port.number" in status_of(typed.value)["message"]

    current = custom.get_namespaced_custom_object(*args, "orders")
    current["spec"]["http"][0]["headersz"] = {}
    with pytest.raises(ApiException) as replaced:
        custom.replace_namespaced_custom_object(*args, "orders", current)
    assert replaced.value.status == 422
    del current["spec"]["http"][0]["headersz"]
    current["spec"]["http"].insert(0, {"name": "loopgate-zzz999", "route": [{"destination": {"host": "x"}}]})
    assert custom.replace_namespaced_custom_object(*args, "orders", current)["metadata"]["generation"] == 2
    listed = custom.list_namespaced_custom_object(*args)["items"]
    assert [item["kind"] for item in listed] == ["VirtualService"]  # custom resources keep kind in a list


def test_http_route_is_validated_by_the_gateway_api_crd(api: client.ApiClient, ns: str) -> None:
    custom = client.CustomObjectsApi(api)
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "orders-lg-abc123"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "orders", "port": 80}],
            "rules": [
                {
                    "matches": [
                        {"headers": [{"type": "Exact", "name": "x-loopgate-sandbox", "value": "abc123"}]}
                    ],
                    "backendRefs": [{"name": "orders-lg-abc123", "port": 80}],
                }
            ],
        },
    }
    args = ("gateway.networking.k8s.io", "v1", ns, "httproutes")
    assert custom.create_namespaced_custom_object(*args, route)["metadata"]["name"] == "orders-lg-abc123"
    route["metadata"]["name"] = "other"
    route["spec"]["rules"][0]["backendRefs"][0]["weigth"] = 1
    with pytest.raises(ApiException) as error:
        custom.create_namespaced_custom_object(*args, route)
    assert error.value.status == 422
    assert "spec.rules[0].backendRefs[0].weigth: unknown field" in status_of(error.value)["message"]


def test_validate_object_directly() -> None:
    assert validate_object(deployment("orders")) == []
    assert validate_object({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}) == [
        "<root>: no published schema for example.com/v1/Widget"
    ]
    assert validate_object({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "Bad_Name"}})
    vs = virtual_service("orders")
    vs["metadata"]["labels"]["loopgate.dev/sandbox"] = "abc123"  # maps (labels) are not unknown fields
    assert validate_object(vs) == []
    for version in ("v1beta1", "v1alpha3"):
        assert validate_object({**vs, "apiVersion": f"networking.istio.io/{version}"}) == []
    assert validate_object(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "d"},
            "spec": {"host": "orders", "subsetz": []},
        }
    ) == ["spec.subsetz: unknown field"]


def test_the_crd_validator_process_is_restarted_when_it_dies() -> None:
    assert validate_object(virtual_service("orders")) == []
    proc = CRD_VALIDATOR._proc
    assert proc is not None
    proc.kill()
    proc.wait()
    assert validate_object(virtual_service("orders", bogus=1)) == ["spec.http[0].bogus: unknown field"]


# ---- watch, logs, events ----


def test_watch_sees_a_job_complete(api: client.ApiClient, ns: str, cluster: FakeCluster) -> None:
    batch = client.BatchV1Api(api)
    batch.create_namespaced_job(
        ns,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "lg-abc123-e2e"},
            "spec": {
                "template": {
                    "spec": {"restartPolicy": "Never", "containers": [{"name": "s", "image": "e2e:1"}]}
                }
            },
        },
    )
    listed = batch.list_namespaced_job(ns)

    def complete() -> None:
        time.sleep(0.2)
        cluster.store.set_status(
            "Job",
            ns,
            "lg-abc123-e2e",
            {
                "succeeded": 1,
                "conditions": [{"type": "Complete", "status": "True"}],
            },
        )

    worker = threading.Thread(target=complete)
    worker.start()
    seen = []
    stream = watch.Watch()
    started = time.monotonic()
    for event in stream.stream(
        batch.list_namespaced_job,
        ns,
        resource_version=listed.metadata.resource_version,
        field_selector="metadata.name=lg-abc123-e2e",
        timeout_seconds=10,
    ):
        seen.append((event["type"], event["object"].status.succeeded))
        if event["object"].status.succeeded:
            stream.stop()
    worker.join()
    assert seen == [("MODIFIED", 1)]
    assert time.monotonic() - started < 5
    query = [r.query for r in cluster.requests if r.query.get("watch") in ("true", "True")][-1]
    assert query["resourceVersion"] == listed.metadata.resource_version


def test_watch_without_resource_version_starts_with_the_current_objects(
    api: client.ApiClient, ns: str
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(
        ns, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}
    )
    events = list(watch.Watch().stream(core.list_namespaced_config_map, ns, timeout_seconds=1))
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "a")]


def test_pod_log_and_events_by_field_selector(api: client.ApiClient, ns: str, cluster: FakeCluster) -> None:
    core = client.CoreV1Api(api)
    cluster.store.create(
        {
            **pod("orders-1", {"app": "orders"}, ("app", "istio-proxy")),
            "metadata": {"name": "orders-1", "namespace": ns, "labels": {"app": "orders"}},
        }
    )
    cluster.store.append_log(ns, "orders-1", "app", "starting\nlistening on 8080\n")
    cluster.store.append_log(ns, "orders-1", "istio-proxy", '{"method":"GET"}\n')
    assert core.read_namespaced_pod_log("orders-1", ns, container="app") == "starting\nlistening on 8080\n"
    assert (
        core.read_namespaced_pod_log("orders-1", ns, container="app", tail_lines=1) == "listening on 8080\n"
    )
    with pytest.raises(ApiException) as which:
        core.read_namespaced_pod_log("orders-1", ns)
    assert (
        which.value.status == 400 and "choose one of: [app istio-proxy]" in status_of(which.value)["message"]
    )

    target = cluster.store.get("Pod", ns, "orders-1")
    for _ in range(2):
        cluster.store.add_event(ns, target, "BackOff", 'Back-off pulling image "registry.example/app:1"')
    cluster.store.add_event(ns, {"kind": "Pod", "name": "other", "namespace": ns}, "Pulled", "ok", "Normal")
    events = core.list_namespaced_event(ns, field_selector="involvedObject.name=orders-1").items
    assert [(e.reason, e.count, e.type, e.involved_object.uid) for e in events] == [
        ("BackOff", 2, "Warning", target["metadata"]["uid"])
    ]
    assert events[0].first_timestamp is not None and events[0].last_timestamp is not None
    with pytest.raises(ApiException) as unknown:
        core.list_namespaced_event(ns, field_selector="message=x")
    assert unknown.value.status == 400


def test_watch_by_label_reports_objects_entering_and_leaving_the_selector(
    api: client.ApiClient, ns: str, cluster: FakeCluster
) -> None:
    core = client.CoreV1Api(api)
    store = cluster.store
    store.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": ns}})

    def relabel() -> None:
        time.sleep(0.2)
        store.set_annotations("ConfigMap", ns, "a", {"step": "1"})  # not selected yet: nothing sent
        current = store.get("ConfigMap", ns, "a")
        current["metadata"]["labels"] = {"loopgate.dev/sandbox": "abc123"}
        current = store.replace(current)  # now selected: ADDED
        current["metadata"]["labels"] = {}
        store.replace(current)  # no longer selected: DELETED

    worker = threading.Thread(target=relabel)
    worker.start()
    seen = []
    stream = watch.Watch()
    for event in stream.stream(
        core.list_namespaced_config_map, ns, label_selector="loopgate.dev/sandbox=abc123", timeout_seconds=5
    ):
        seen.append(event["type"])
        if event["type"] == "DELETED":
            stream.stop()
    worker.join()
    assert seen == ["ADDED", "DELETED"]


def test_a_watch_from_a_forgotten_resource_version_is_gone_and_delete_preconditions_hold() -> None:
    server = KubeServer(Store(history=3)).start()
    try:
        configuration = client.Configuration()
        configuration.host = server.url
        with client.ApiClient(configuration) as api_client:
            core = client.CoreV1Api(api_client)
            for name in "abcde":
                server.store.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}})
            with pytest.raises(ApiException) as gone:
                list(watch.Watch().stream(core.list_namespaced_config_map, "default", resource_version="2"))
            assert gone.value.status == 410
            current = core.read_namespaced_config_map("a", "default")
            with pytest.raises(ApiException) as changed:
                core.delete_namespaced_config_map(
                    "a",
                    "default",
                    body=client.V1DeleteOptions(preconditions=client.V1Preconditions(resource_version="1")),
                )
            assert changed.value.status == 409
            core.delete_namespaced_config_map(
                "a",
                "default",
                body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=current.metadata.uid)),
            )
        assert server.errors == []
    finally:
        server.stop()


# ---- the service proxy ----


class _Echo(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        payload = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "baggage": self.headers.get("baggage"),
                "body": self.rfile.read(length).decode(),
            }
        ).encode()
        self.send_response(201 if self.command == "POST" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_service_proxy_forwards_to_a_ready_pod(cluster: FakeCluster, ns: str) -> None:
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=backend.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        store = cluster.store
        store.create(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "orders", "namespace": ns},
                "spec": {"selector": {"app": "orders"}, "ports": [{"port": 80, "targetPort": 8080}]},
            }
        )
        base = f"{cluster.url}/api/v1/namespaces/{ns}/services/orders:80/proxy"
        with pytest.raises(urllib.error.HTTPError) as no_endpoint:
            urllib.request.urlopen(f"{base}/items", timeout=5)
        assert no_endpoint.value.code == 503

        store.create(
            {
                **pod("orders-1", {"app": "orders"}),
                "metadata": {
                    "name": "orders-1",
                    "namespace": ns,
                    "labels": {"app": "orders"},
                    "annotations": {
                        "fake.loopgate.test/ports": json.dumps({"8080": backend.server_address[1]})
                    },
                },
            }
        )
        store.set_status(
            "Pod",
            ns,
            "orders-1",
            {
                "phase": "Running",
                "podIP": "127.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        )
        with urllib.request.urlopen(f"{base}/a%2Fb/?q=%20x", timeout=5) as response:
            assert json.loads(response.read())["path"] == "/a%2Fb/?q=%20x"  # passed through as encoded
        request = urllib.request.Request(
            f"{base}/items?limit=2",
            data=b'{"sku": 1}',
            method="POST",
            headers={"baggage": "loopgate-sandbox=abc123", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 201
            echoed = json.loads(response.read())
        assert echoed == {
            "method": "POST",
            "path": "/items?limit=2",
            "baggage": "loopgate-sandbox=abc123",
            "body": '{"sku": 1}',
        }
    finally:
        backend.shutdown()
        backend.server_close()
        thread.join()


# ---- hostile input ----


def test_hostile_requests_get_a_status_never_a_500(cluster: FakeCluster, ns: str) -> None:
    def send(
        method: str, path: str, body: bytes | None = None, content_type: str = "application/json"
    ) -> int:
        request = urllib.request.Request(
            f"{cluster.url}{path}", data=body, method=method, headers={"Content-Type": content_type}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            assert json.loads(error.read())["kind"] == "Status"
            return int(error.code)

    deployments = f"/apis/apps/v1/namespaces/{ns}/deployments"
    assert send("POST", deployments, b"{not json") == 400
    assert send("POST", deployments, b"[1, 2]") == 400
    assert send("POST", deployments, json.dumps({"apiVersion": "v1", "kind": "Pod"}).encode()) == 400
    assert send("POST", deployments, json.dumps({**deployment("x"), "metadata": "x"}).encode()) == 422
    assert send("GET", f"{deployments}?labelSelector=a%20in%20(b") == 400
    assert send("GET", f"{deployments}?watch=true&timeoutSeconds=soon") == 400
    assert send("GET", "/apis/apps/v1/namespaces/x/widgets") == 404
    assert send("GET", "/apis/apps/v2/deployments") == 404
    assert send("GET", "/nowhere") == 404
    cluster.store.create(
        {**deployment("x"), "metadata": {"name": "x", "namespace": ns, "labels": {"app": "x"}}}
    )
    assert send("PATCH", f"{deployments}/x", b'{"spec": {}}', "application/apply-patch+yaml") == 415
    assert (
        send(
            "PATCH", f"{deployments}/x", b'[{"op": "remove", "path": "/nope"}]', "application/json-patch+json"
        )
        == 422
    )
    assert send("PUT", f"{deployments}/x", json.dumps(deployment("y")).encode()) == 400
    assert send("PUT", f"{deployments}/x", json.dumps(deployment("x")).encode()) == 422  # no resourceVersion
    assert send("DELETE", f"{deployments}/x", b'{"propagationPolicy": "Sideways"}') == 400
    assert send("GET", "/version") == 200
    assert cluster.server_errors == []


# ---- the Store on its own, and the lifecycle ----


def test_store_subscribers_see_changes_in_order_and_may_write() -> None:
    store = Store()
    seen: list[tuple[str, str, int]] = []

    def on_change(type_: str, obj: dict[str, Any]) -> None:
        seen.append((type_, obj["metadata"]["name"], int(obj["metadata"]["resourceVersion"])))
        if obj["kind"] == "ConfigMap" and type_ == "ADDED":
            store.set_annotations("ConfigMap", "default", obj["metadata"]["name"], {"seen": "yes"})

    unsubscribe = store.subscribe(on_change)
    store.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}})
    unsubscribe()
    store.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}})
    assert [(t, n) for t, n, _ in seen] == [("ADDED", "default"), ("ADDED", "a"), ("MODIFIED", "a")]
    assert [rv for _, _, rv in seen] == sorted(rv for _, _, rv in seen)
    assert store.get("ConfigMap", "default", "a")["metadata"]["annotations"] == {"seen": "yes"}
    with pytest.raises(Invalid) as invalid:
        store.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "datta": {}})
    assert invalid.value.messages == ["datta: unknown field"]


def test_a_stopped_cluster_leaves_no_thread_or_port() -> None:
    before = set(threading.enumerate())
    with FakeCluster() as fake:
        port = int(fake.url.rsplit(":", 1)[1])
        api_client = fake.api_client()
        core = client.CoreV1Api(api_client)
        core.list_namespace()
        stream = threading.Thread(  # a watch still open when the cluster stops
            target=lambda: list(watch.Watch().stream(core.list_namespace, timeout_seconds=60))
        )
        stream.start()
        time.sleep(0.2)
        kubeconfig = fake.kubeconfig
        assert kubeconfig.is_file()
    stream.join(timeout=5)
    api_client.close()
    assert not stream.is_alive()
    assert not kubeconfig.exists()
    deadline = time.monotonic() + 2
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(threading.enumerate()) - before == set()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
