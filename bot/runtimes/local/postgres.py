"""PostgreSQL state for the local runtime: a database per baseline, a consistent copy per fork, each
owned by a role made for it, so a service reaches its own database and no other.

The copy is `pg_dump | pg_restore` from the baseline's live database: `CREATE DATABASE … TEMPLATE`
would fail while the baseline service holds connections, and a dump is taken from one snapshot, so the
fork sees a consistent state whatever the baseline is writing at that moment.

Every database loopgate makes gets a role of the same name: `LOGIN`, nothing else (no superuser, no
CREATEDB, CREATEROLE or REPLICATION), a random password, owner of the database and of everything
restored into it, and `CONNECT` on it is revoked from PUBLIC, so one role cannot open another's
database. A service receives only its role's URL. The admin URL stays in this process: psycopg gets it
as a connection string, `pg_dump` and `pg_restore` get its password through a 0600 PGPASSFILE that
lives as long as the copy, never on their command line, where `/proc/*/cmdline` would show it.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from bot.config import InfrastructureError
from bot.runtimes.local.pgcluster import find_bindir
from bot.runtimes.local.processes import ProcessRef

_NAME = re.compile(r"^[a-z0-9_]{1,63}$")
_ROLE_OPTIONS = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def database_url(server_url: str, database: str) -> str:
    """The server URL with its database swapped."""
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def role_url(server_url: str, role: str, password: str, database: str) -> str:
    """`postgresql://<role>:<password>@host:port/<database>`: what a service receives."""
    parts = urlsplit(server_url)
    host = parts.hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{quote(role, safe='')}:{quote(password, safe='')}@{host}{port}"
    return urlunsplit((parts.scheme, netloc, f"/{database}", "", ""))


def database_name(owner: str, logical: str) -> str:
    """`lg_<owner>_<logical>`, lower-cased and cut to PostgreSQL's 63-byte identifier limit; the
    database's role has the same name."""
    name = re.sub(r"[^a-z0-9_]", "_", f"lg_{owner}_{logical}".lower())[:63]
    assert _NAME.match(name)
    return name


def password_of(url: str) -> str | None:
    password = urlsplit(url).password
    return unquote(password) if password else None


class Postgres:
    """An admin handle on one server. `scratch` is a directory confined code cannot see (under the
    state dir), where the PGPASSFILE of a running copy lives."""

    def __init__(self, admin_url: str, scratch: Path) -> None:
        self.admin_url = admin_url
        self.scratch = scratch

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        try:
            return psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5)
        except psycopg.Error as exc:
            raise InfrastructureError(
                f"PostgreSQL at {redact(self.admin_url)} is unreachable: {_first_line(exc)}"
            ) from None

    def create(self, name: str) -> str:
        """A fresh, empty database `name` owned by a fresh role `name` (both dropped first if a crashed
        run left them); returns the role's URL."""
        password = secrets.token_urlsafe(24)
        with self._admin() as conn:
            try:
                _create(conn, name, password)
            except psycopg.Error as exc:
                raise InfrastructureError(f"could not create database {name}: {_first_line(exc)}") from None
        return role_url(self.admin_url, name, password, name)

    def exists(self, name: str) -> bool:
        with self._admin() as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        return row is not None

    def snapshot(self, source: str, dump: Path) -> None:
        """One `pg_dump` of `source` into the file `dump`: the moment every copy restored from it shares
        (a candidate and its controls)."""
        if not self.exists(source):
            raise InfrastructureError(f"state database {source} is missing in the baseline")
        dump.parent.mkdir(parents=True, exist_ok=True)
        with self._child_env() as env:
            done = subprocess.run(
                [
                    self._tool("pg_dump"),
                    "--format=custom",
                    "--no-owner",
                    "--no-privileges",
                    f"--file={dump}",
                    f"--dbname={_without_password(database_url(self.admin_url, source))}",
                ],
                capture_output=True,
                text=True,
                timeout=600,
                env=env,
            )
        if done.returncode != 0:
            dump.unlink(missing_ok=True)
            why = done.stderr.strip() or "unknown error"
            raise InfrastructureError(
                f"could not snapshot state database {source}: {self._scrub(why.splitlines()[-1])}"
            )

    def clone(self, source: str, target: str, dump: Path | None = None) -> str:
        """Copy `source` into a new database `target`, everything in it owned by role `target`;
        returns that role's URL. With `dump` (a `snapshot` of `source`), restored from that file."""
        if dump is None and not self.exists(source):
            raise InfrastructureError(f"state database {source} is missing in the baseline")
        url = self.create(target)
        with self._child_env() as env:
            why = self._copy(source, target, env) if dump is None else self._restore(dump, target, env)
        if why is not None:
            self.drop(target, target)
            raise InfrastructureError(f"could not copy state database {source}: {why}")
        return url

    def _copy(self, source: str, target: str, env: dict[str, str]) -> str | None:
        """`pg_dump | pg_restore` as admin, the objects re-owned by `target` (`--role`); None when done."""
        dump = subprocess.Popen(
            [
                self._tool("pg_dump"),
                "--format=custom",
                "--no-owner",
                "--no-privileges",
                f"--dbname={_without_password(database_url(self.admin_url, source))}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        restore = subprocess.run(
            self._restore_argv(target),
            stdin=dump.stdout,
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert dump.stdout is not None
        dump.stdout.close()
        dump_err = (dump.communicate(timeout=60)[1] or b"").decode(errors="replace").strip()
        if dump.returncode == 0 and restore.returncode == 0:
            return None
        why = dump_err or restore.stderr.strip() or "unknown error"
        return self._scrub(why.splitlines()[-1])

    def _restore(self, dump: Path, target: str, env: dict[str, str]) -> str | None:
        restore = subprocess.run(
            [*self._restore_argv(target), str(dump)],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        if restore.returncode == 0:
            return None
        return self._scrub((restore.stderr.strip() or "unknown error").splitlines()[-1])

    def _restore_argv(self, target: str) -> list[str]:
        """`pg_restore` into `target` as admin, every object re-owned by role `target` (`--role`)."""
        return [
            self._tool("pg_restore"),
            "--no-owner",
            "--no-privileges",
            f"--role={target}",
            "--exit-on-error",
            f"--dbname={_without_password(database_url(self.admin_url, target))}",
        ]

    def _tool(self, name: str) -> str:
        """From PATH (Debian's wrapper picks the right version), else next to the server's binaries."""
        found = shutil.which(name)
        if found is not None:
            return found
        beside = find_bindir() / name  # raises naming what is missing
        if not beside.is_file():
            raise InfrastructureError(f"{name} not found: install the PostgreSQL client tools")
        return str(beside)

    @contextmanager
    def _child_env(self) -> Iterator[dict[str, str]]:
        """The environment of `pg_dump` and `pg_restore`: the admin password in a 0600 PGPASSFILE under
        `scratch`, removed when they are done; PGPASSWORD never set."""
        password = password_of(self.admin_url)
        if password is None:  # whatever the operator set up for this URL (~/.pgpass, PGPASSWORD)
            yield {**os.environ, "PGCONNECT_TIMEOUT": "10"}
            return
        env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE")}
        env["PGCONNECT_TIMEOUT"] = "10"
        self.scratch.mkdir(parents=True, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="pgpass-", dir=self.scratch)  # mkstemp makes it 0600
        try:
            # Closed exactly once, here: closing it again later could close a descriptor another
            # thread (a parallel fork's copy) has opened under the same number meanwhile.
            with os.fdopen(fd, "wb") as handle:
                user = urlsplit(self.admin_url).username or ""
                handle.write(f"*:*:*:{_pgpass_field(unquote(user))}:{_pgpass_field(password)}\n".encode())
            env["PGPASSFILE"] = path
            yield env
        finally:
            Path(path).unlink(missing_ok=True)

    def drop(self, database: str | None, role: str | None = None) -> None:
        """Drop `database`, then `role` (a role cannot go while it owns a database)."""
        with self._admin() as conn:
            try:
                _drop(conn, database, role)
            except psycopg.Error as exc:
                what = f"database {database}" if database else f"role {role}"
                raise InfrastructureError(f"could not drop {what}: {_first_line(exc)}") from None

    def _scrub(self, text: str) -> str:
        password = password_of(self.admin_url)
        return text.replace(password, "***") if password else text

    def loopgate_databases(self) -> list[str]:
        with self._admin() as conn:
            rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'lg\\_%'").fetchall()
        return sorted(str(row[0]) for row in rows)

    def password_bypass(self) -> str | None:
        """How a role could log in here without its password, or None when the server checks.

        The probe: a throwaway role with a random password (allowed to connect to the admin URL's
        database), then the role and the admin user each try to log in with a *wrong* password, over
        TCP to the URL's host, over the other loopback address and over the server's Unix sockets
        (those only when the server is on this machine). A server that checks passwords refuses all of
        them; any login that succeeds shows a `trust` rule a fork could use, whatever `pg_hba.conf`
        says for other users. A wrong password, not none, so `~/.pgpass` or PGPASSWORD cannot make a
        checking server look trusting."""
        me = ProcessRef.current()
        # Named for this process, so a later probe drops it should a kill -9 land before its `finally`.
        probe = f"lg_probe_{me.pid}_{int(me.create_time * 100)}_{secrets.token_hex(3)}"
        wrong = secrets.token_urlsafe(18)
        with self._admin() as conn:
            _drop_stale_probes(conn)
            sockets, port = _local_sockets(conn, self.admin_url)
            secret = conn.pgconn.encrypt_password(secrets.token_bytes(18).hex().encode(), probe.encode())
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(probe), sql.Literal(secret.decode())
                )
            )
            try:
                conn.execute(
                    sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                        sql.Identifier(str(conn.info.dbname)), sql.Identifier(probe)
                    )
                )
                return self._first_bypass(probe, wrong, sockets, port)
            finally:
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(probe)))
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(probe)))

    def _first_bypass(self, probe: str, wrong: str, sockets: list[str], port: int) -> str | None:
        parts = urlsplit(self.admin_url)
        hosts = [parts.hostname or "127.0.0.1"]
        if hosts[0] in _LOOPBACK:
            hosts += [h for h in ("127.0.0.1", "::1") if h != hosts[0]] + sockets
        admin = unquote(parts.username) if parts.username else None
        for user in (probe, admin or "postgres"):
            for host in hosts:
                if _logs_in(host, port, user, wrong, parts.path.lstrip("/") or "postgres"):
                    who = "a new role" if user == probe else f"{user}"
                    return f"{who} logged in over {host} with a wrong password"
        return None


def _create(conn: psycopg.Connection[tuple[object, ...]], name: str, password: str) -> None:
    """Role `name` and database `name`, owned by it, which PUBLIC may not connect to."""
    _drop(conn, name, name)  # what a crashed run left
    verifier = conn.pgconn.encrypt_password(password.encode(), name.encode(), b"scram-sha-256")
    role = sql.Identifier(name)
    # A SCRAM verifier, not the password, goes to the server: nothing readable lands in its log.
    create = sql.SQL("CREATE ROLE {} " + _ROLE_OPTIONS + " PASSWORD {}")
    conn.execute(create.format(role, sql.Literal(verifier.decode())))
    conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(role, role))
    conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(role))


def _drop(conn: psycopg.Connection[tuple[object, ...]], database: str | None, role: str | None) -> None:
    if database is not None:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
    if role is not None:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if exists is None:
            return
        # Its sessions elsewhere (a temp table in `postgres`) would keep the role alive.
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _drop_stale_probes(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Throwaway probe roles whose process is gone (killed mid-probe); older unnamed ones too."""
    rows = conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'lg\\_probe\\_%'").fetchall()
    for (name,) in rows:
        match = re.fullmatch(r"lg_probe_(\d+)_(\d+)_[0-9a-f]+", str(name))
        if match and ProcessRef(pid=int(match[1]), create_time=int(match[2]) / 100).alive():
            continue
        with suppress(psycopg.Error):
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(str(name))))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(str(name))))


def _local_sockets(conn: psycopg.Connection[tuple[object, ...]], url: str) -> tuple[list[str], int]:
    port_row = conn.execute("SHOW port").fetchone()
    dirs_row = conn.execute("SHOW unix_socket_directories").fetchone()
    port = int(str(port_row[0])) if port_row else (urlsplit(url).port or 5432)
    dirs = [d.strip() for d in str(dirs_row[0] if dirs_row else "").split(",") if d.strip()]
    return [d for d in dirs if d.startswith("/") and os.path.isdir(d)], port


def _logs_in(host: str, port: int, user: str, password: str, database: str) -> bool:
    try:
        with psycopg.connect(
            host=host, port=port, user=user, password=password, dbname=database, connect_timeout=3
        ):
            return True
    except psycopg.Error:
        return False


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit((parts.scheme, f"{user}{host}", parts.path, parts.query, parts.fragment))


def _pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def redact(url: str) -> str:
    """The URL without its password (and query), for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
