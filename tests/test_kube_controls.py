"""Controls in a cluster (DESIGN "Control and candidate", #11 item 1), against the contract fake: a
control is a sandbox of its own routing key whose forks run the base commit's image, recorded with its
owner before it has anything; the owner's teardown takes it along, gc removes it once its owner is gone,
and `loopgate render --controls` shows its objects. (The whole pipeline with controls, Postgres copies
from one snapshot included, is in test_kube_pipeline.py.)"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from bot.config import Config, parse_config
from bot.config.kubernetes import KubernetesPostgres
from bot.runtimes.kubernetes import objects
from bot.runtimes.kubernetes import state as copies
from bot.runtimes.kubernetes.client import Kube
from bot.runtimes.kubernetes.controlrecords import control_record
from bot.runtimes.kubernetes.gc import sweep
from bot.runtimes.kubernetes.render import control_keys, render_sandbox
from bot.runtimes.protocol import Controls, ProbeRequest, Source
from tests.conftest import run_cli
from tests.gitrepo import GitRepo
from tests.kube_fake import FakeCluster
from tests.kube_fake.images import ImageSpec
from tests.kube_fake.validate import validate_object
from tests.test_kube_runtime import (
    MANAGED,
    NS,
    available,
    baseline_objects,
    config,
    fork_objects,
    images,  # noqa: F401  (the fixture `shop` needs)
    refused,
    runtime_for,
    shop,  # noqa: F401
    start,
    team_virtual_service,
    through_mesh,
    wait_for,
)

LATER = datetime.now(UTC) + timedelta(hours=1)


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_control_runs_the_base_image_under_its_own_key_and_goes_with_its_owner(
    shop: FakeCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    shop.store.create(team_virtual_service("web"))
    runtime = runtime_for(shop, tmp_path)
    assert isinstance(runtime, Controls)
    cfg = config(services=("api", "web"))
    sandbox = start(runtime, tmp_path, cfg)
    control = runtime.new_control(sandbox, Source(tmp_path, "base"))
    key, mine = sandbox.routing_key, control.routing_key
    assert mine != key and objects.is_routing_key(mine)
    # Recorded with its owner before it has anything.
    records = shop.store.list("ConfigMap", NS, f"loopgate.dev/sandbox={key},loopgate.dev/role=control")
    assert [r["metadata"]["labels"]["loopgate.dev/control"] for r in records] == [mine]
    assert shop.store.list("Deployment", NS, f"loopgate.dev/sandbox={mine}") == []

    spec = cfg.services["web"]
    assert runtime.build(sandbox, "web", spec).source == "echo:head"
    assert runtime.build(control, "web", spec).source == "echo:base"
    for box in (sandbox, control):
        forked = runtime.fork(box, "web", spec)
        assert forked.status == "ready", forked.detail
        runtime.route(box)
    made = [
        obj
        for kind in ("Deployment", "Service")
        for obj in shop.store.list(kind, NS, f"loopgate.dev/sandbox={mine}")
    ]
    assert [o["metadata"]["labels"].get(objects.CONTROL_OF_LABEL) for o in made] == [key, key]
    assert made[0]["spec"]["template"]["spec"]["containers"][0]["image"] == "echo:base"
    vs = shop.store.get("VirtualService", NS, "web")
    assert objects.route_keys(vs) == [key, mine]
    # Each key reaches its own fork: the candidate's (version 2), the control's (the base, version 1).
    assert through_mesh(shop, "web", {"baggage": f"loopgate-sandbox={key}"})["version"] == "2"
    control_answer = runtime.probe(control, ProbeRequest("web", "GET", "/who"), tagged=True)
    assert b'"version": "1"' in control_answer.body
    assert "web" in {r.service for r in runtime.observed_requests(control) if r.target == mine}
    # Only the candidate counts against max_sandboxes.
    assert runtime.live_sandboxes() == {key}

    other = runtime_for(shop, tmp_path)  # another process: it finds the control by its record
    other.up_baseline(Source(tmp_path, "base"), cfg)
    other.teardown(sandbox)
    for selector in (f"loopgate.dev/sandbox={mine}", f"loopgate.dev/sandbox={key}"):
        for kind in ("Deployment", "Service", "Job", "ConfigMap"):
            assert shop.store.list(kind, NS, selector) == [], (kind, selector)
    assert objects.route_keys(shop.store.get("VirtualService", NS, "web")) == []
    wait_for("no pod of either left", lambda: not shop.store.list("Pod", NS, "app.kubernetes.io/managed-by"))
    assert refused(shop) == []


def test_gc_keeps_a_control_while_its_record_stands_and_removes_it_once_its_owner_is_gone(
    tmp_path: Path,
) -> None:
    with FakeCluster() as cluster:
        store = cluster.store
        owner, kept, orphan, stale = "owner0001", "kept00001", "orphan001", "stale0001"
        store.create(control_record(owner=owner, key=kept, namespace=NS, expires_at=stamp(LATER)))
        past = stamp(datetime.now(UTC) - timedelta(seconds=5))
        store.create(control_record(owner=owner, key=stale, namespace=NS, expires_at=past))
        for key in (owner, kept, orphan):
            for obj in fork_objects(key, expires=LATER):
                store.create(objects.as_control(obj, None if key == owner else owner))
        web = config().services["web"].kubernetes
        assert web is not None
        for key in (kept, orphan):
            route = objects.http_route(
                service="web",
                spec=web,
                key=key,
                routing=config().routing,
                fork_service=f"web-lg-{key}",
                namespace=NS,
                expires_at=stamp(LATER),
            )
            store.create(objects.as_control(route, owner))
        vs = team_virtual_service("web")
        for key in (owner, kept, orphan):
            entry = objects.istio_route(
                key=key, routing=config().routing, fork_host=f"web-lg-{key}.shop", port=80
            )
            vs = objects.with_route(vs, entry)
        store.create(vs)

        removed = runtime_for(cluster, tmp_path).gc()
        why = f"a control of sandbox {owner}, which is gone"
        assert sorted(line.split(" (")[0] for line in removed if why in line) == [
            f"deleted Deployment {NS}/web-lg-{orphan}",
            f"deleted HTTPRoute {NS}/web-lg-{orphan}",
            f"deleted Service {NS}/web-lg-{orphan}",
        ]
        assert any(f"loopgate-{orphan}" in line for line in removed)
        assert any("expired control record" in line and stale in line for line in removed)
        assert objects.route_keys(store.get("VirtualService", NS, "web")) == [owner, kept]
        assert {d["metadata"]["labels"]["loopgate.dev/sandbox"] for d in store.list("Deployment", NS)} == {
            owner,
            kept,
        }
        assert [r["metadata"]["name"] for r in store.list("HTTPRoute", NS)] == [f"web-lg-{kept}"]
        assert runtime_for(cluster, tmp_path).gc() == []
        assert refused(cluster) == []


def test_a_sweep_of_a_cluster_without_controls_lists_no_control_record(tmp_path: Path) -> None:
    with FakeCluster() as cluster:
        for obj in fork_objects("alone0001", expires=LATER):
            cluster.store.create(obj)
        kube = Kube(cluster.api_client())
        cluster.clear_requests()
        assert sweep(kube) == []
        assert not any("configmaps" in r.path for r in cluster.requests)


def test_one_copy_job_restores_one_dump_into_every_side() -> None:
    server = KubernetesPostgres(host="pg", secret="pgadm")
    group = [
        copies.Copy("owner0001", "pay", NS, "ledger", server),
        copies.Copy("ctrl00001", "pay", NS, "ledger", server, "owner0001"),
        copies.Copy("ctrl00002", "pay", NS, "ledger", server, "owner0001"),
    ]
    job = copies.copy_job(group, stamp(LATER))
    assert validate_object(job) == []
    assert job["metadata"]["name"] == "lg-owner0001-copy-pay"
    assert job["metadata"]["labels"]["loopgate.dev/sandbox"] == "owner0001"
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["LOOPGATE_COPIES"]["value"] == "0 1 2"
    assert [env[f"LOOPGATE_COPY_DB_{i}"]["value"] for i in range(3)] == [c.database for c in group]
    assert [env[f"LOOPGATE_COPY_PASSWORD_{i}"]["valueFrom"]["secretKeyRef"]["name"] for i in range(3)] == [
        c.name for c in group
    ]
    script = container["command"][2]
    assert script.count("pg_dump") == 1 and script.count("pg_restore") == 1 and "$(" not in script
    assert (
        copies.record(group[1], stamp(LATER))["metadata"]["labels"][objects.CONTROL_OF_LABEL] == "owner0001"
    )
    assert copies.copy_from_record(copies.record(group[2], stamp(LATER))) == group[2]
    with pytest.raises(ValueError, match="one service's database"):
        copies.copy_job([group[0], copies.Copy("ctrl00001", "pay", NS, "other", server)], stamp(LATER))


SHOP = """\
version: 1
runtime:
  kind: kubernetes
  kubernetes: {routing: ROUTING, ttl: 1800, postgres: {host: pg.db.svc.cluster.local, secret: pgadm}}
services:
  orders:
    paths: ["services/orders/**"]
    kubernetes: {namespace: shop, workload: deployment/orders, port: 80, image: "shop/orders:{sha}"}
  payments:
    paths: ["services/payments/**"]
    kubernetes: {namespace: shop, workload: deployment/payments, port: 80, image: "shop/payments:{sha}"}
    state: {postgres: {database: payments}}
verify:
  suites:
    - name: e2e
      timeout: 120
      kubernetes:
        image: "shop/e2e:{sha}"
        command: [python, -m, pytest, e2e, -q]
"""


@pytest.mark.parametrize("routing", ["istio", "gateway-api"])
def test_render_with_controls_shows_every_side_and_passes_strict_validation(
    tmp_path: Path, routing: str
) -> None:
    path = tmp_path / ".loopgate.yml"
    path.write_text(SHOP.replace("ROUTING", routing))
    done = run_cli(
        "render", "--config", str(path), "--sandbox", "abc123", "--head", "h1", "--base", "b0", "--controls"
    )
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d is not None]
    problems = {f"{d['kind']}/{d['metadata']['name']}": validate_object(d) for d in docs}
    assert {k: v for k, v in problems.items() if v} == {}
    primary, secondary = control_keys("abc123")
    assert f"With its controls {primary}, {secondary}" in done.stdout
    records = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["labels"]["loopgate.dev/role"] == "control"
    ]
    assert [r["data"]["control"] for r in records] == [primary, secondary]
    forks = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["image"]
        for d in docs
        if d["kind"] == "Deployment"
    }
    assert forks == {
        "orders-lg-abc123": "shop/orders:h1",
        f"orders-lg-{primary}": "shop/orders:b0",
        f"orders-lg-{secondary}": "shop/orders:b0",
        "payments-lg-abc123": "shop/payments:h1",
        f"payments-lg-{primary}": "shop/payments:b0",
        f"payments-lg-{secondary}": "shop/payments:b0",
    }
    copy_jobs = [d for d in docs if d["kind"] == "Job" and "-copy-" in d["metadata"]["name"]]
    assert [j["metadata"]["name"] for j in copy_jobs] == ["lg-abc123-copy-payments"]
    for d in docs:
        key = (d["metadata"].get("labels") or {}).get("loopgate.dev/sandbox")
        if key in (primary, secondary):
            assert d["metadata"]["labels"][objects.CONTROL_OF_LABEL] == "abc123", d["metadata"]["name"]
    suites = [
        d for d in docs if d["kind"] == "Job" and d["metadata"]["labels"]["loopgate.dev/role"] == "suite"
    ]
    assert len(suites) == 3  # the same suite image against every side
    assert {s["spec"]["template"]["spec"]["containers"][0]["image"] for s in suites} == {"shop/e2e:h1"}
    if routing == "istio":
        (vs,) = [
            d for d in docs if d["kind"] == "VirtualService" and d["metadata"]["name"].startswith("orders")
        ]
        assert objects.route_keys(vs) == ["abc123", primary, secondary]
    else:
        routes = [d for d in docs if d["kind"] == "HTTPRoute"]
        assert len(routes) == 6


def test_render_without_controls_is_unchanged_by_them() -> None:
    cfg = parse_config(SHOP.replace("ROUTING", "istio"))
    now = datetime(2026, 11, 29, 17, 0, tzinfo=UTC)
    plain = render_sandbox(
        cfg, key="abc123", routing=None, services=None, head_sha="h", base_sha="b", now=now, nonce="n" * 16
    )
    assert not any(objects.CONTROL_OF_LABEL in (d["metadata"].get("labels") or {}) for d in plain)
    assert [d["kind"] for d in plain if d["kind"] in ("ConfigMap", "Secret", "Job")][:3] == [
        "ConfigMap",
        "Secret",
        "Job",
    ]


KANIKO = 'case "$*" in *--destination=*good*) echo "INFO[0002] Pushed $*"; exit 0;; esac\nexit 1\n'
"""Stands for Kaniko: pushes a destination with `good` in it."""


def test_the_controls_build_the_base_commit_once(
    images: dict[str, ImageSpec],  # noqa: F811
    tmp_path: Path,
) -> None:
    """An in-cluster build: the candidate builds its head; its two controls share one Kaniko Job of the
    base commit (the same image, the same tag), whose outcome both get."""
    (tmp_path / "kaniko.sh").write_text(KANIKO)
    repo = GitRepo.init(tmp_path / "repo", {"a": "1"})
    repo.git("remote", "add", "origin", "https://github.com/acme/shop.git")
    base = repo.git("rev-parse", "HEAD")
    head = repo.branch("agent/change", {"a": "2"})
    web = {
        "namespace": NS,
        "workload": "deployment/web",
        "port": 80,
        "build": {"registry": "registry.example/good/web"},
    }
    cfg = Config.model_validate(
        {
            "version": 1,
            "runtime": {"kind": "kubernetes", "kubernetes": {"routing": "istio"}},
            "services": {"web": {"paths": ["web/**"], "kubernetes": web}},
        }
    )
    images[objects.KANIKO_IMAGE] = ImageSpec(argv=["sh", str(tmp_path / "kaniko.sh")], cwd=tmp_path)
    with FakeCluster(images=images) as cluster:
        for obj in baseline_objects("web"):
            cluster.store.create(obj)
        wait_for("the baseline Available", lambda: available(cluster, "web"))
        runtime = runtime_for(cluster, tmp_path)
        baseline = runtime.up_baseline(Source(repo.path, base), cfg)
        sandbox = runtime.new_sandbox(baseline, cfg, Source(repo.path, head))
        controls = [runtime.new_control(sandbox, Source(repo.path, base)) for _ in range(2)]
        with ThreadPoolExecutor(max_workers=3) as pool:
            boxes = [sandbox, *controls]
            built = list(pool.map(lambda box: runtime.build(box, "web", cfg.services["web"]), boxes))
        assert [b.ok for b in built] == [True] * 3, [b.detail for b in built]
        assert [b.source for b in built] == [
            f"registry.example/good/web:{head}",
            f"registry.example/good/web:{base}",
            f"registry.example/good/web:{base}",
        ]
        jobs = [
            o["metadata"]
            for o in cluster.written_objects()
            if o.get("kind") == "Job" and "-build-" in o["metadata"]["name"]
        ]
        assert len(jobs) == 2, [j["name"] for j in jobs]
        assert sorted(j["labels"].get(objects.CONTROL_OF_LABEL, "") for j in jobs) == [
            "",
            sandbox.routing_key,
        ]
        runtime.teardown(sandbox)
        assert cluster.store.list("ConfigMap", NS, MANAGED) == []
        assert refused(cluster) == []


def test_gc_leaves_a_copy_in_the_making(tmp_path: Path) -> None:
    """A copy's record is made before its copy Job runs and before its fork exists: gc must not take a
    sandbox that has no fork yet for one that is gone, and drop the copy under its Job."""
    with FakeCluster() as cluster:
        server = KubernetesPostgres(host="pg", secret="pgadm")
        making = copies.Copy("making01", "pay", NS, "ledger", server)
        cluster.store.create(copies.record(making, stamp(LATER)))
        cluster.clear_requests()
        assert runtime_for(cluster, tmp_path).gc() == []
        assert [c.key for c in copies.recorded_copies(Kube(cluster.api_client()))] == ["making01"]
        assert not any(r.method == "POST" for r in cluster.requests)
        (read,) = copies.recorded_copies(Kube(cluster.api_client()))
        assert read.recorded_at is not None and read.being_made(datetime.now(UTC))
        assert not read.being_made(datetime.now(UTC) + timedelta(seconds=server.timeout + 61))
