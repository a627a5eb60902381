"""The service's daily retention run: from the configured hour, once a day across replicas,
against a database holding snapshots older than the retention."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from monitor.config import Settings
from monitor.config_sections import RetentionSettings
from monitor.metrics import ServiceMetrics
from monitor.model import WatchedApp
from monitor.retention_job import RetentionJob
from monitor.store import partitions
from monitor.store.engine import Database, open_database
from monitor.store.migrate import upgrade
from monitor.store.repository import Repository
from monitor.store.tables import charts, daily_ranks, job_runs, snapshots
from tests.conftest import migrated
from tests.store.conftest import CHATGPT, DEEPSEEK, US_FREE, Poller
from tests.support.fake_apple import FakeAppleCharts
from tests.support.http_server import ScriptedServer
from tests.support.processes import wait_for
from tests.support.service import ServiceProcess, serve_charts, write_config

OLD = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)  # over 400 days before any run of these tests
OLD_DAYS = 10
RUN_NOW = "[retention]\nhour = 0\n"


@pytest.fixture
def feeds() -> Iterator[ScriptedServer]:
    with serve_charts(FakeAppleCharts()) as server:
        yield server


def store_old_history(url: str) -> None:
    with open_database(url, writer=True) as database:
        upgrade(database)
        repository = Repository(database)
        repository.sync_charts([US_FREE], now=OLD)
        repository.sync_watchlist([WatchedApp(US_FREE.store, DEEPSEEK, "DeepSeek")])
        poller = Poller(repository, database)
        for hour in range(24 * OLD_DAYS):
            rank = hour % 7
            ranking = [CHATGPT, "501", "502", "503", "504", "505", "506"]
            ranking.insert(rank, DEEPSEEK)
            poller.store(US_FREE, OLD + dt.timedelta(hours=hour), ranking)


def stored(url: str) -> tuple[int, int, int, int]:
    """(snapshots before the summer's end, daily summaries, runs finished, charts folded)."""
    with (
        open_database(url, writer=False, exclusive=False) as database,
        database.engine.connect() as connection,
    ):

        def count(table: Any, *where: Any) -> int:
            return int(connection.scalar(select(func.count()).select_from(table).where(*where)))

        end_of_old = OLD + dt.timedelta(days=OLD_DAYS)
        return (
            count(snapshots, snapshots.c.fetched_at < end_of_old),
            count(daily_ranks),
            count(job_runs, job_runs.c.finished_at.is_not(None)),
            count(charts, charts.c.folded_before.is_not(None)),
        )


@pytest.mark.slow
def test_the_service_folds_old_snapshots_once_a_day(tmp_path: Path, feeds: ScriptedServer) -> None:
    url = f"sqlite:///{tmp_path / 'monitor.sqlite3'}"
    store_old_history(url)
    config = write_config(tmp_path, database_url=url, feeds=feeds, extra=RUN_NOW)

    with ServiceProcess(config) as service:
        service.wait_ready()
        wait_for(
            lambda: service.metric("apprank_retention_runs_total", outcome="ok") == 1,
            "the day's retention run",
        )
        ran_at = service.metric("apprank_retention_last_run_timestamp_seconds", outcome="ok")
        assert service.stop() == 0

    old_snapshots, days, runs, folded = stored(url)
    assert old_snapshots == 1  # the one standing at the horizon
    assert days == OLD_DAYS
    assert runs == 1
    assert folded == 4  # every configured chart, polled or not
    assert ran_at is not None
    assert "retention: folded 10 chart-days" in service.output


@pytest.mark.slow
@pytest.mark.postgres
def test_of_three_replicas_one_runs_the_days_retention(
    tmp_path: Path, feeds: ScriptedServer, postgres_url: str
) -> None:
    store_old_history(postgres_url)
    replicas = [
        ServiceProcess(
            write_config(
                tmp_path,
                database_url=postgres_url,
                feeds=feeds,
                name=f"replica{n}",
                extra=RUN_NOW,
            ),
            name=f"replica{n}",
        )
        for n in range(3)
    ]
    for replica in replicas:
        replica.start()
    try:
        for replica in replicas:
            replica.wait_ready()

        def ran() -> list[float]:
            return [
                replica.metric("apprank_retention_runs_total", outcome="ok") or 0.0
                for replica in replicas
            ]

        wait_for(lambda: sum(ran()) >= 1, "a retention run")
        assert sorted(ran()) == [0.0, 0.0, 1.0]
    finally:
        for replica in replicas:
            replica.stop()

    old_snapshots, days, runs, _ = stored(postgres_url)
    assert (days, runs) == (OLD_DAYS, 1)
    # PostgreSQL keeps the folded rows until their month goes: June's partition is the default
    # one here (the migration made months from today on), whose rows go one by one.
    assert old_snapshots == 1


def daily_job(repository: Repository, settings: Settings, now: dt.datetime) -> RetentionJob:
    metrics = ServiceMetrics(
        poll_interval=dt.timedelta(hours=1),
        read_state=lambda at: repository.service_state(now=at),
        app_labels={},
        clock=lambda: now,
    )
    return RetentionJob(repository, settings, "test", lambda: now, metrics)


@pytest.mark.anyio
async def test_before_the_configured_hour_nothing_runs(sqlite_database: Database) -> None:
    two_am = dt.datetime(2026, 12, 5, 2, 30, tzinfo=dt.UTC)
    settings = Settings(retention=RetentionSettings(hour=3))
    job = daily_job(Repository(sqlite_database), settings, two_am)

    await job.run_if_due()

    with sqlite_database.engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(job_runs)) == 0


OFF = Settings(retention=RetentionSettings(enabled=False, hour=3))
# Beyond the months the migration made: a service left running with retention off.
MONTHS_LATER = dt.datetime.now(dt.UTC).replace(hour=4) + dt.timedelta(days=200)


@pytest.mark.anyio
@pytest.mark.postgres
async def test_with_retention_off_postgresql_still_gets_its_coming_months(
    postgres_url: str,
) -> None:
    with migrated(postgres_url) as database:
        repository = Repository(database)
        repository.sync_charts([US_FREE], now=OLD)
        Poller(repository, database).store(US_FREE, OLD, [DEEPSEEK, CHATGPT])

        await daily_job(repository, OFF, MONTHS_LATER).run_if_due()

        with database.engine.connect() as connection:
            tables = set(connection.scalars(text("SELECT tablename FROM pg_tables")))
            outcomes = list(connection.scalars(select(job_runs.c.outcome)))
            kept = connection.scalar(select(func.count()).select_from(snapshots))
            folded = connection.scalar(select(func.count(charts.c.folded_before)))
    coming = {
        partitions.MonthPartition(table, month).name
        for table in partitions.PARTITIONED
        for month in partitions.months(MONTHS_LATER, partitions.last_month_ahead(MONTHS_LATER))
    }
    assert coming <= tables
    (outcome,) = outcomes
    assert outcome.startswith("off; made partitions: ")
    assert set(outcome.removeprefix("off; made partitions: ").split(", ")) == coming
    assert (kept, folded) == (1, 0)  # nothing folded nor removed


@pytest.mark.anyio
async def test_with_retention_off_sqlite_runs_nothing(sqlite_database: Database) -> None:
    await daily_job(Repository(sqlite_database), OFF, MONTHS_LATER).run_if_due()

    with sqlite_database.engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(job_runs)) == 0
