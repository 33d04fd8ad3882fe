"""Schema migrations, applied by `Store.open` before anything else touches the database.

Alembic runs from a Config built here, so no `alembic.ini` ships or is read at run time. The
revisions live in `bot/store/migrations/versions/`, numbered `0001`, `0002`, … in file name and
revision id alike, and are frozen once released: a revision never imports the models.

Making a new revision after changing `bot/store/models.py`:

    rm -f /tmp/lg.db
    .venv/bin/python -c 'from bot.store import Store; Store.open("sqlite:////tmp/lg.db").close()'
    .venv/bin/python -c 'from alembic import command; from bot.store.migrate import alembic_config; \\
        command.revision(alembic_config("sqlite:////tmp/lg.db"), message="add runs.foo", \\
                         autogenerate=True, rev_id="0002")'
    .venv/bin/ruff check --fix bot/store/migrations

The first command brings a scratch database to head; autogenerate then writes the difference between
it and the models into `versions/0002_add_runs_foo.py`. Read it before committing: autogenerate misses
renames and server defaults, and a partial index's WHERE clause must be given for both dialects
(`sqlite_where`, `postgresql_where`). `tests/test_store.py` checks that the migrated schema and the
models agree on both backends.

To use the `alembic` command line instead, the equivalent of an `alembic.ini` is:

    [alembic]
    script_location = bot/store/migrations
    sqlalchemy.url = sqlite:////tmp/lg.db

(`env.py` sets the version table, `loopgate_alembic_version`, so a shared database stays unambiguous.)
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine, text

from bot.store.database import WRITE_OPTION, normalise

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "loopgate_alembic_version"
# pg_advisory_xact_lock key: replicas starting together migrate one after the other.
_LOCK_KEY = 0x6C6F6F70_67617465  # "loopgate"


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    # ConfigParser interpolates `%`; a path or a URL may contain one.
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    if url is not None:
        rendered = normalise(url).render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def upgrade(engine: Engine) -> None:
    """Bring the schema to head in one transaction; at head already, this only reads the version.

    Concurrent starts are serialised: on PostgreSQL by a transaction-scoped advisory lock (its DDL is
    transactional, so a second process waits, then finds head), on SQLite by the write lock that
    BEGIN IMMEDIATE takes.
    """
    with engine.execution_options(**{WRITE_OPTION: True}).begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def current(connection: Connection) -> str | None:
    """The revision the database is at, None before the first migration."""
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()
