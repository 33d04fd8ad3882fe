"""The whole pipeline on a cluster: the example shop's own config switched to `runtime: {kind:
kubernetes}`, verified against the Kubernetes contract fake.

The fake's API server validates every object the official client sends against the published schemas
(any 422 is an error here); its node runs each pod as a real process of the shop at the image's commit;
its mesh routes by the VirtualServices or HTTPRoutes loopgate writes. The baseline is the team's own:
five Deployments and Services the test creates, as a cluster would have them, with an `istio-proxy`
container whose log carries the mesh's access log.

Every verify starts two controls beside the candidate (`verify.diff.control`, on by default): forks of the
base commit's image under their own routing keys, on copies of the data from the candidate's snapshot.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client
import psycopg
import pytest

from bot.config.settings import RuntimeSettings
from bot.evidence import Evidence, Verdict
from bot.pipeline import Pipeline, VerifyRequest, make_plan
from bot.runtimes.choice import Runtimes
from bot.runtimes.kubernetes import objects
from bot.runtimes.protocol import Controls, Source
from tests.conftest import make_shop, scratch_database
from tests.gitrepo import GitRepo
from tests.kube_fake import FakeCluster
from tests.kube_fake.images import ImageSpec

SERVICES = ("gateway", "inventory", "orders", "payments", "pricing")
NEIGHBOURS = {"gateway": ("orders", "inventory"), "orders": ("inventory", "payments", "pricing")}
NAMESPACE = "shop"
SIDECAR_IMAGE = "docker.io/istio/proxyv2:1.30.3"
MANAGED = "app.kubernetes.io/managed-by=loopgate"
PORT = "{port}"
"""Where the fake node tells a service to listen."""
HTTP_READY = {"httpGet": {"path": "/healthz", "port": 8080}}
READINESS = {"pricing": {"tcpSocket": {"port": 8080}}}
"""pricing answers no HTTP GET: ready once its gRPC port accepts connections."""


@dataclass
class Shop:
    repo: GitRepo
    base: str
    heads: dict[str, str]
    cluster: FakeCluster


def _kubernetes_config(text: str, routing: str, payments_db: str) -> str:
    """The shop's own config with its runtime switched to kubernetes, payments' ledger on `payments_db`."""
    postgres = "{host: 127.0.0.1, port: 5432, secret: pg-admin}"
    settings = f"{{routing: {routing}, ready_timeout: 8, postgres: {postgres}}}"
    runtime = f"runtime: {{kind: kubernetes, kubernetes: {settings}}}\n"
    database = payments_db.rsplit("/", 1)[1]
    text = text.replace("{postgres: {database: payments}}", f"{{postgres: {{database: {database}}}}}")
    return text.replace("version: 1\n", "version: 1\n" + runtime, 1)


def _images(repo: GitRepo, sha: str, worktrees: Path) -> dict[str, ImageSpec]:
    """The images the team's CI would have built from `sha`: each service's code at that commit."""
    tree = worktrees / sha[:12]
    if not tree.exists():
        repo.git("worktree", "add", "--detach", str(tree), sha)
    images = {
        f"shop/{name}:{sha}": ImageSpec(
            argv=[sys.executable, "-m", "uvicorn", f"{name}_app:app", "--host", "127.0.0.1", "--port", PORT],
            cwd=tree / "services" / name,
        )
        for name in SERVICES
        if name != "pricing"
    }
    # pricing speaks gRPC (h2c), which the fake mesh proxies on the same Service ports.
    images[f"shop/pricing:{sha}"] = ImageSpec(
        argv=[sys.executable, "-m", "pricing_server", "--port", PORT], cwd=tree / "services" / "pricing"
    )
    images[f"shop/e2e:{sha}"] = ImageSpec(argv=["true"], cwd=tree)
    return images


def _baseline(service: str, sha: str, payments_db: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The team's Deployment and Service for `service`, as `kubectl get -o yaml` would show them."""
    env = [
        {"name": f"LOOPGATE_{peer.upper()}_URL", "value": f"http://{peer}.{NAMESPACE}.svc.cluster.local:80"}
        for peer in NEIGHBOURS.get(service, ())
    ]
    if service == "payments":
        env.append({"name": "LOOPGATE_STATE", "value": payments_db})
    labels = {"app": service}
    # pricing speaks gRPC: its Service port declares it (appProtocol), so the mesh speaks HTTP/2 to it.
    port_name, app = ("grpc", {"appProtocol": "grpc"}) if service == "pricing" else ("http", {})
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": service, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": {**labels, "version": "v1"}},
                "spec": {
                    "containers": [
                        {
                            "name": service,
                            "image": f"shop/{service}:{sha}",
                            "ports": [{"name": port_name, "containerPort": 8080}],
                            "env": env,
                            "readinessProbe": READINESS.get(service, HTTP_READY),
                        },
                        {"name": "istio-proxy", "image": SIDECAR_IMAGE},
                    ]
                },
            },
        },
    }
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "selector": labels,
            "ports": [{"name": port_name, "port": 80, "targetPort": port_name, **app}],
        },
    }
    return deployment, svc


def _start_shop(tmp_path: Path, routing: str, changes: list[str], payments_db: str) -> Iterator[Shop]:
    repo = make_shop(tmp_path / "shop", changes)
    repo.git("checkout", "-q", "main")
    config = (repo.path / ".loopgate.yml").read_text()
    repo.write(".loopgate.yml", _kubernetes_config(config, routing, payments_db))
    base = repo.commit("run the shop on the cluster")
    heads = {change: repo.git("rev-parse", f"agent/{change}").strip() for change in changes}
    orders = (repo.path / "services/orders/orders_app.py").read_text()
    # A push whose image the team's CI never built: its fork can never pull it.
    unbuilt = repo.branch("agent/unbuilt", {"services/orders/orders_app.py": orders + "\n# unbuilt\n"})
    payments = (repo.path / "services/payments/payments_app.py").read_text()
    note = {"services/payments/payments_app.py": payments + "\n# a note\n"}
    heads["payments-note"] = repo.branch("agent/payments-note", note)
    worktrees = tmp_path / "images"
    images: dict[str, ImageSpec] = {
        SIDECAR_IMAGE: ImageSpec(argv=["sleep", "infinity"], cwd=tmp_path),
        "postgres:17-alpine": ImageSpec(argv=["true"], cwd=tmp_path),  # psql and pg_dump: the machine's
    }
    for sha in (base, *heads.values()):
        images.update(_images(repo, sha, worktrees))
    with FakeCluster(images=images, routing=routing) as cluster:
        api = cluster.api_client()
        core, apps = kubernetes.client.CoreV1Api(api), kubernetes.client.AppsV1Api(api)
        core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        admin = {"username": "postgres", "password": "unused-on-a-trusting-server"}
        core.create_namespaced_secret(
            NAMESPACE,
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pg-admin"}, "stringData": admin},
        )
        # Services first: the mesh picks a Service port's transport (gRPC where it declares HTTP/2) when
        # the address is first resolved, and orders' pods resolve pricing's address as they start.
        baseline = [_baseline(service, base, payments_db) for service in SERVICES]
        for _, svc in baseline:
            core.create_namespaced_service(NAMESPACE, svc)
        for deployment, _ in baseline:
            apps.create_namespaced_deployment(NAMESPACE, deployment)
        _wait_available(cluster, SERVICES)
        yield Shop(repo, base, {**heads, "unbuilt": unbuilt}, cluster)
    for tree in worktrees.iterdir() if worktrees.exists() else []:
        subprocess.run(["git", "-C", str(repo.path), "worktree", "remove", "--force", str(tree)], check=False)


def _wait_available(cluster: FakeCluster, names: tuple[str, ...], timeout_s: float = 60) -> None:
    """The team's baseline is up before anyone verifies against it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready = {
            d["metadata"]["name"]
            for d in cluster.store.list("Deployment", NAMESPACE)
            if any(
                c.get("type") == "Available" and c.get("status") == "True"
                for c in (d.get("status") or {}).get("conditions") or []
            )
        }
        if ready >= set(names):
            return
        time.sleep(0.1)
    logs = {
        p["metadata"]["name"]: cluster.store.read_log(
            NAMESPACE, p["metadata"]["name"], p["spec"]["containers"][0]["name"], tail_lines=5
        )
        for p in cluster.store.list("Pod", NAMESPACE)
    }
    raise AssertionError(f"the shop's baseline did not become Available: {logs}")


@pytest.fixture(scope="module")
def payments_db() -> Iterator[str]:
    """The ledger payments keeps in the cluster: a database of the real PostgreSQL server."""
    with scratch_database("loopgate_kube") as url:
        yield url


@pytest.fixture(scope="module")
def istio_shop(tmp_path_factory: pytest.TempPathFactory, payments_db: str) -> Iterator[Shop]:
    changes = ["refactor-orders", "contract-break", "stock-not-reserved", "quote-currency"]
    yield from _start_shop(tmp_path_factory.mktemp("istio"), "istio", changes, payments_db)


@pytest.fixture(scope="module")
def gateway_api_shop(tmp_path_factory: pytest.TempPathFactory, payments_db: str) -> Iterator[Shop]:
    yield from _start_shop(tmp_path_factory.mktemp("gamma"), "gateway-api", ["contract-break"], payments_db)


def _verify(shop: Shop, head: str) -> Evidence:
    settings = RuntimeSettings(kubeconfig=shop.cluster.kubeconfig)
    pipeline = Pipeline(Runtimes(settings, only="kubernetes"))
    return pipeline.verify(VerifyRequest(repo=shop.repo.path, base_ref="main", head_ref=head))


def _leftovers(cluster: FakeCluster) -> list[str]:
    kinds = (
        "Deployment",
        "Service",
        "Job",
        "Pod",
        "VirtualService",
        "HTTPRoute",
        "ConfigMap",
        "Secret",
    )
    found = []
    for kind in kinds:
        for obj in cluster.store.list(kind, None, MANAGED):
            found.append(f"{kind} {obj['metadata']['namespace']}/{obj['metadata']['name']}")
    return found


def _forked_images(cluster: FakeCluster) -> dict[str, str]:
    """Every fork Deployment loopgate ever wrote to the cluster, by routing key: its image."""
    return {
        obj["metadata"]["labels"]["loopgate.dev/sandbox"]: obj["spec"]["template"]["spec"]["containers"][0][
            "image"
        ]
        for obj in cluster.written_objects()
        if obj.get("kind") == "Deployment"
        and (obj["metadata"].get("labels") or {}).get("loopgate.dev/role") == "fork"
    }


def _value_findings(evidence: Evidence) -> list[tuple[str, str, str | None, str | None]]:
    return [
        (result.service, finding.pointer, finding.baseline, finding.sandbox)
        for result in evidence.diff
        if result.against == "control"
        for finding in result.findings
        if finding.kind == "value_changed" and finding.breaking
    ]


def test_a_good_change_passes_on_the_cluster_beside_its_controls_and_leaves_nothing(istio_shop: Shop) -> None:
    evidence = _verify(istio_shop, "agent/refactor-orders")
    assert evidence.verdict is Verdict.PASS, evidence.reasons
    orders = evidence.service("orders")
    assert orders is not None and orders.forked and orders.tagged_requests > 0
    assert orders.image_or_source == f"shop/orders:{istio_shop.heads['refactor-orders']}"
    assert [s.status for s in evidence.suites] == ["passed"]
    assert any(n.startswith("orders declares SQLite state: in a cluster") for n in evidence.notes)
    assert not any("starts no controls" in n or "controls did not start" in n for n in evidence.notes)
    # Two controls, each its own routing key, forking orders at the base commit; compared with values.
    assert evidence.routing_key is not None and len(evidence.control_keys) == 2
    assert evidence.routing_key not in evidence.control_keys
    images = _forked_images(istio_shop.cluster)
    assert images[evidence.routing_key] == f"shop/orders:{istio_shop.heads['refactor-orders']}"
    assert [images[key] for key in evidence.control_keys] == [f"shop/orders:{istio_shop.base}"] * 2
    assert any(r.against == "control" and r.service == "orders" for r in evidence.diff), evidence.diff
    assert _value_findings(evidence) == []
    assert _leftovers(istio_shop.cluster) == []
    assert istio_shop.cluster.store.list("VirtualService", NAMESPACE) == []


def test_a_value_change_fails_against_the_control_on_the_cluster(istio_shop: Shop) -> None:
    """The stock a checkout takes: same status, same fields, same types; only the base code on the same
    data, beside it, shows that the candidate no longer takes any."""
    evidence = _verify(istio_shop, "agent/stock-not-reserved")
    assert evidence.verdict is Verdict.FAIL, (evidence.reasons, evidence.notes)
    assert [s.status for s in evidence.suites] == ["passed"]  # the suite alone would pass it
    found = _value_findings(evidence)
    assert any(service == "inventory" and pointer == "/available" for service, pointer, _, _ in found), (
        found,
        evidence.diff,
    )
    assert _leftovers(istio_shop.cluster) == []


def test_a_contract_break_fails_on_the_cluster(istio_shop: Shop) -> None:
    evidence = _verify(istio_shop, "agent/contract-break")
    assert evidence.verdict is Verdict.FAIL, evidence.reasons
    failed = [f.test for s in evidence.suites for f in s.failures]
    assert any("test_checkout_in_stock_then_read_order" in test for test in failed), failed
    assert _leftovers(istio_shop.cluster) == []


def test_a_grpc_fork_gets_its_tagged_calls_through_the_mesh(istio_shop: Shop) -> None:
    """pricing speaks gRPC: orders' Quote calls cross the mesh as h2c, and the tagged ones reach the
    fork by the same VirtualService routes as HTTP requests; a new optional field breaks nobody."""
    evidence = _verify(istio_shop, "agent/quote-currency")
    assert evidence.verdict is Verdict.PASS, (evidence.reasons, evidence.notes)
    pricing = evidence.service("pricing")
    assert pricing is not None and pricing.forked and pricing.tagged_requests > 0
    assert pricing.image_or_source == f"shop/pricing:{istio_shop.heads['quote-currency']}"
    assert _leftovers(istio_shop.cluster) == []


def test_a_contract_break_fails_through_gateway_api_routes(gateway_api_shop: Shop) -> None:
    evidence = _verify(gateway_api_shop, "agent/contract-break")
    assert evidence.verdict is Verdict.FAIL, evidence.reasons
    inventory = evidence.service("inventory")
    assert inventory is not None and inventory.tagged_requests > 0
    assert _leftovers(gateway_api_shop.cluster) == []
    assert gateway_api_shop.cluster.store.list("HTTPRoute", NAMESPACE) == []


def test_a_fork_that_never_becomes_available_fails_naming_why(istio_shop: Shop) -> None:
    evidence = _verify(istio_shop, "agent/unbuilt")
    assert evidence.verdict is Verdict.FAIL, evidence.reasons
    orders = evidence.service("orders")
    assert orders is not None and orders.status == "start_failed"
    assert "ImagePullBackOff" in orders.reason or "ErrImagePull" in orders.reason, orders.reason
    assert f"shop/orders:{istio_shop.heads['unbuilt']}" in orders.reason
    assert [stage.outcome for stage in evidence.stages if stage.name == "route"] == ["skipped"]
    assert _leftovers(istio_shop.cluster) == []


def test_a_postgres_fork_gets_its_own_copy_and_teardown_drops_it(istio_shop: Shop, payments_db: str) -> None:
    """DESIGN "Data" in a cluster: the fork reads the baseline's rows from its own database, owned by a
    role made for it; what it writes never reaches the baseline; teardown drops database and role."""
    with psycopg.connect(payments_db, autocommit=True) as db:
        db.execute("CREATE TABLE IF NOT EXISTS lg_marker (v text)")
        db.execute("INSERT INTO lg_marker VALUES ('written before the change')")
    runtime = Runtimes(RuntimeSettings(kubeconfig=istio_shop.cluster.kubeconfig), only="kubernetes")
    plan = make_plan(istio_shop.repo.path, "main", "agent/payments-note")
    kube = runtime(plan.config)
    baseline = kube.up_baseline(Source(istio_shop.repo.path, plan.base_sha), plan.config)
    sandbox = kube.new_sandbox(baseline, plan.config, Source(istio_shop.repo.path, plan.merge_sha))
    copy = f"{payments_db.rsplit('/', 1)[1]}_lg_{sandbox.routing_key}"
    server = payments_db.rsplit("/", 1)[0] + "/postgres"
    try:
        assert kube.fork(sandbox, "payments", plan.config.services["payments"]).status == "ready"
        with psycopg.connect(server, autocommit=True) as admin:
            owner = admin.execute(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (copy,)
            ).fetchone()
        assert owner == (copy,)
        with psycopg.connect(server.rsplit("/", 1)[0] + "/" + copy, autocommit=True) as forked:
            assert forked.execute("SELECT v FROM lg_marker").fetchall() == [("written before the change",)]
            forked.execute("INSERT INTO lg_marker VALUES ('written by the fork')")
        with psycopg.connect(payments_db) as db:
            assert db.execute("SELECT count(*) FROM lg_marker").fetchone() == (1,)
        pod = next(p for p in istio_shop.cluster.store.list("Pod", NAMESPACE, "loopgate.dev/role=fork"))
        state = next(e for e in pod["spec"]["containers"][0]["env"] if e["name"] == "LOOPGATE_STATE")
        assert "secretKeyRef" in state["valueFrom"] and "value" not in state
    finally:
        kube.teardown(sandbox)
    with psycopg.connect(server, autocommit=True) as admin:
        assert admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (copy,)).fetchone() is None
        assert admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (copy,)).fetchone() is None
    assert _leftovers(istio_shop.cluster) == []
    assert istio_shop.cluster.store.list("ConfigMap", NAMESPACE, MANAGED) == []


def _outside_the_charts_rbac(cluster: FakeCluster) -> list[str]:
    """Requests the chart's Role would refuse for ConfigMaps and Secrets (deploy/helm: ConfigMaps get,
    list, create, delete; Secrets create, delete): no deletecollection of either, no read of a Secret."""
    out = []
    for r in cluster.requests:
        collection = r.path.rstrip("/").rsplit("/", 1)[-1] in ("configmaps", "secrets")
        if (r.method == "DELETE" and collection) or (r.method == "GET" and "/secrets" in r.path):
            out.append(f"{r.method} {r.path}")
    return out


def _copies_of(server: str, keys: list[str], payments_db: str) -> dict[str, tuple[str, list[tuple[int]]]]:
    """Each key's copy of the ledger database: its owner and the snapshot rows it holds."""
    base = payments_db.rsplit("/", 1)[1]
    out = {}
    with psycopg.connect(server, autocommit=True) as admin:
        for key in keys:
            name = f"{base}_lg_{key}"
            owner = admin.execute(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            with psycopg.connect(server.rsplit("/", 1)[0] + "/" + name, autocommit=True) as copy:
                rows = copy.execute("SELECT v FROM lg_snapshot ORDER BY v").fetchall()
            out[key] = (owner[0] if owner else "", rows)
    return out


def _no_copies_left(server: str, payments_db: str, keys: list[str]) -> None:
    base = payments_db.rsplit("/", 1)[1]
    with psycopg.connect(server, autocommit=True) as admin:
        for key in keys:
            name = f"{base}_lg_{key}"
            assert admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None
            assert admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is None


def test_a_candidate_and_its_controls_copy_one_snapshot_and_teardown_drops_them_all(
    istio_shop: Shop, payments_db: str
) -> None:
    """DESIGN "Control and candidate": the candidate's copy and both controls' come from ONE dump of the
    baseline's database, taken while the baseline keeps being written (separate dumps would disagree),
    each owned by its own role; the controls are recorded before they have anything, every object of
    theirs says whose they are, and the candidate's teardown removes all of it."""
    with psycopg.connect(payments_db, autocommit=True) as db:
        db.execute("CREATE TABLE IF NOT EXISTS lg_snapshot (v bigint)")
        db.execute("INSERT INTO lg_snapshot SELECT generate_series(1, 20)")
    cluster = istio_shop.cluster
    runtime = Runtimes(RuntimeSettings(kubeconfig=cluster.kubeconfig), only="kubernetes")
    plan = make_plan(istio_shop.repo.path, "main", "agent/payments-note")
    kube = runtime(plan.config)
    base = Source(istio_shop.repo.path, plan.base_sha)
    baseline = kube.up_baseline(base, plan.config)
    sandbox = kube.new_sandbox(baseline, plan.config, Source(istio_shop.repo.path, plan.merge_sha))
    assert isinstance(kube, Controls)
    controls = [kube.new_control(sandbox, base) for _ in ("primary", "secondary")]
    keys = [sandbox.routing_key, *(c.routing_key for c in controls)]
    server = payments_db.rsplit("/", 1)[0] + "/postgres"
    records = cluster.store.list(
        "ConfigMap", NAMESPACE, f"loopgate.dev/role=control,loopgate.dev/sandbox={sandbox.routing_key}"
    )
    assert sorted(r["metadata"]["labels"]["loopgate.dev/control"] for r in records) == sorted(keys[1:])
    writing = threading.Event()

    def keep_writing() -> None:
        with psycopg.connect(payments_db, autocommit=True) as db:
            n = 1000
            while not writing.is_set():
                n += 1
                db.execute("INSERT INTO lg_snapshot VALUES (%s)", (n,))
                time.sleep(0.002)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    spec = plan.config.services["payments"]
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            forked = list(pool.map(lambda box: kube.fork(box, "payments", spec), [sandbox, *controls]))
        writing.set()
        writer.join()
        assert [f.status for f in forked] == ["ready"] * 3, [f.detail for f in forked]
        for control in controls:
            kube.route(control)
        kube.route(sandbox)
        copy_jobs = [
            o["metadata"]["name"]
            for o in cluster.written_objects()
            if o.get("kind") == "Job"
            and o["metadata"]["name"].startswith(tuple(f"lg-{k}-copy-" for k in keys))
        ]
        assert copy_jobs == [f"lg-{sandbox.routing_key}-copy-payments"]
        copies = _copies_of(server, keys, payments_db)
        assert [owner for owner, _ in copies.values()] == [
            f"{payments_db.rsplit('/', 1)[1]}_lg_{k}" for k in keys
        ]
        snapshots = [rows for _, rows in copies.values()]
        assert len(snapshots[0]) > 20 and snapshots[1] == snapshots[0] and snapshots[2] == snapshots[0]
        for control in controls:
            selector = f"loopgate.dev/sandbox={control.routing_key}"
            mine = [
                obj
                for kind in ("Deployment", "Service", "ConfigMap", "Secret")
                for obj in cluster.store.list(kind, NAMESPACE, selector)
            ]
            assert len(mine) == 4
            assert {o["metadata"]["labels"].get("loopgate.dev/control-of") for o in mine} == {
                sandbox.routing_key
            }
            image = cluster.store.list("Deployment", NAMESPACE, selector)[0]["spec"]["template"]["spec"]
            assert image["containers"][0]["image"] == f"shop/payments:{plan.base_sha}"
        routed = objects.route_keys(cluster.store.list("VirtualService", NAMESPACE)[0])
        assert sorted(routed) == sorted(keys)
    finally:
        writing.set()
        writer.join()
        kube.teardown(sandbox)
    _no_copies_left(server, payments_db, keys)
    assert _leftovers(cluster) == []
    assert cluster.store.list("VirtualService", NAMESPACE) == []
    assert _outside_the_charts_rbac(cluster) == []


def test_gc_removes_a_control_whose_owner_is_gone(istio_shop: Shop, payments_db: str) -> None:
    """A control outlives its owner only when the owner's teardown lost track of it (here: another
    loopgate tears the owner down after its control records were deleted). While its record stands, gc
    leaves the control alone; once the record is gone, gc removes its fork, Service, route and copy."""
    cluster = istio_shop.cluster
    settings = RuntimeSettings(kubeconfig=cluster.kubeconfig)
    plan = make_plan(istio_shop.repo.path, "main", "agent/payments-note")
    kube = Runtimes(settings, only="kubernetes")(plan.config)
    base = Source(istio_shop.repo.path, plan.base_sha)
    baseline = kube.up_baseline(base, plan.config)
    sandbox = kube.new_sandbox(baseline, plan.config, Source(istio_shop.repo.path, plan.merge_sha))
    assert isinstance(kube, Controls)
    control = kube.new_control(sandbox, base)
    spec = plan.config.services["payments"]
    server = payments_db.rsplit("/", 1)[0] + "/postgres"
    keys = [sandbox.routing_key, control.routing_key]
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            forked = list(pool.map(lambda box: kube.fork(box, "payments", spec), [sandbox, control]))
        assert [f.status for f in forked] == ["ready"] * 2, [f.detail for f in forked]
        kube.route(sandbox)
        kube.route(control)
        another = Runtimes(settings, only="kubernetes")(plan.config)
        assert another.gc() == []  # the owner stands: its control is not gc's
        api = cluster.api_client()
        kubernetes.client.CoreV1Api(api).delete_collection_namespaced_config_map(
            NAMESPACE, label_selector=f"loopgate.dev/role=control,loopgate.dev/sandbox={sandbox.routing_key}"
        )
        another.teardown(sandbox)  # knows no control of it any more
        left = cluster.store.list("Deployment", NAMESPACE, f"loopgate.dev/sandbox={control.routing_key}")
        assert len(left) == 1
        removed = another.gc()
        why = f"a control of sandbox {sandbox.routing_key}, which is gone"
        assert any(
            f"Deployment {NAMESPACE}/payments-lg-{control.routing_key}" in r and why in r for r in removed
        )
        assert any(f"loopgate-{control.routing_key}" in r for r in removed), removed
        assert any(f"_lg_{control.routing_key}" in r for r in removed), removed
    finally:
        kube.teardown(sandbox)  # whatever the test left
    _no_copies_left(server, payments_db, keys)
    assert _leftovers(cluster) == []
    assert cluster.store.list("VirtualService", NAMESPACE) == []
