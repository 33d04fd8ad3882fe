"""Database URLs and engines: which backend, how it is tuned, and how its failures read.

Two backends are supported. SQLite (the default, one file under `LOOPGATE_STATE_DIR`) suits one
machine: several processes share the file in WAL mode, so readers never block the writer, and a busy
timeout makes writers queue instead of failing. PostgreSQL (`postgresql://…`) suits replicas.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.pool import ConnectionPoolEntry

from bot.config import InfrastructureError

SQLITE_FILE = "loopgate.db"
BUSY_TIMEOUT_MS = 30_000
CONNECT_TIMEOUT_S = 5

# An execution option a Store sets on the engine it writes through: on SQLite such a transaction
# starts with BEGIN IMMEDIATE (see `_begin`), everything else with a plain deferred BEGIN.
WRITE_OPTION = "loopgate_write"


def default_url(state_dir: Path) -> str:
    return URL.create("sqlite", database=str(state_dir / SQLITE_FILE)).render_as_string()


def normalise(url: str) -> URL:
    """The URL SQLAlchemy should use: plain `postgresql://` (or `postgres://`) gets psycopg 3."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InfrastructureError(f"database URL {redact(url)!r} is not a URL") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise InfrastructureError(
            f"database URL {redact(url)} is neither sqlite:/// nor postgresql://; loopgate supports those two"
        )
    return parsed


def redact(url: str | URL) -> str:
    """The URL as it may appear in a message or a log: the password replaced by `***`."""
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
    except ArgumentError:
        return "<unparseable URL>"
    return parsed.render_as_string(hide_password=True)


def create(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            try:
                Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InfrastructureError(
                    f"database {redact(url)}: cannot make its directory: {exc.strerror}"
                ) from exc
        engine = create_engine(url)
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _begin)
        return engine
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT_S})


def _sqlite_connect(dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
    # The sqlite3 module's own transaction handling begins lazily, only before DML, so a SELECT
    # followed by an UPDATE would not be one transaction. Switch it off; `_begin` emits BEGIN.
    dbapi_connection.isolation_level = None
    dbapi_connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    dbapi_connection.execute("PRAGMA journal_mode = WAL")
    dbapi_connection.execute("PRAGMA foreign_keys = ON")


def _begin(connection: Connection) -> None:
    # A deferred transaction that reads and then writes must upgrade its lock; when another
    # connection committed in between, SQLite fails the upgrade at once (SQLITE_BUSY_SNAPSHOT),
    # the busy timeout notwithstanding. Writers take the write lock up front instead and queue.
    immediate = connection.get_execution_options().get(WRITE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def infrastructure_error(exc: DBAPIError, url: URL, doing: str) -> InfrastructureError:
    """One line naming the redacted URL and the driver's own first line, password scrubbed."""
    cause = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
    if url.password:
        cause = cause.replace(str(url.password), "***")
    return InfrastructureError(f"database {redact(url)}: {doing} failed: {cause}")


@contextmanager
def translated(url: URL, doing: str) -> Iterator[None]:
    """Failures of the database itself (unreachable, locked, gone) become InfrastructureError.

    Integrity and programming errors are loopgate's bugs and propagate as they are.
    """
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        raise infrastructure_error(exc, url, doing) from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise infrastructure_error(exc, url, doing) from exc
        raise
