"""A fork's database role reaches its own copy and nothing else; admin credentials reach no child.

Tried as a hostile agent would: with the `LOOPGATE_STATE` its fork process actually received."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import psycopg
import pytest

from bot.config import InfrastructureError, RuntimeSettings
from bot.runtimes.local import LocalRuntime
from bot.runtimes.local.postgres import Postgres, database_name, database_url, password_of
from bot.runtimes.protocol import Baseline, Sandbox
from tests.conftest import LOOPGATE
from tests.gitrepo import GitRepo
from tests.test_isolation import open_sandbox
from tests.test_state_copies import admin_url
from tests.test_verify_cli import config_with_suite

BRANCH = "agent/orders-and-payments-note"


def received_state(runtime: LocalRuntime, sandbox: Sandbox | None, baseline: Baseline) -> str:
    """`LOOPGATE_STATE` as the payments process got it: what code in that service can read."""
    if sandbox is None:
        env = runtime.registry.load_env(baseline.env_id)
        assert env is not None
        pid = env.services["payments"].process.pid
    else:
        record = runtime.registry.load_sandbox(baseline.env_id, sandbox.routing_key)
        assert record is not None
        pid = record.forks["payments"].process.pid
    leader = psutil.Process(pid)
    for process in [leader, *leader.children(recursive=True)]:
        state = process.environ().get("LOOPGATE_STATE")
        if state:
            return state
    raise AssertionError("the payments process has no LOOPGATE_STATE")


def refused(url: str, **overrides: str) -> bool:
    """True when PostgreSQL refuses this login (with `overrides` applied to the URL's parameters)."""
    parts = urlsplit(url)
    params = {
        "host": parts.hostname or "",
        "port": str(parts.port),
        "user": parts.username or "",
        "password": password_of(url) or "",
        "dbname": parts.path.lstrip("/"),
        "passfile": os.devnull,  # no ~/.pgpass may log in for the attacker
        "connect_timeout": "5",
        **overrides,
    }
    try:
        with psycopg.connect(**params):  # type: ignore[arg-type]
            return False
    except psycopg.OperationalError:
        return True


def exists(admin: str, table: str, column: str, name: str) -> bool:
    with psycopg.connect(admin) as conn:
        return conn.execute(f"SELECT 1 FROM {table} WHERE {column} = %s", (name,)).fetchone() is not None


def test_a_fork_role_reaches_its_own_copy_and_nothing_else(
    state_dir: Path, shop_repo: GitRepo, shop_baseline: Baseline
) -> None:
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir))
    admin = admin_url(runtime)
    a = open_sandbox(runtime, shop_repo, shop_baseline, BRANCH)
    b = open_sandbox(runtime, shop_repo, shop_baseline, BRANCH)
    copy_a, copy_b = (database_name(s.routing_key, "payments") for s in (a, b))
    try:
        url_a, url_b = received_state(runtime, a, shop_baseline), received_state(runtime, b, shop_baseline)
        baseline_db = database_name(shop_baseline.env_id, "payments")
        assert urlsplit(url_a).username == copy_a and urlsplit(url_a).path == f"/{copy_a}"
        assert password_of(url_a) and password_of(url_a) != password_of(url_b)
        assert password_of(admin) not in (url_a + url_b + received_state(runtime, None, shop_baseline))

        with psycopg.connect(url_a) as conn:
            role = conn.execute(
                "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls"
                " FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
            assert role == (False, False, False, False, False)
            owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'charges'").fetchone()
            assert owner == (copy_a,)  # restored objects are the role's: the service can write them
            conn.execute(
                "INSERT INTO charges (id, amount_cents, card_last4, status) VALUES ('x', 1, '4242', 'ok')"
            )
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SET ROLE postgres")

        assert refused(url_a, dbname=baseline_db), "a fork's role opened the baseline's database"
        assert refused(url_a, dbname=copy_b), "a fork's role opened another sandbox's copy"
        assert refused(url_a, dbname="postgres") and refused(url_a, dbname="template1")
        assert refused(url_a, user="postgres", password=""), "postgres logged in without a password"
        assert refused(url_a, user="postgres", dbname="postgres", password="")
        assert refused(url_a, user=copy_b, dbname=copy_b, password=""), (
            "a role logged in without its password"
        )
        assert refused(url_a, user=copy_b, dbname=copy_b), "a role logged in with another's password"
    finally:
        runtime.teardown(a)
        runtime.teardown(b)
    for name in (copy_a, copy_b):
        assert not exists(admin, "pg_database", "datname", name)
        assert not exists(admin, "pg_roles", "rolname", name)
    assert exists(admin, "pg_roles", "rolname", database_name(shop_baseline.env_id, "payments"))


RECORDER = """#!/bin/sh
{{ printf 'argv:'; for a in "$0" "$@"; do printf ' %s' "$a"; done; printf '\\n'
  printf 'env:'; env | cut -d= -f1 | tr '\\n' ' '; printf '\\n'
  printf 'pgpassfile: %s %s\\n' "$PGPASSFILE" "$(stat -c %a "$PGPASSFILE" 2>/dev/null)"; }} >> {log}
exec {real} "$@"
"""


def test_the_admin_password_reaches_no_command_line_and_no_service(
    state_dir: Path,
    shop_repo: GitRepo,
    shop_baseline: Baseline,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir))
    admin_password = password_of(admin_url(runtime))
    if admin_password is None:
        pytest.skip("the admin URL in use carries no password: there is none to leak")
    shims = tmp_path / "bin"
    shims.mkdir()
    for tool in ("pg_dump", "pg_restore"):
        real = shutil.which(tool)
        assert real is not None
        shim = shims / tool
        shim.write_text(RECORDER.format(log=tmp_path / f"{tool}.log", real=real))  # they run at once
        shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")

    sandbox = open_sandbox(runtime, shop_repo, shop_baseline, BRANCH)
    try:
        record = runtime.registry.load_sandbox(shop_baseline.env_id, sandbox.routing_key)
        assert record is not None
        calls = (tmp_path / "pg_dump.log").read_text() + (tmp_path / "pg_restore.log").read_text()
        assert calls.count("argv:") == 2 and "pg_dump" in calls and "pg_restore" in calls
        assert f"--role={database_name(sandbox.routing_key, 'payments')}" in calls
        assert admin_password not in calls
        for line in calls.splitlines():
            if line.startswith("env:"):
                assert "PGPASSFILE" in line.split() and "PGPASSWORD" not in line.split()
            if line.startswith("pgpassfile:"):
                _, path, mode = line.split()
                assert mode == "600"
                # This copy's own file; another run's copy may be using its own at this moment.
                assert not Path(path).exists(), "the PGPASSFILE outlived the copy"
        services = [*record.forks.values()]
        env = runtime.registry.load_env(shop_baseline.env_id)
        assert env is not None
        services += env.services.values()
        for service in services:
            leader = psutil.Process(service.process.pid)
            for process in [leader, *leader.children(recursive=True)]:
                seen = " ".join(process.cmdline()) + " ".join(process.environ().values())
                assert admin_password not in seen, f"{service.service} can read the admin password"
    finally:
        runtime.teardown(sandbox)


def test_gc_drops_the_roles_and_databases_a_killed_run_left(
    state_dir: Path, shop_repo: GitRepo, shop_baseline: Baseline, tmp_path: Path
) -> None:
    runtime = LocalRuntime(RuntimeSettings(state_dir=state_dir))
    admin = admin_url(runtime)
    override = config_with_suite(tmp_path, "sleep 60", timeout=120)
    process = subprocess.Popen(
        [str(LOOPGATE), "verify", "--repo", str(shop_repo.path), "--head", BRANCH, "--config", str(override)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        copy = wait_for_copy(runtime, shop_baseline)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert exists(admin, "pg_database", "datname", copy) and exists(admin, "pg_roles", "rolname", copy)

    done = subprocess.run([str(LOOPGATE), "gc"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not exists(admin, "pg_database", "datname", copy), "gc left the killed run's database"
    assert not exists(admin, "pg_roles", "rolname", copy), "gc left the killed run's role"
    baseline_db = database_name(shop_baseline.env_id, "payments")
    assert exists(admin, "pg_database", "datname", baseline_db)  # the kept baseline is untouched
    with psycopg.connect(database_url(admin, baseline_db)) as conn:
        assert conn.execute("SELECT count(*) FROM charges").fetchone() is not None


def wait_for_copy(runtime: LocalRuntime, baseline: Baseline, timeout: float = 90) -> str:
    """The Postgres copy of the run's sandbox, once the run is routed (its suite is running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = [r for r in runtime.registry.sandboxes(baseline.env_id) if r.routed and r.roles]
        if records:
            return records[0].roles[0]
        time.sleep(0.1)
    raise AssertionError("the run never routed a sandbox with a Postgres copy")


def test_errors_name_the_server_but_never_its_password(tmp_path: Path) -> None:
    postgres = Postgres("postgresql://postgres:s3cr3t-admin@127.0.0.1:1/postgres", tmp_path)
    with pytest.raises(InfrastructureError) as raised:
        postgres.create("lg_unreachable_payments")
    assert "postgresql://postgres@127.0.0.1:1/postgres is unreachable" in str(raised.value)
    assert "s3cr3t" not in str(raised.value)
