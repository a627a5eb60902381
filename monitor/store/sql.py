"""Small SQL helpers shared by the repository modules: idempotent inserts, transactions."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Connection, Engine, Table, any_, bindparam
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


def insert_ignoring_conflicts(table: Table, dialect: str) -> Insert:
    """INSERT ... ON CONFLICT DO NOTHING: the idempotent write of a natural-keyed row."""
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


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
    """Run read-only `work` on one connection (one snapshot on PostgreSQL)."""
    return _run(engine, work)


def _run(engine: Engine, work: Callable[[Connection], T], *, autocommit: bool = False) -> T:
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with engine.connect() as connection:
                if autocommit:  # until the connection goes back to the pool
                    connection.execution_options(isolation_level="AUTOCOMMIT")
                with connection.begin():
                    return work(connection)
        except DBAPIError as exc:
            if attempt < ATTEMPTS and exc.connection_invalidated:
                log.info("database connection lost (%s), retrying", _describe(exc))
                continue
            if attempt < ATTEMPTS and _sqlstate(exc) in _RETRYABLE_SQLSTATES:
                log.info("transaction aborted by the database (%s), retrying", _sqlstate(exc))
                continue
            raise StoreError(f"database error: {_describe(exc)}") from exc
    raise AssertionError("unreachable")


def _sqlstate(exc: DBAPIError) -> str | None:
    state = getattr(exc.orig, "sqlstate", None)
    return state if isinstance(state, str) else None


def _describe(exc: DBAPIError) -> str:
    first_line = str(exc.orig).strip().splitlines()
    return first_line[0] if first_line else type(exc.orig).__name__
