"""Opening databases: SQLite's one-writer rule and pragmas, PostgreSQL session settings."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from monitor.errors import DatabaseLocked, StoreError
from monitor.store.engine import open_database
from monitor.store.migrate import upgrade
from monitor.store.repository import Repository

from .conftest import T0, US_FREE

HOLD_WRITER = textwrap.dedent(
    """
    import sys
    from monitor.store.engine import open_database
    with open_database(sys.argv[1], writer=True):
        print("holding", flush=True)
        sys.stdin.read()
    """
)


@pytest.fixture
def writer_process(sqlite_url: str) -> Iterator[int]:
    """Another process holding the SQLite file as its writer; yields its pid."""
    with open_database(sqlite_url, writer=True) as database:
        upgrade(database)
        Repository(database).sync_charts([US_FREE], now=T0)
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITER, sqlite_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        assert process.stdin is not None
        assert process.stdout.readline().strip() == "holding"
        try:
            yield process.pid
        finally:
            process.stdin.close()
            process.wait(timeout=10)


def test_second_sqlite_writer_is_refused_with_the_holders_pid(
    sqlite_url: str, writer_process: int
) -> None:
    with pytest.raises(DatabaseLocked) as refused:
        open_database(sqlite_url, writer=True)

    message = str(refused.value)
    assert f"is already used by another writer (pid {writer_process})" in message
    assert "use read-only commands (history, chart, apps) beside it" in message


def test_reader_works_beside_a_running_writer(sqlite_url: str, writer_process: int) -> None:
    with open_database(sqlite_url, writer=False) as database:
        status = Repository(database).schedule_status(now=T0)

    assert status.enabled == 1


def test_writer_lock_is_released_on_close(sqlite_url: str) -> None:
    with open_database(sqlite_url, writer=True):
        pass

    with open_database(sqlite_url, writer=True) as again:
        assert again.writer


def test_sqlite_writer_creates_the_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "data" / "nested" / "monitor.sqlite3"

    with open_database(f"sqlite:///{path}", writer=True) as database:
        upgrade(database)

    assert path.exists()


def test_sqlite_connections_are_set_up_for_a_long_running_service(sqlite_url: str) -> None:
    with open_database(sqlite_url, writer=True) as database, database.engine.connect() as conn:
        settings = {
            name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        }

    assert settings == {
        "journal_mode": "wal",
        "synchronous": 1,  # NORMAL
        "foreign_keys": 1,
        "busy_timeout": 5000,
    }


def test_sqlite_writer_transactions_take_the_write_lock_at_begin(sqlite_url: str) -> None:
    with (
        open_database(sqlite_url, writer=True) as database,
        database.engine.connect() as first,
        database.engine.connect() as second,
    ):
        for connection in (first, second):  # fail at once instead of after 5 s
            connection.connection.driver_connection.execute("PRAGMA busy_timeout = 0")  # type: ignore[union-attr]
        with first.begin():
            first.exec_driver_sql("SELECT 1")  # only a read, yet the write lock is held
            with pytest.raises(OperationalError, match="database is locked"):
                second.begin()


def test_sqlite_reader_cannot_write(sqlite_url: str) -> None:
    with open_database(sqlite_url, writer=True) as database:
        upgrade(database)

    with (
        open_database(sqlite_url, writer=False) as reader,
        pytest.raises(StoreError, match=r"attempt to write a readonly database"),
    ):
        Repository(reader).sync_charts([US_FREE], now=T0)


def test_reading_a_missing_sqlite_file_says_to_migrate_first(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="migrate"):
        open_database(f"sqlite:///{tmp_path / 'absent.sqlite3'}", writer=False)

    assert not (tmp_path / "absent.sqlite3").exists()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "mysql://localhost/x"])
def test_unsupported_urls_are_refused(url: str) -> None:
    with pytest.raises(StoreError):
        open_database(url, writer=True)


@pytest.mark.postgres
def test_postgres_sessions_run_in_utc_with_timeouts(postgres_url: str) -> None:
    plain_url = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with open_database(plain_url, writer=True) as database, database.engine.connect() as conn:
        settings = {
            name: conn.execute(text(f"SHOW {name}")).scalar()
            for name in ("TimeZone", "statement_timeout", "lock_timeout")
        }

    assert database.engine.url.drivername == "postgresql+psycopg"
    assert settings == {"TimeZone": "UTC", "statement_timeout": "1min", "lock_timeout": "10s"}


@pytest.mark.postgres
def test_postgres_readers_cannot_write(postgres_url: str) -> None:
    with open_database(postgres_url, writer=True) as database:
        upgrade(database)

    with (
        open_database(postgres_url, writer=False) as reader,
        pytest.raises(StoreError, match="read-only transaction"),
    ):
        Repository(reader).sync_charts([US_FREE], now=T0)
