"""Small SQL helpers shared by the repository modules: idempotent inserts, transactions."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Table,
    Text,
    any_,
    bindparam,
    cast,
    column,
    func,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from monitor.errors import StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Deadlock and serialization failure: PostgreSQL aborted one of two transactions that waited
# on each other (two workers upserting overlapping app sets). The bodies are idempotent, so
# running the loser again is correct; so is running again one whose connection was lost.
_RETRYABLE_SQLSTATES = {"40P01", "40001"}
ATTEMPTS = 3

Insert = postgresql.Insert | sqlite.Insert
DIALECTS = ("sqlite", "postgresql")


def per_dialect(build: Callable[[str], T]) -> dict[str, T]:
    """A statement built once per backend at import: the hot paths then only bind parameters,
    paying neither statement construction nor cache-key generation on every call."""
    return {dialect: build(dialect) for dialect in DIALECTS}


def among(column: ColumnElement[Any], name: str, dialect: str) -> ColumnElement[bool]:
    """`column IN values`, the values bound at execution as `name`; on PostgreSQL as
    `= ANY(array)`, one parameter instead of one per value, so the statement text (and
    psycopg's prepared statement) is the same every time."""
    if dialect == "postgresql":
        return column == any_(bindparam(name, type_=postgresql.ARRAY(column.type)))
    return column.in_(bindparam(name, expanding=True))


def json_rows(dialect: str, *columns: ColumnElement[Any]) -> ColumnElement[Any]:
    """An aggregate of the rows' `columns` as one JSON array of arrays, as text: a read of
    many small rows in one row. On SQLite that is one step of the statement instead of one
    per row, and each step gives up the GIL, which a busy thread may then hold for up to its
    switch interval."""
    if dialect == "postgresql":
        return cast(func.json_agg(func.json_build_array(*columns)), Text)
    return func.json_group_array(func.json_array(*columns))


def json_recordset(name: str, *columns: ColumnElement[Any]) -> Any:
    """PostgreSQL: `json_to_recordset(:name) AS name(column type, ...)`, the rows of the JSON
    parameter `name` (a list of objects, see json_ready) with the names and types of
    `columns`: many rows in one parameter, for one statement that writes them all."""
    return (
        func.json_to_recordset(bindparam(name, type_=postgresql.JSON))
        .table_valued(*(column(c.name, c.type) for c in columns))
        .render_derived(name=name, with_types=True)
    )


def json_ready(row: dict[str, Any]) -> dict[str, Any]:
    """A row to pass in a JSON parameter (PostgreSQL's json_to_recordset): times as ISO text,
    bytes in bytea's hex input form."""
    return {name: _json_value(value) for name, value in row.items()}


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    return value


def insert_ignoring_conflicts(table: Table, dialect: str) -> Insert:
    """INSERT ... ON CONFLICT DO NOTHING: the idempotent write of a natural-keyed row."""
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


# Execution option read by SQLite's begin hook (engine.py): a read transaction starts with a
# plain BEGIN, not the writer's BEGIN IMMEDIATE, so it takes no write lock (WAL gives it its
# own snapshot). PostgreSQL's default READ COMMITTED would give each statement its own one.
SNAPSHOT_READ = "app_rank_monitor_snapshot_read"
_SNAPSHOT_READ_OPTIONS: dict[str, dict[str, Any]] = {
    "sqlite": {SNAPSHOT_READ: True},
    "postgresql": {"isolation_level": "REPEATABLE READ"},
}


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Driver errors of work that does not go through `in_transaction` (migrations) as
    StoreError: what callers outside store/ can catch."""
    try:
        yield
    except DBAPIError as exc:
        raise StoreError(f"database error: {_describe(exc)}") from exc


def in_transaction(engine: Engine, work: Callable[[Connection], T]) -> T:
    """Run `work` in one transaction, retried on a deadlock or on a connection the server had
    dropped (engine.py pings only idle ones); driver errors become StoreError."""
    return _run(engine, work)


def in_autocommit(engine: Engine, work: Callable[[Connection], T]) -> T:
    """Run `work`, whose one write is a single statement (atomic by itself), outside a
    transaction: one round trip instead of three (BEGIN, the statement, COMMIT), retried like
    `in_transaction`. PostgreSQL only: a SQLite writer's transactions must take the write lock
    at BEGIN (engine.py)."""
    return _run(engine, work, autocommit=True)


def reading(engine: Engine, work: Callable[[Connection], T]) -> T:
    """Run read-only `work` in one transaction that sees one snapshot of the database
    throughout and never waits for a writer."""
    return _run(engine, work, snapshot_read=True)


def _run(
    engine: Engine,
    work: Callable[[Connection], T],
    *,
    autocommit: bool = False,
    snapshot_read: bool = False,
) -> T:
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with engine.connect() as connection:
                # Options last until the connection goes back to the pool.
                if autocommit:
                    connection.execution_options(isolation_level="AUTOCOMMIT")
                elif snapshot_read:
                    connection.execution_options(**_SNAPSHOT_READ_OPTIONS[engine.dialect.name])
                with connection.begin():
                    return work(connection)
        except DBAPIError as exc:
            if attempt < ATTEMPTS and exc.connection_invalidated:
                log.info("database connection lost (%s), retrying", _describe(exc))
                continue
            if attempt < ATTEMPTS and sqlstate(exc) in _RETRYABLE_SQLSTATES:
                log.info("transaction aborted by the database (%s), retrying", sqlstate(exc))
                continue
            raise StoreError(f"database error: {_describe(exc)}") from exc
    raise AssertionError("unreachable")


def sqlstate(exc: BaseException | None) -> str | None:
    """The SQLSTATE of a driver error, if it has one."""
    state = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return state if isinstance(state, str) else None


def _describe(exc: DBAPIError) -> str:
    first_line = str(exc.orig).strip().splitlines()
    return first_line[0] if first_line else type(exc.orig).__name__
