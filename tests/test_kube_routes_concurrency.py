"""20 sandboxes add and remove their routes on one VirtualService at once, over the wire.

Every write is a read-modify-replace on the resourceVersion read, so writers collide (409) and retry.
What must hold: every sandbox's route is in every version of the object from the moment its add landed
until its own removal (no writer ever drops another's route), the team's routes never move, and once all
sandboxes are gone the object's spec, labels and annotations are exactly the original's.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from bot.config.kubernetes import KubernetesService
from bot.config.schema import Routing
from bot.runtimes.kubernetes import objects
from bot.runtimes.kubernetes.client import Kube
from bot.runtimes.kubernetes.forks import Fork
from bot.runtimes.kubernetes.routes import add_istio_route, remove_istio_routes
from tests.kube_fake import FakeCluster

pytestmark = pytest.mark.timeout(180)  # a hang fails in 3 min; a busy 2-core CI host is no hang

NS = "shop"
HOST = f"orders.{NS}.svc.cluster.local"
SANDBOXES = 20


def team_virtual_service() -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {
            "name": "orders",
            "namespace": NS,
            "labels": {"team": "shop", "app": "orders"},
            "annotations": {"owner": "shop-team", "note": "retries tuned for the gateway"},
        },
        "spec": {
            "hosts": ["orders"],
            "http": [
                {
                    "name": "beta-users",
                    "match": [{"headers": {"x-beta": {"exact": "1"}}}],
                    "route": [{"destination": {"host": HOST, "subset": "v2"}}],
                },
                {
                    "name": "default",
                    "route": [{"destination": {"host": HOST, "port": {"number": 80}}}],
                    "retries": {"attempts": 3, "perTryTimeout": "2s"},
                },
            ],
        },
    }


def test_twenty_sandboxes_on_one_virtual_service() -> None:
    spec = KubernetesService(namespace=NS, workload="deployment/orders", port=80, image="orders:{sha}")
    routing = Routing()
    keys = [f"sbx{i:05d}" for i in range(SANDBOXES)]
    with FakeCluster() as cluster:
        store = cluster.store
        original = store.create(team_virtual_service())
        versions: list[tuple[int, list[str], list[str]]] = []  # (resourceVersion, loopgate keys, all names)
        lock = threading.Lock()

        def record(type_: str, obj: dict[str, Any]) -> None:
            if obj.get("kind") == "VirtualService" and obj["metadata"]["name"] == "orders":
                names = [r.get("name") for r in obj["spec"].get("http") or []]
                with lock:
                    versions.append((int(obj["metadata"]["resourceVersion"]), objects.route_keys(obj), names))

        unsubscribe = store.subscribe(record)
        added: dict[str, int] = {}
        removing: dict[str, int] = {}
        errors: list[BaseException] = []
        all_added = threading.Barrier(SANDBOXES)

        def sandbox(key: str) -> None:
            try:
                kube = Kube(cluster.api_client())
                fork = Fork("orders", NS, f"orders-lg-{key}", f"orders-lg-{key}", 80)
                add_istio_route(
                    kube, service="orders", spec=spec, routing=routing, key=key, fork=fork, baseline_host=HOST
                )
                current = store.get("VirtualService", NS, "orders")
                assert key in objects.route_keys(current)
                added[key] = int(current["metadata"]["resourceVersion"])
                all_added.wait(timeout=60)
                removing[key] = int(store.get("VirtualService", NS, "orders")["metadata"]["resourceVersion"])
                remove_istio_routes(kube, NS, {key})
            except BaseException as exc:  # reported below, with the thread's key
                errors.append(exc)
                all_added.abort()

        threads = [threading.Thread(target=sandbox, args=(key,)) for key in keys]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        unsubscribe()
        assert errors == []

        conflicts = [r for r in cluster.requests if r.method == "PUT" and r.status == 409]
        assert conflicts, "20 writers at once never collided: the test proves nothing about retries"
        assert [r for r in cluster.requests if r.status in (400, 422)] == []

        versions.sort()
        for key in keys:
            # From the version where its add landed until its own removal, the route is never missing.
            held = [rv for rv, present, _ in versions if added[key] <= rv <= removing[key]]
            assert held, key
            assert all(key in present for rv, present, _ in versions if added[key] <= rv <= removing[key])
        for _, present, names in versions:
            # loopgate's routes stay above the team's, and the team's keep their order.
            assert names[: len(present)] == [f"loopgate-{k}" for k in present]
            assert names[len(present) :] == ["beta-users", "default"]

        final = store.get("VirtualService", NS, "orders")
        assert final["spec"] == original["spec"]
        assert final["metadata"]["labels"] == original["metadata"]["labels"]
        assert final["metadata"]["annotations"] == original["metadata"]["annotations"]
        assert objects.route_keys(final) == []
