"""Migrations: up, down and up again with data present; drift; concurrency; the Alembic CLI."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap

import pytest
from sqlalchemy import inspect, text

from monitor.model import RankStatus, Store, WatchedApp
from monitor.store import partitions
from monitor.store.engine import Database, open_database
from monitor.store.migrate import (
    check_drift,
    current_revision,
    downgrade,
    head_revision,
    upgrade,
)
from monitor.store.repository import Repository
from monitor.store.tables import fetch_log, metadata
from tests.conftest import REPO_ROOT

from .conftest import CHATGPT, HOUR, T0, US_FREE, Poller, row_counts


def _tables(database: Database) -> set[str]:
    with database.engine.connect() as connection:
        names = set(inspect(connection).get_table_names()) - {"alembic_version"}
    return {name for name in names if not partitions.is_partition(name)}


def test_upgrade_matches_the_code_and_survives_a_round_trip_with_data(
    database_url: str,
) -> None:
    with open_database(database_url, writer=True) as database:
        upgrade(database)
        assert check_drift(database) == []
        assert current_revision(database) == head_revision() is not None
        repository = Repository(database)
        repository.sync_charts([US_FREE], now=T0)
        Poller(repository, database).store(US_FREE, T0, [CHATGPT, "2"])

        downgrade(database, "base")
        assert _tables(database) == set()
        assert current_revision(database) is None

        upgrade(database)
        assert _tables(database) == set(metadata.tables)
        assert check_drift(database) == []
        repository = Repository(database)
        repository.sync_charts([US_FREE], now=T0)
        assert Poller(repository, database).store(US_FREE, T0 + HOUR, [CHATGPT]).stored


def test_upgrading_an_up_to_date_database_changes_nothing(database_url: str) -> None:
    with open_database(database_url, writer=True) as database:
        upgrade(database)
        Repository(database).sync_charts([US_FREE], now=T0)

        upgrade(database)

        assert Repository(database).schedule_status(now=T0).enabled == 1


def test_drift_between_schema_and_code_is_reported(database_url: str) -> None:
    with open_database(database_url, writer=True) as database:
        upgrade(database)
        with database.engine.begin() as connection:
            connection.exec_driver_sql("DROP INDEX ix_poll_tasks_enabled_next_due_at")

        drift = check_drift(database)

    assert any("ix_poll_tasks_enabled_next_due_at" in line for line in drift), drift


def test_an_unmigrated_database_is_reported_behind(database_url: str) -> None:
    with open_database(database_url, writer=True) as database:
        drift = check_drift(database)

    assert drift[0] == f"database is at revision None, the code at {head_revision()}"


UPGRADE = textwrap.dedent(
    """
    import sys
    from monitor.store.engine import open_database
    from monitor.store.migrate import upgrade
    with open_database(sys.argv[1], writer=True) as database:
        sys.stdin.readline()  # start together
        upgrade(database)
    """
)


@pytest.mark.postgres
def test_concurrent_upgrades_from_two_processes_are_safe(postgres_url: str) -> None:
    with contextlib.ExitStack() as stack:
        processes = [
            stack.enter_context(
                subprocess.Popen(
                    [sys.executable, "-c", UPGRADE, postgres_url],
                    stdin=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
            for _ in range(2)
        ]
        for process in processes:  # both are connected and waiting: release them at once
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.close()
        outcomes = [(process.wait(timeout=60), process.stderr.read()) for process in processes]  # type: ignore[union-attr]

    assert outcomes == [(0, ""), (0, "")]
    with open_database(postgres_url, writer=False) as database:
        assert check_drift(database) == []


def _alembic(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "MONITOR_DATABASE_URL": url}
    environment.pop("MONITOR_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(REPO_ROOT / "alembic.ini"), *args],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_alembic_command_line_upgrades_and_checks_via_the_settings(database_url: str) -> None:
    behind = _alembic("check", url=database_url)
    upgraded = _alembic("upgrade", "head", url=database_url)
    checked = _alembic("check", url=database_url)

    assert behind.returncode != 0
    assert upgraded.returncode == 0, upgraded.stderr
    assert checked.returncode == 0, checked.stderr
    assert "No new upgrade operations detected" in checked.stdout + checked.stderr


def test_the_poll_grouping_of_the_fetch_log_migrates_down_and_up_with_data(
    database_url: str,
) -> None:
    with open_database(database_url, writer=True) as database:
        upgrade(database)
        repository = Repository(database)
        repository.sync_charts([US_FREE], now=T0)
        poller = Poller(repository, database)
        poller.store(US_FREE, T0, [CHATGPT])
        poller.fail(US_FREE, T0 + HOUR, "HttpStatusError", fallback_error="FetchTimeout")

        downgrade(database, "0001")
        counts = row_counts(database, [fetch_log])
        table_sql = _fetch_log_sql(database)
        upgrade(database)

        assert counts["fetch_log"] == 3
        if database.dialect == "sqlite":
            assert table_sql.rstrip().endswith("WITHOUT ROWID")
        assert check_drift(database) == []
        repository = Repository(database)
        (app,) = repository.find_apps(CHATGPT)
        # The grouping went with the column: rows from before it read as a poll each.
        assert [p.status for p in repository.history(app.id)] == [
            RankStatus.LISTED,
            RankStatus.FETCH_FAILED,
            RankStatus.FETCH_FAILED,
        ]


def _fetch_log_sql(database: Database) -> str:
    if database.dialect != "sqlite":
        return ""
    with database.engine.connect() as connection:
        sql: str = connection.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE name = 'fetch_log'"
        ).scalar_one()
    return sql


def test_the_history_tables_migrate_down_below_retention_and_up_with_their_rows(
    database_url: str,
) -> None:
    with open_database(database_url, writer=True) as database:
        upgrade(database)
        repository = Repository(database)
        repository.sync_charts([US_FREE], now=T0)
        repository.sync_watchlist([WatchedApp(Store.APPLE, CHATGPT, "ChatGPT")])
        poller = Poller(repository, database)
        for hour in range(3):
            poller.store(US_FREE, T0 + hour * HOUR, [CHATGPT, str(hour)][:: 1 - 2 * (hour % 2)])
        poller.fail(US_FREE, T0 + 3 * HOUR)
        (app,) = repository.find_apps(CHATGPT)
        before = repository.history(app.id)

        downgrade(database, "0004")
        with database.engine.connect() as connection:
            old_ranks = connection.exec_driver_sql(
                "SELECT r.rank, s.fetched_at FROM app_ranks r"
                " JOIN snapshots s ON s.id = r.snapshot_id ORDER BY s.fetched_at"
            ).all()
        upgrade(database)

        assert [rank for rank, _ in old_ranks] == [1, 2, 1]
        assert check_drift(database) == []
        assert Repository(database).history(app.id) == before
        assert row_counts(database, [fetch_log])["fetch_log"] == 4
        if database.dialect == "postgresql":
            with database.engine.connect() as connection:
                made = set(
                    connection.scalars(
                        text("SELECT tablename FROM pg_tables WHERE tablename LIKE 'snapshots_%'")
                    )
                )
            # The month of the rows, and the default partition.
            assert {"snapshots_p202501", "snapshots_default"} <= made
