"""The webhook route under fuzzing, against the real app and a real SQLite store: GitHub's example
payloads with values replaced, keys dropped, bodies cut, signed or not. Whatever arrives, the answer
is never a 5xx, nothing unsigned is stored or runs, and a restart replays what is left and starts.

Two halves: a hypothesis property (shrinks a failure to its smallest delivery) and a fixed corpus,
generated from a seed, that also exercises the start-up replay on deliveries stored unparsed.
"""

from __future__ import annotations

import copy
import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.github.signature import sign
from bot.server.webhooks import replay_unprocessed
from tests.github_fake import webhooks
from tests.intake_harness import INSTALLATION, REPO, SECRET, Intake, intake_app

EVENTS = ["push", "pull_request", "check_run", "check_suite", "delete", "installation",
          "installation_repositories", "ping", "create"]  # fmt: skip
ODD_EVENTS = ["PUSH", "push ", "x" * 70, "pull_request_review", "check_run\n"]
ODD_VALUES: list[Any] = [
    None, "", "\ud800", "a\x00b", "é☃", "refs/heads/" + "a" * 300, 1e30, -1, 0, 2**63, 2**70, 1.5,
    True, [], {}, [1, [2]], {"id": None}, "0" * 40, "refs/tags/v1", "refs/heads/agent/x",
]  # fmt: skip


def _examples() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for event, path in webhooks.payload_files():
        if event in EVENTS:
            original = json.loads(path.read_text())
            found.append((event, original))
            found.append((event, webhooks.adapt(original, repo_full_name=REPO, installation_id=INSTALLATION)))
    return found


EXAMPLES = _examples()


def paths(node: Any, prefix: tuple[Any, ...] = (), depth: int = 4) -> list[tuple[Any, ...]]:
    """Every key path into `node` down to `depth` levels: where a mutation may land."""
    found = [prefix] if prefix else []
    if depth == 0:
        return found
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        found += paths(child, (*prefix, key), depth - 1)
    return found


def mutated(payload: dict[str, Any], path: tuple[Any, ...], value: Any, drop: bool) -> dict[str, Any]:
    copied = copy.deepcopy(payload)
    parent: Any = copied
    for key in path[:-1]:
        parent = parent[key]
    if drop and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return copied


def signature_for(body: bytes, kind: str) -> str | bytes | None:
    return {
        "valid": sign(body, SECRET),
        "wrong": sign(body, "not-the-secret"),
        "none": None,
        "non-ascii": "sha256=é☃".encode(),
        "truncated": sign(body, SECRET)[:-1],
    }[kind]


def send(app: Intake, event: str, body: bytes, kind: str) -> None:
    """Deliver once and check the invariants the issue asks for."""
    delivery = str(uuid.uuid4())
    runs_before = len(app.store.find(limit=10_000))
    headers = webhooks.headers_for(event, body, None, delivery)
    signature = signature_for(body, kind)
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature  # type: ignore[assignment]
    answer = app.client.post("/webhooks/github", content=body, headers=headers)
    assert answer.status_code < 500, (answer.status_code, answer.text, event, body[:300])
    if kind != "valid":
        assert answer.status_code == 401, answer.text
        assert app.store.delivery(delivery) is None
        assert len(app.store.find(limit=10_000)) == runs_before


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Intake]:
    with intake_app(tmp_path_factory.mktemp("fuzz")) as running:
        yield running


values = st.one_of(
    st.sampled_from(ODD_VALUES),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=6,
    ),
)


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[str, bytes, str]:
    event, payload = draw(st.sampled_from(EXAMPLES))
    for _ in range(draw(st.integers(0, 3))):
        where = paths(payload)
        if where:
            payload = mutated(payload, draw(st.sampled_from(where)), draw(values), draw(st.booleans()))
    body = json.dumps(payload).encode()
    if draw(st.integers(0, 9)) == 0:
        body = body[: draw(st.integers(0, len(body)))]
    if draw(st.integers(0, 4)) == 0:
        event = draw(st.sampled_from(EVENTS + ODD_EVENTS))
    kind = draw(st.sampled_from(["valid", "valid", "valid", "wrong", "none", "non-ascii", "truncated"]))
    return event, body, kind


@settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(delivery=deliveries())
def test_no_delivery_gets_a_5xx_and_nothing_unsigned_is_stored(
    app: Intake, delivery: tuple[str, bytes, str]
) -> None:
    send(app, *delivery)


def corpus(seed: int, count: int) -> list[tuple[str, bytes, str]]:
    """`count` deliveries from `seed`, the same on every machine: a regression corpus."""
    rng = random.Random(seed)
    made = []
    for _ in range(count):
        event, payload = rng.choice(EXAMPLES)
        for _ in range(rng.randint(0, 3)):
            where = paths(payload)
            value = rng.choice(ODD_VALUES)
            payload = mutated(payload, rng.choice(where), value, rng.random() < 0.2)
        body = json.dumps(payload).encode()
        if rng.random() < 0.05:
            body = b'{"a":' + b"[" * rng.randint(60, 3000) + b"]"
        kind = rng.choice(["valid"] * 4 + ["none", "non-ascii"])
        made.append((event, body, kind))
    return made


def test_a_fixed_corpus_gets_no_5xx_and_a_restart_replays_what_was_stored_unparsed(tmp_path: Path) -> None:
    deliveries = corpus(seed=9, count=300)
    with intake_app(tmp_path) as app:
        for event, body, kind in deliveries:
            send(app, event, body, kind)
        statuses = {row.outcome for row in _all_deliveries(app)}
        assert "rejected" in statuses and "processed" in statuses
        # A process before issue #9 stored deliveries before parsing them, then died.
        for number, (event, body, _) in enumerate(deliveries[:150]):
            text = body.decode("utf-8", "replace")
            app.store.record_delivery(f"crashed-{number}", event, None, REPO, None, text)
    with intake_app(tmp_path) as restarted:  # the app starts on the same database
        assert replay_unprocessed(restarted.store, restarted.new_run_id) == 150
        assert restarted.store.unprocessed_deliveries() == []
        left = {restarted.store.delivery(f"crashed-{n}").outcome for n in range(150)}  # type: ignore[union-attr]
        assert left <= {"processed", "failed"} and "failed" in left
        assert restarted.client.get("/healthz").status_code == 200


def _all_deliveries(app: Intake) -> list[Any]:
    from sqlalchemy import select

    from bot.store.models import Delivery

    with app.store._session("reading deliveries") as session:  # a look behind the API, for the test only
        return list(session.scalars(select(Delivery)))
