"""Schema migrations: Alembic, run programmatically on an open Database or from alembic.ini.

Both paths go through `migration_connection`: on PostgreSQL the whole upgrade runs in one
transaction under an advisory lock, so replicas starting together migrate once and the others
find the schema at head; on SQLite foreign keys are off while tables are rebuilt (batch mode)
and checked before commit.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, func, select, text

import monitor
from monitor.errors import SchemaTooNew, StoreError
from monitor.store import partitions
from monitor.store.engine import Database
from monitor.store.tables import metadata

ALEMBIC_DIR = Path(monitor.__file__).resolve().parent.parent / "alembic"
# Any 64-bit number unique within this schema; "migrate" in ASCII.
MIGRATION_LOCK_KEY = 0x6D69677261746500
URL_ENV = "MONITOR_DATABASE_URL"
READ_ONLY_COMMANDS = frozenset({"check", "current", "history", "heads", "branches", "show"})


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def context_options(dialect: str) -> dict[str, Any]:
    """What env.py passes to `context.configure` besides the connection and metadata."""
    return {
        "compare_type": True,
        "render_as_batch": dialect == "sqlite",
        "include_name": _described_by_metadata,
    }


def _described_by_metadata(name: str | None, type_: str, _parents: Any) -> bool:
    """PostgreSQL's monthly partitions are the tables' storage, not tables of the schema."""
    return not (type_ == "table" and name is not None and partitions.is_partition(name))


@contextlib.contextmanager
def migration_connection(database: Database) -> Iterator[Connection]:
    """A connection in a transaction that migrations may run in, for `database`."""
    with database.engine.connect() as connection:
        sqlite_writer = database.dialect == "sqlite" and database.writer
        if sqlite_writer:
            # Only settable outside a transaction: talk to the driver before SQLAlchemy begins.
            connection.connection.driver_connection.execute("PRAGMA foreign_keys = OFF")  # type: ignore[union-attr]
        try:
            with connection.begin():
                if database.dialect == "postgresql":
                    # DDL on a big table may outlast the service's statement timeout.
                    connection.execute(text("SET LOCAL statement_timeout = 0"))
                    connection.execute(text("SET LOCAL lock_timeout = '5min'"))
                    connection.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
                yield connection
                if sqlite_writer:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise StoreError(f"migration broke foreign keys: {broken[:5]}")
        finally:
            if sqlite_writer:
                connection.connection.driver_connection.execute("PRAGMA foreign_keys = ON")  # type: ignore[union-attr]


def upgrade(database: Database, revision: str = "head") -> None:
    """Bring the schema to `revision` (default: the newest). Safe from several processes.
    Raises SchemaTooNew when a newer version of the code migrated the database."""
    _require_writer(database)
    with migration_connection(database) as connection:
        _require_known_revision(connection)
        command.upgrade(alembic_config(connection), revision)


def _require_known_revision(connection: Connection) -> None:
    current = MigrationContext.configure(connection).get_current_revision()
    scripts = ScriptDirectory.from_config(alembic_config())
    if current is not None and current not in {
        script.revision for script in scripts.walk_revisions()
    }:
        raise SchemaTooNew(
            f"the database schema is at revision {current}, which this version "
            f"({monitor.__version__}, schema {scripts.get_current_head()}) does not know: "
            "a newer app-rank-monitor migrated it; run that version (or newer)"
        )


def downgrade(database: Database, revision: str) -> None:
    """Take the schema back to `revision` ("base" drops everything)."""
    _require_writer(database)
    with migration_connection(database) as connection:
        command.downgrade(alembic_config(connection), revision)


def current_revision(database: Database) -> str | None:
    with database.engine.connect() as connection:
        revision: str | None = MigrationContext.configure(connection).get_current_revision()
        return revision


def head_revision() -> str | None:
    head: str | None = ScriptDirectory.from_config(alembic_config()).get_current_head()
    return head


def check_drift(database: Database) -> list[str]:
    """Differences between the database schema and the table metadata (`alembic check`).

    Empty when the database is at the head revision and matches the code.
    """
    with database.engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={"target_metadata": metadata, **context_options(database.dialect)},
        )
        problems: list[str] = []
        current, head = context.get_current_revision(), head_revision()
        if current != head:
            problems.append(f"database is at revision {current}, the code at {head}")
        problems.extend(_describe(diff) for diff in compare_metadata(context, metadata))
        return problems


def configured_url(config: Config) -> str:
    """The URL for command-line Alembic: `-x url=...`, else the service settings."""
    explicit = config.get_main_option("sqlalchemy.url") or _x_argument(config, "url")
    if explicit:
        return explicit
    try:
        from monitor.config import load_settings  # noqa: PLC0415 - settings only for the CLI
    except ImportError:
        url = os.environ.get(URL_ENV)
        if not url:
            raise StoreError(f"no database URL: set {URL_ENV} or pass -x url=...") from None
        return url
    config_file = os.environ.get("MONITOR_CONFIG")
    settings = load_settings(Path(config_file) if config_file else None)
    return settings.database.url


def is_read_only(config: Config) -> bool:
    cmd = getattr(config.cmd_opts, "cmd", None)
    name = getattr(cmd[0], "__name__", "") if cmd else ""
    return name in READ_ONLY_COMMANDS


def _x_argument(config: Config, key: str) -> str | None:
    items: list[str] = getattr(config.cmd_opts, "x", None) or []
    for item in items:
        name, _, value = item.partition("=")
        if name == key:
            return value
    return None


def _require_writer(database: Database) -> None:
    if not database.writer:
        raise StoreError("migrations need the database opened as a writer")


def _describe(diff: Any) -> str:
    if isinstance(diff, list):
        return "; ".join(_describe(item) for item in diff)
    kind, *rest = diff
    return f"{kind}: " + ", ".join(str(part) for part in rest)
