"""PostgreSQL state for the local runtime: a database per baseline, a consistent copy per fork.

The copy is `pg_dump | pg_restore` from the baseline's live database: `CREATE DATABASE … TEMPLATE`
would fail while the baseline service holds connections, and a dump is taken from one snapshot, so the
fork sees a consistent state whatever the baseline is writing at that moment.
"""

from __future__ import annotations

import re
import subprocess
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from bot.config import InfrastructureError

_NAME = re.compile(r"^[a-z0-9_]{1,63}$")


def database_url(server_url: str, database: str) -> str:
    """The server URL with its database swapped, which is what the service receives."""
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def database_name(owner: str, logical: str) -> str:
    """`lg_<owner>_<logical>`, lower-cased and cut to PostgreSQL's 63-byte identifier limit."""
    name = re.sub(r"[^a-z0-9_]", "_", f"lg_{owner}_{logical}".lower())[:63]
    assert _NAME.match(name)
    return name


class Postgres:
    def __init__(self, server_url: str) -> None:
        self.server_url = server_url

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        try:
            return psycopg.connect(self.server_url, autocommit=True, connect_timeout=5)
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InfrastructureError(
                f"PostgreSQL at {_redact(self.server_url)} is unreachable: {first}"
            ) from None

    def create(self, name: str) -> str:
        """A fresh, empty database (dropped first if a crashed run left one); returns its URL."""
        with self._admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return database_url(self.server_url, name)

    def exists(self, name: str) -> bool:
        with self._admin() as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        return row is not None

    def clone(self, source: str, target: str) -> str:
        """Copy `source` into a new database `target`; returns the target's URL."""
        if not self.exists(source):
            raise InfrastructureError(f"state database {source} is missing in the baseline")
        url = self.create(target)
        dump = subprocess.Popen(
            [
                "pg_dump",
                "--format=custom",
                "--no-owner",
                "--no-privileges",
                database_url(self.server_url, source),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        restore = subprocess.run(
            ["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", "--dbname", url],
            stdin=dump.stdout,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert dump.stdout is not None
        dump.stdout.close()
        dump_err = (dump.communicate(timeout=60)[1] or b"").decode(errors="replace").strip()
        if dump.returncode != 0 or restore.returncode != 0:
            self.drop(target)
            why = dump_err or restore.stderr.strip() or "unknown error"
            raise InfrastructureError(f"could not copy state database {source}: {why.splitlines()[-1]}")
        return url

    def drop(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _redact(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
