"""Opening databases: SQLite's one-writer rule and pragmas, PostgreSQL session settings."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from monitor.alerts.policy import Silence
from monitor.errors import DatabaseLocked, StoreError
from monitor.store import engine
from monitor.store.engine import open_database
from monitor.store.migrate import upgrade
from monitor.store.repository import Repository

from .conftest import HOUR, T0, US_FREE

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
    assert "use read-only commands (history, chart, apps) or `silence` beside it" in message


def test_reader_works_beside_a_running_writer(sqlite_url: str, writer_process: int) -> None:
    with open_database(sqlite_url, writer=False) as database:
        status = Repository(database).schedule_status(now=T0)

    assert status.enabled == 1


def test_a_writer_of_a_few_rows_takes_turns_with_a_running_writer(
    sqlite_url: str, writer_process: int
) -> None:
    with open_database(sqlite_url, writer=True, exclusive=False) as database:
        silence_id = Repository(database).add_silence(Silence(until=T0 + HOUR), now=T0)

    with open_database(sqlite_url, writer=False) as database:
        assert [s.id for s in Repository(database).silences(active_at=T0)] == [silence_id]


def test_a_writer_of_a_few_rows_does_not_create_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="migrate"):
        open_database(f"sqlite:///{tmp_path / 'absent.sqlite3'}", writer=True, exclusive=False)

    assert not (tmp_path / "absent.sqlite3").exists()


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


def _drop_connections(postgres_url: str) -> None:
    """What a server restart or failover does to every pooled connection."""
    libpq = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


def _lost_connections(caplog: pytest.LogCaptureFixture) -> int:
    return sum("connection lost" in record.getMessage() for record in caplog.records)


@pytest.mark.postgres
def test_work_on_a_connection_the_server_dropped_is_done_on_a_fresh_one(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with open_database(postgres_url, writer=True) as database:
        upgrade(database)
        repository = Repository(database)
        repository.sync_charts([US_FREE], now=T0)  # its connection is pooled, and busy
        caplog.set_level(logging.INFO, logger="monitor.store.sql")

        _drop_connections(postgres_url)
        synced = repository.sync_charts([US_FREE], now=T0)
        _drop_connections(postgres_url)
        status = repository.schedule_status(now=T0)

    assert synced.enabled == status.enabled == 1
    assert _lost_connections(caplog) == 2  # one write, one read: each run again


@pytest.mark.postgres
def test_a_connection_idle_for_a_while_is_checked_before_use(
    postgres_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "POSTGRES_PING_AFTER_IDLE_S", 0.0)  # every pause is long
    with open_database(postgres_url, writer=True) as database:
        upgrade(database)
        repository = Repository(database)
        repository.sync_charts([US_FREE], now=T0)
        caplog.set_level(logging.INFO, logger="monitor.store.sql")

        _drop_connections(postgres_url)
        status = repository.schedule_status(now=T0)

    assert status.enabled == 1
    assert _lost_connections(caplog) == 0  # replaced at checkout, before any work failed
