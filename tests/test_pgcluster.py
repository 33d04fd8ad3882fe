"""Where the configured server trusts loopback logins, loopgate runs its own PostgreSQL cluster: started
on demand, reused across runs, stopped with the last baseline that keeps state in it (or by `gc`)."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from bot.config import InfrastructureError, RuntimeSettings
from bot.pipeline import make_plan
from bot.runtimes.local import LocalRuntime
from bot.runtimes.local.pgcluster import OwnCluster
from bot.runtimes.local.pgsite import TRUSTS
from bot.runtimes.local.postgres import Postgres
from bot.runtimes.protocol import Source
from tests.conftest import run_cli
from tests.gitrepo import GitRepo

SYSTEM_SERVER = os.environ.get("LOOPGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def test_a_server_that_trusts_loopback_is_detected_and_loopgates_own_is_not(
    postgres_cluster: Path, tmp_path: Path
) -> None:
    # `make test`'s server trusts every loopback login (scripts/ensure-postgres), as many dev servers do.
    bypass = Postgres(SYSTEM_SERVER, tmp_path).password_bypass()
    assert bypass is not None and "with a wrong password" in bypass
    with OwnCluster(postgres_cluster, state_dir=tmp_path).in_use("test") as admin:
        assert Postgres(admin, tmp_path).password_bypass() is None
    with psycopg.connect(SYSTEM_SERVER) as conn:
        left = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'lg\\_probe\\_%'").fetchone()
    assert left == (0,), "the probe left its throwaway role behind"


def test_the_own_cluster_starts_for_a_trusting_server_is_reused_and_stops_with_its_last_baseline(
    shop_repo: GitRepo, tmp_path: Path
) -> None:
    """Its own state dir and cluster dir: this test watches the whole life of one cluster."""
    settings = RuntimeSettings(state_dir=tmp_path / "state", postgres_dir=tmp_path / "pg")
    env = {"LOOPGATE_STATE_DIR": str(settings.state_dir), "LOOPGATE_POSTGRES_DIR": str(settings.postgres_dir)}
    plan = make_plan(shop_repo.path, "main", "main")
    base = Source(shop_repo.path, plan.base_sha)
    runtime = LocalRuntime(settings, persistent=True)
    cluster = runtime.postgres_site().cluster
    assert cluster.running() is None
    try:
        baseline = runtime.up_baseline(base, plan.config)
        first = cluster.running()
        assert first is not None and first.reason == TRUSTS
        status = run_cli("env", "status", env=env)
        assert f"service state: loopgate's own PostgreSQL cluster at 127.0.0.1:{first.port} ({TRUSTS})" in (
            status.stdout
        )
        made = (cluster.data / "PG_VERSION").stat().st_mtime_ns

        runtime.down(baseline.env_id)
        assert cluster.running() is None, "the cluster outlived the last baseline with state in it"
        assert not first.process.alive()

        again = runtime.up_baseline(base, plan.config)  # a later run: the data dir is kept, no initdb
        second = cluster.running()
        assert second is not None and (cluster.data / "PG_VERSION").stat().st_mtime_ns == made
        LocalRuntime(settings, persistent=True).up_baseline(base, plan.config)  # reused, not restarted
        assert cluster.running() == second
        runtime.down(again.env_id)
        assert cluster.running() is None
    finally:
        for env_id in runtime.registry.env_ids():
            runtime.down(env_id)
        cluster.stop()


def test_gc_stops_an_orphaned_own_cluster(postgres_cluster: Path, tmp_path: Path) -> None:
    """A cluster holding no loopgate database (its users were killed) is stopped by `loopgate gc`."""
    orphan = OwnCluster(tmp_path / "pg", state_dir=tmp_path / "state")
    with orphan.in_use("test"):
        pass
    state = orphan.running()
    assert state is not None
    env = {"LOOPGATE_STATE_DIR": str(tmp_path / "state"), "LOOPGATE_POSTGRES_DIR": str(tmp_path / "pg")}
    done = run_cli("gc", env=env)
    assert done.returncode == 0, done.stderr
    assert "removed loopgate's own PostgreSQL cluster" in done.stdout
    assert orphan.running() is None and not state.process.alive()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root must drop to another user")
def test_root_without_an_unprivileged_postgres_user_is_an_infrastructure_error(tmp_path: Path) -> None:
    cluster = OwnCluster(tmp_path / "pg", state_dir=tmp_path, os_user="lg-no-such-user")
    with pytest.raises(InfrastructureError, match="no `lg-no-such-user` user") as raised, cluster.in_use("x"):
        pass
    assert "LOOPGATE_POSTGRES_MODE=server" in str(raised.value)
