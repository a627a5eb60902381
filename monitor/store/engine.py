"""Opening the database: engine setup per backend and the one-writer rule for SQLite.

SQLite: WAL (readers never block the writer nor the reverse), synchronous=NORMAL (durable at
checkpoints, fast commits), a 5 s busy timeout, foreign keys on, and every transaction of a
writer opened with BEGIN IMMEDIATE so that two writers queue at BEGIN instead of failing with
"database is locked" when a read transaction tries to upgrade. One writer process per file,
enforced by an OS lock on `<file>.lock` (released by the kernel if the process dies). A
command that changes a few rows of its own (silences) writes beside it without that lock
(`exclusive=False`): SQLite's lock makes its one transaction take turns with the writer's.
Readers run with `query_only` so a read-only command can never write beside the writer.

PostgreSQL: psycopg 3, connections that survive a server restart, UTC sessions and
statement/lock timeouts so a stuck lock surfaces as an error instead of a hung poll, TCP
timeouts so that a server the network lost does too; readers' transactions are read-only. A
pooled connection is pinged before use only after an idle spell (between poll rounds, when a
restart would go unnoticed): pinging every checkout costs a round trip per transaction, and a
busy connection the server dropped fails its transaction, which sql.in_transaction runs again
on a fresh one. Several writers may share a PostgreSQL database (replicas): the poll leases
keep them apart.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError

from monitor.errors import DatabaseLocked, StoreError
from monitor.store.sql import SNAPSHOT_READ

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 5_000
SQLITE_INCREMENTAL_VACUUM = 2  # PRAGMA auto_vacuum's value for INCREMENTAL
POSTGRES_STATEMENT_TIMEOUT_MS = 60_000
POSTGRES_LOCK_TIMEOUT_MS = 10_000
POSTGRES_POOL_SIZE = 4
POSTGRES_PING_AFTER_IDLE_S = 10.0
POSTGRES_CONNECT_TIMEOUT_S = 10
# A server that stops acknowledging what was sent (a network partition, a host gone) is given
# up after this long, instead of after the kernel's retransmissions (a quarter of an hour):
# the statement fails with a lost connection and its transaction is run again. Keepalive
# probes do the same for a connection waiting for an answer. Neither limits a slow statement,
# whose server acknowledges; statement_timeout does that.
POSTGRES_TCP_USER_TIMEOUT_MS = 10_000
POSTGRES_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2}
_IDLE_SINCE = "monitor_idle_since"
_POSTGRES_DRIVERS = {"postgres", "postgresql", "postgresql+psycopg"}


class Database:
    """An open database: the engine, and for a SQLite writer the file lock. Close it."""

    def __init__(self, engine: Engine, *, writer: bool, lock: _WriterLock | None) -> None:
        self.engine = engine
        self.writer = writer
        self._lock = lock

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self.engine.dialect.name

    @property
    def display_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        role = "writer" if self.writer else "reader"
        return f"<Database {self.display_url} {role}>"


def open_database(url: str, *, writer: bool, exclusive: bool = True) -> Database:
    """Open a SQLite file or a PostgreSQL database; raises DatabaseLocked or StoreError.
    `exclusive`: a SQLite writer is the file's one writer process (not for a command that
    writes rows no writer caches, beside a running service)."""
    parsed = _parse(url)
    if parsed.get_backend_name() == "sqlite":
        return _open_sqlite(parsed, writer=writer, exclusive=exclusive)
    return _open_postgres(parsed, writer=writer)


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        raise StoreError(f"invalid database URL: {exc}") from None
    if parsed.drivername in _POSTGRES_DRIVERS:
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite"):
        raise StoreError(
            f"unsupported database {parsed.drivername!r}: use sqlite:///path or postgresql://..."
        )
    return parsed


def _open_sqlite(url: URL, *, writer: bool, exclusive: bool) -> Database:
    if not url.database or url.database == ":memory:" or url.query.get("mode") == "memory":
        raise StoreError("an in-memory SQLite database is not supported: give a file path")
    path = Path(url.database).expanduser().absolute()
    lock: _WriterLock | None = None
    if writer and exclusive:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = _WriterLock.acquire(path)
    elif not path.exists():
        raise StoreError(f"no database at {path}: run `app-rank-monitor migrate` first")
    try:
        engine = create_engine(
            url.set(database=str(path)),
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    _configure_sqlite(engine, writer=writer)
    return Database(engine, writer=writer, lock=lock)


def _configure_sqlite(engine: Engine, *, writer: bool) -> None:
    begin = "BEGIN IMMEDIATE" if writer else "BEGIN"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The pysqlite recipe: the driver emits no BEGIN of its own, the "begin" hook does.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA synchronous = NORMAL")
            if writer:
                # In a new file only (it applies before the first table, and setting it
                # later would wait for the write lock): retention then frees pages in place.
                if cursor.execute("PRAGMA page_count").fetchone()[0] == 0:
                    cursor.execute(f"PRAGMA auto_vacuum = {SQLITE_INCREMENTAL_VACUUM}")
                cursor.execute("PRAGMA journal_mode = WAL")
            else:
                cursor.execute("PRAGMA query_only = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        snapshot_read = connection.get_execution_options().get(SNAPSHOT_READ, False)
        connection.exec_driver_sql("BEGIN" if snapshot_read else begin)


def give_back_free_pages(engine: Engine) -> int:
    """SQLite: return the file's free pages (rows deleted) to the file system; returns the
    bytes the file shrank by.

    A file made by this version is in incremental auto-vacuum mode (_configure_sqlite), which
    frees pages in place; an older one is converted by one VACUUM, which rewrites the file
    (and needs as much free disk again) once.
    """
    # The driver's own connection, outside any transaction (VACUUM cannot run in one, and
    # the begin hook would open one).
    connection = engine.raw_connection()
    try:

        def pragma(statement: str) -> int:
            row = connection.cursor().execute(statement).fetchone()
            return int(row[0]) if row else 0

        if not pragma("PRAGMA freelist_count"):
            return 0
        page_size, before = pragma("PRAGMA page_size"), pragma("PRAGMA page_count")
        if pragma("PRAGMA auto_vacuum") == SQLITE_INCREMENTAL_VACUUM:
            connection.cursor().execute("PRAGMA incremental_vacuum").fetchall()
        else:
            log.info("converting the SQLite file to incremental auto-vacuum (one VACUUM)")
            connection.cursor().execute(f"PRAGMA auto_vacuum = {SQLITE_INCREMENTAL_VACUUM}")
            connection.cursor().execute("VACUUM")
        pragma("PRAGMA wal_checkpoint(TRUNCATE)")
        return (before - pragma("PRAGMA page_count")) * page_size
    finally:
        connection.close()


def _open_postgres(url: URL, *, writer: bool) -> Database:
    options = (
        f"-c TimeZone=UTC -c statement_timeout={POSTGRES_STATEMENT_TIMEOUT_MS}"
        f" -c lock_timeout={POSTGRES_LOCK_TIMEOUT_MS}"
    )
    if not writer:  # the same promise as SQLite's query_only: a read command never writes
        options += " -c default_transaction_read_only=on"
    engine = create_engine(
        url,
        pool_size=POSTGRES_POOL_SIZE,
        max_overflow=POSTGRES_POOL_SIZE,
        pool_recycle=1800,
        connect_args={
            "options": options,
            "connect_timeout": POSTGRES_CONNECT_TIMEOUT_S,
            "tcp_user_timeout": POSTGRES_TCP_USER_TIMEOUT_MS,
            **POSTGRES_KEEPALIVES,
            "application_name": "app-rank-monitor" if writer else "app-rank-monitor (read)",
        },
    )
    _ping_when_idle(engine)
    return Database(engine, writer=writer, lock=None)


def _ping_when_idle(engine: Engine) -> None:
    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is None or time.monotonic() - idle_since < POSTGRES_PING_AFTER_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            # The pool's cue to discard this connection and check out a fresh one.
            raise DisconnectionError(f"pooled connection lost: {exc}") from exc


class _WriterLock:
    """An exclusive flock on `<db file>.lock`, holding the owner's pid for the error message."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = path
        self._handle: IO[str] | None = handle

    @classmethod
    def acquire(cls, database_path: Path) -> _WriterLock:
        path = database_path.with_name(database_path.name + ".lock")
        handle = path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise DatabaseLocked(
                f"{database_path} is already used by another writer (pid {holder}). "
                "Stop that process, or use read-only commands (history, chart, apps) or "
                "`silence` beside it."
            ) from None
        except BaseException:
            handle.close()
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return cls(path, handle)

    def release(self) -> None:
        if self._handle is None:
            return
        # The file stays: unlinking it would let a second writer lock a fresh inode while a
        # third still holds the old one.
        with contextlib.suppress(OSError):
            self._handle.seek(0)
            self._handle.truncate()
        fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None
