"""Observed requests in a cluster: the mesh's JSON access log (and, without one, a fork's own request
lines) read back per pod through the API server's pod log endpoint.

Every log line is hostile input: a service prints what it likes, other sandboxes share the baseline's
pods, a sidecar logs for every sandbox at once. No line may crash the reader, and none may count for a
sandbox it was not tagged for (`abc123` is never `abc1234`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import kubernetes.client
import pytest

from bot.config.schema import Routing
from bot.runtimes.kubernetes import observed
from bot.runtimes.kubernetes.observed import parse_app_line, parse_line, routing_key
from tests.kube_fake import FakeCluster

pytestmark = pytest.mark.timeout(180)  # a hang fails in 3 min; a busy 2-core CI host is no hang

NS = "shop"
KEY = "abc123"
ROUTING = Routing()


def line(**overrides: Any) -> str:
    """One access-log line in the format docs/kubernetes.md gives Istio (k8s spec), untagged."""
    entry: dict[str, Any] = {
        "start_time": "2026-11-29T16:00:00.123Z",
        "method": "GET",
        "path": "/orders/1",
        "response_code": "200",
        "duration": "12",
        "baggage": "-",
        "traceparent": "-",
        "x_loopgate_sandbox": "-",
        "direction": "inbound",
    }
    entry.update(overrides)
    return json.dumps(entry)


def key_of(text: str, routing: Routing = ROUTING) -> str | None:
    fields = parse_line(text, header=routing.header)
    assert fields is not None, text
    return routing_key(fields, routing)


# ------------------------------------------------------------------------------------------ parse_line


def test_a_realistic_line_parses_with_strings_or_numbers() -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    fields = parse_line(line(baggage=f"loopgate-sandbox={KEY}", traceparent=traceparent))
    assert fields == {
        "method": "GET",
        "path": "/orders/1",
        "status": 200,
        "duration_ms": 12,
        "started_at": "2026-11-29T16:00:00.123Z",
        "baggage": f"loopgate-sandbox={KEY}",
        "traceparent": traceparent,
        "sandbox_header": None,
    }
    numeric = parse_line(line(response_code=503, duration=7))
    assert numeric is not None and (numeric["status"], numeric["duration_ms"]) == (503, 7)


def test_envoy_dashes_and_nulls_are_missing_values() -> None:
    fields = parse_line(line(response_code="-", duration=None, start_time="-", traceparent=None))
    assert fields is not None
    assert (fields["status"], fields["duration_ms"], fields["started_at"], fields["traceparent"]) == (
        0,
        0,
        "",
        None,
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "2026-11-29T16:00:00.000000Z\tinfo\tads\tADS: new connection for node:sidecar~10.0.0.1",
        '[2026-11-29T16:00:00.000Z] "GET /orders HTTP/1.1" 200 - via_upstream',
        "{not json",
        "[1, 2, 3]",
        '"a string"',
        "null",
        '{"level":"info","time":"2026-11-29T16:00:00Z","msg":"Envoy proxy is ready"}',
        line(method=None),
        line(method=7),
        line(path=["/a"]),
        line(path="-"),
        line(direction="outbound"),
        line(upstream_cluster="outbound|80||inventory.shop.svc.cluster.local"),
        "[" * 100_000,
        "{" + '"a":' * 50_000,
        '{"a":' * 10_000,
        line(path="/" + "a" * 70_000),
    ],
)
def test_lines_that_are_not_inbound_access_log_entries_are_none(text: str) -> None:
    assert parse_line(text) is None


def test_wrong_types_never_crash_and_never_tag() -> None:
    hostile = [
        line(response_code=[200], duration={"ms": 1}, baggage=12, traceparent=False, x_loopgate_sandbox=1),
        line(response_code=True, duration=1e300),
        line(response_code=float("inf"), duration=float("nan")),
        line(response_code="2OO", duration="12.5", baggage={"loopgate-sandbox": KEY}),
        line(response_code=-1, start_time=["x"]),
    ]
    for text in hostile:
        fields = parse_line(text)
        assert fields is not None, text
        assert isinstance(fields["status"], int) and isinstance(fields["duration_ms"], int)
        assert routing_key(fields, ROUTING) is None


def test_inbound_lines_with_an_inbound_cluster_are_kept() -> None:
    assert parse_line(line(upstream_cluster="inbound|8080||")) is not None
    assert parse_line(line(upstream_cluster="InboundPassthroughClusterIpv4")) is not None
    assert parse_line(line(upstream_cluster="PassthroughCluster")) is None


# ------------------------------------------------------------------------------------------ the tag


@pytest.mark.parametrize(
    ("baggage", "expected"),
    [
        (f"loopgate-sandbox={KEY}", KEY),
        (f"userId=alice, loopgate-sandbox={KEY} ;ttl=30, other=1", KEY),
        (f"loopgate-sandbox={KEY}%3Bprop", KEY),
        (f"loopgate-sandbox={KEY}4", f"{KEY}4"),  # another sandbox's key, never ours
        (f"xloopgate-sandbox={KEY}", None),
        (f"loopgate-sandbox2={KEY}", None),
        (f"foo=loopgate-sandbox={KEY}", None),
        (f"loopgate-sandbox=zzz999,loopgate-sandbox={KEY}", "zzz999"),  # the first member wins
        ("loopgate-sandbox=", None),
        ("loopgate-sandbox", None),
        (",,,=,", None),
        ("loopgate-sandbox=" + "a" * 5000, "a" * 5000),
    ],
)
def test_the_baggage_member_matches_exactly(baggage: str, expected: str | None) -> None:
    assert key_of(line(baggage=baggage)) == expected



def test_the_header_tags_only_with_a_routing_key_and_only_without_the_member() -> None:
    assert key_of(line(x_loopgate_sandbox=KEY)) == KEY
    assert key_of(line(x_loopgate_sandbox="ABC123")) is None
    assert key_of(line(x_loopgate_sandbox=f"{KEY},zzz999")) is None
    assert key_of(line(x_loopgate_sandbox="abc")) is None
    assert key_of(line(x_loopgate_sandbox=KEY, baggage="loopgate-sandbox=zzz999")) == "zzz999"


def test_a_configured_member_and_header_are_used() -> None:
    routing = Routing(baggage_member="team.sandbox", header="x-team-sandbox")
    assert key_of(line(baggage=f"team.sandbox={KEY}"), routing) == KEY
    assert key_of(line(baggage=f"loopgate-sandbox={KEY}"), routing) is None
    assert key_of(line(x_team_sandbox=KEY), routing) == KEY
    assert key_of(line(**{"x-team-sandbox": KEY}), routing) == KEY


# ------------------------------------------------------------------------------ a service's own lines


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('INFO:     10.1.2.3:51234 - "GET /orders/1?x=2 HTTP/1.1" 200 OK', ("GET", "/orders/1?x=2", 200)),
        (
            '10.1.2.3 - - [29/Nov/2026:16:00:00 +0000] "POST /orders HTTP/1.1" 201 12 "-" "curl/8.5.0"',
            ("POST", "/orders", 201),
        ),
        ('::1 - - [29/Nov/2026:16:00:00 +0000] "DELETE /a HTTP/2" 404 9 "-" "node"', ("DELETE", "/a", 404)),
        ("GET /inventory/7 500 3.120 ms - 21", ("GET", "/inventory/7", 500)),
        ("::ffff:10.0.0.1 - GET / HTTP/1.1 200 2 - 1.002 ms", ("GET", "/", 200)),
    ],
)
def test_common_access_log_shapes_count(text: str, expected: tuple[str, str, int]) -> None:
    assert parse_app_line(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Started server process [1]",
        "GET requests are cached for 200 seconds",
        "FORGET /x 200",
        "GET /" + "a" * 70_000 + " 200",
        "",
    ],
)
def test_other_lines_do_not_count(text: str) -> None:
    assert parse_app_line(text) is None


# ----------------------------------------------------------------------------- read, through the API


def pod(
    name: str, labels: dict[str, str], containers: tuple[str, ...] = ("app", "istio-proxy")
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"containers": [{"name": c, "image": f"registry.example/{c}:1"} for c in containers]},
    }


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    with FakeCluster() as running:
        yield running


@pytest.fixture
def api(cluster: FakeCluster) -> Iterator[kubernetes.client.ApiClient]:
    client = cluster.api_client()
    try:
        yield client
    finally:
        client.close()


def test_read_keeps_the_sandboxes_own_and_untagged_requests_only(
    cluster: FakeCluster, api: kubernetes.client.ApiClient
) -> None:
    baseline = cluster.store.create(pod("orders-5d9f-x1", {"app": "orders"}))
    fork = cluster.store.create(
        pod(
            "orders-lg-abc123-7c-y2",
            {"app": "orders", "loopgate.dev/sandbox": KEY, "loopgate.dev/role": "fork"},
        )
    )
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    cluster.store.append_log(
        NS,
        baseline["metadata"]["name"],
        "istio-proxy",
        "\n".join(
            [
                line(path="/untagged"),
                line(path="/other", baggage="loopgate-sandbox=zzz999"),
                line(path="/longer-key", baggage=f"loopgate-sandbox={KEY}4"),
                line(path="/substring", baggage=f"x=loopgate-sandbox={KEY}"),
                line(path="/header-other", x_loopgate_sandbox="zzz999"),
                line(path="/caller-side", direction="outbound", baggage=f"loopgate-sandbox={KEY}"),
                "2026-11-29T16:00:00Z info envoy main: all clusters initialized",
                "{" * 5000,
                line(path="/huge", baggage="a=" + "b" * 200_000),
                line(path="/wrong-types", method=1, response_code={}),
            ]
        )
        + "\n",
    )
    cluster.store.append_log(
        NS,
        fork["metadata"]["name"],
        "istio-proxy",
        line(path="/mine", baggage=f"loopgate-sandbox={KEY}", traceparent=tp, response_code=201, duration="5")
        + "\n"
        + line(path="/mine-by-header", x_loopgate_sandbox=KEY)
        + "\n"
        + line(path="/misrouted", baggage="loopgate-sandbox=zzz999")
        + "\n",
    )
    # The fork's app container prints request lines too: with a mesh log they are not read.
    cluster.store.append_log(NS, fork["metadata"]["name"], "app", 'INFO: - "GET /app HTTP/1.1" 200 OK\n')
    got = observed.read(
        api,
        pods=[(baseline, "orders", None), (fork, "orders", KEY)],
        container="istio-proxy",
        since=datetime.now(UTC) - timedelta(minutes=5),
        routing=ROUTING,
        key=KEY,
    )
    summary = [(r.path, r.routing_key, r.target) for r in got]
    assert summary == [
        ("/untagged", None, None),
        ("/substring", None, None),  # the member is `x`: untagged, which only shows a lost tag
        ("/mine", KEY, KEY),
        ("/mine-by-header", KEY, KEY),
    ]
    mine = got[2]
    assert (mine.service, mine.method, mine.status, mine.duration_ms, mine.traceparent) == (
        "orders",
        "GET",
        201,
        5,
        tp,
    )
    assert mine.started_at == "2026-11-29T16:00:00.123Z"
    logs = [r for r in cluster.requests if r.path.endswith("/log")]
    assert len(logs) == 2
    for request in logs:
        assert request.query["container"] == "istio-proxy"
        assert 300 <= int(request.query["sinceSeconds"]) <= 310
        assert int(request.query["limitBytes"]) == observed.LOG_LIMIT_BYTES


def test_read_without_a_mesh_log_counts_the_forks_own_request_lines(
    cluster: FakeCluster, api: kubernetes.client.ApiClient
) -> None:
    baseline = cluster.store.create(pod("orders-5d9f-x1", {"app": "orders"}, ("app",)))
    fork = cluster.store.create(
        pod("orders-lg-abc123-7c-y2", {"loopgate.dev/sandbox": KEY}, ("app", "helper"))
    )
    cluster.store.append_log(NS, baseline["metadata"]["name"], "app", 'INFO: - "GET /base HTTP/1.1" 200 OK\n')
    cluster.store.append_log(
        NS,
        fork["metadata"]["name"],
        "app",
        "INFO:     Started server process [1]\n"
        'INFO:     10.0.0.1:1 - "GET /orders/1 HTTP/1.1" 200 OK\n'
        '10.0.0.1 - - [29/Nov/2026:16:00:00 +0000] "POST /orders HTTP/1.1" 500 3 "-" "x"\n'
        + "x" * 100_000
        + "\n",
    )
    cluster.store.append_log(
        NS, fork["metadata"]["name"], "helper", 'INFO: - "GET /helper HTTP/1.1" 200 OK\n'
    )
    got = observed.read(
        api,
        pods=[(baseline, "orders", None), (fork, "orders", KEY)],
        container=None,
        since=datetime.now(UTC) - timedelta(seconds=30),
        routing=ROUTING,
        key=KEY,
    )
    assert [(r.method, r.path, r.status, r.routing_key, r.target, r.traceparent) for r in got] == [
        ("GET", "/orders/1", 200, KEY, KEY, None),
        ("POST", "/orders", 500, KEY, KEY, None),
    ]
    # Baseline pods' own lines cannot tell tagged from untagged: not even read.
    assert [r.path.rsplit("/", 2)[-2] for r in cluster.requests if r.path.endswith("/log")] == [
        fork["metadata"]["name"]
    ]


def test_the_default_container_annotation_names_the_forks_container(
    cluster: FakeCluster, api: kubernetes.client.ApiClient
) -> None:
    spec = pod("orders-lg-abc123-7c-y2", {"loopgate.dev/sandbox": KEY}, ("istio-proxy", "app"))
    spec["metadata"]["annotations"] = {"kubectl.kubernetes.io/default-container": "app"}
    fork = cluster.store.create(spec)
    cluster.store.append_log(NS, fork["metadata"]["name"], "app", "GET /x 200 1.0 ms - 2\n")
    got = observed.read(
        api,
        pods=[(fork, "orders", KEY)],
        container=None,
        since=datetime.now(UTC),
        routing=ROUTING,
        key=KEY,
    )
    assert [(r.path, r.target) for r in got] == [("/x", KEY)]


def test_pods_without_the_sidecar_or_gone_add_nothing(
    cluster: FakeCluster, api: kubernetes.client.ApiClient
) -> None:
    plain = cluster.store.create(pod("orders-plain", {"app": "orders"}, ("app",)))
    gone = pod("orders-gone", {"app": "orders"})
    gone["metadata"]["namespace"] = NS
    meshed = cluster.store.create(pod("orders-meshed", {"app": "orders"}))
    cluster.store.append_log(NS, meshed["metadata"]["name"], "istio-proxy", line(path="/seen") + "\n")
    got = observed.read(
        api,
        pods=[
            (plain, "orders", None),
            (gone, "orders", None),
            (meshed, "orders", None),
            ({}, "orders", None),
        ],
        container="istio-proxy",
        since=datetime.now(UTC) - timedelta(seconds=5),
        routing=ROUTING,
        key=KEY,
    )
    assert [r.path for r in got] == ["/seen"]
    assert not cluster.server_errors


def test_a_log_that_is_one_json_object_is_read_as_text(
    cluster: FakeCluster, api: kubernetes.client.ApiClient
) -> None:
    """The client's own decoding would parse such a log as JSON and hand back its Python repr."""
    meshed = cluster.store.create(pod("orders-meshed", {"app": "orders"}))
    cluster.store.append_log(
        NS, meshed["metadata"]["name"], "istio-proxy", line(baggage=f"loopgate-sandbox={KEY}")
    )
    got = observed.read(
        api,
        pods=[(meshed, "orders", None)],
        container="istio-proxy",
        since=datetime.now(UTC),
        routing=ROUTING,
        key=KEY,
    )
    assert [(r.path, r.routing_key) for r in got] == [("/orders/1", KEY)]
