"""Per-fork data (DESIGN "Data"): a fork writes to its own copy; the baseline's rows never change."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import psycopg

from bot.config import RuntimeSettings
from bot.runtimes.local import LocalRuntime
from bot.runtimes.local.postgres import database_name, database_url
from bot.runtimes.protocol import Baseline
from tests.gitrepo import GitRepo
from tests.test_isolation import open_sandbox

CHECKOUT = {"sku": "sku-notebook", "qty": 1, "card": "4242-4242-4242-4242"}


def admin_url(runtime: LocalRuntime) -> str:
    """The admin URL of whichever PostgreSQL holds the shop's state (the tests' own cluster here)."""
    with runtime.postgres_site().admin() as postgres:
        return postgres.admin_url


def charges(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM charges").fetchone()
    assert row is not None
    return int(row[0])


def orders(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM orders").fetchone()[0])


def test_forks_write_to_their_own_copies(
    state_dir: Path, shop_repo: GitRepo, shop_baseline: Baseline
) -> None:
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir))
    admin = admin_url(runtime)
    gateway = shop_baseline.entry_urls["gateway"]
    # The baseline has data before any fork exists.
    assert httpx.post(f"{gateway}/api/checkout", json=CHECKOUT, timeout=10).status_code == 201
    baseline_db = database_url(admin, database_name(shop_baseline.env_id, "payments"))
    baseline_orders = state_dir / "envs" / shop_baseline.env_id / "state" / "orders" / "orders.db"
    before = (charges(baseline_db), orders(baseline_orders))
    assert before[0] >= 1 and before[1] >= 1

    sandbox = open_sandbox(runtime, shop_repo, shop_baseline, "agent/orders-and-payments-note")
    fork_db = database_url(admin, database_name(sandbox.routing_key, "payments"))
    fork_orders = (
        runtime.registry.sandbox_dir(shop_baseline.env_id, sandbox.routing_key) / "state/orders/orders.db"
    )
    try:
        assert (charges(fork_db), orders(fork_orders)) == before  # a copy made at fork time
        tagged = {"baggage": f"loopgate-sandbox={sandbox.routing_key}"}
        for _ in range(3):
            answer = httpx.post(f"{gateway}/api/checkout", json=CHECKOUT, headers=tagged, timeout=10)
            assert answer.status_code == 201, answer.text
        assert (charges(fork_db), orders(fork_orders)) == (before[0] + 3, before[1] + 3)
        assert (charges(baseline_db), orders(baseline_orders)) == before
    finally:
        runtime.teardown(sandbox)
    name = database_name(sandbox.routing_key, "payments")
    with psycopg.connect(admin) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is None
    assert not fork_orders.exists()
    assert (charges(baseline_db), orders(baseline_orders)) == before
