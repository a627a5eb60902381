"""Retention on both backends: history reads the same before and after snapshots are folded
and removed; what the service still reads stays; months go whole on PostgreSQL; the space comes
back on SQLite; one replica runs a day's job."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update

from monitor.model import RankPoint, RankStatus, Resolution, Store, WatchedApp
from monitor.store import partitions
from monitor.store.engine import SQLITE_INCREMENTAL_VACUUM, Database, open_database
from monitor.store.migrate import upgrade
from monitor.store.repository import Repository
from monitor.store.retention import RetentionPolicy
from monitor.store.tables import app_ranks, charts, daily_ranks, fetch_log, snapshots
from tests.conftest import migrated

from .conftest import CHATGPT, DEEPSEEK, JP_FREE, US_FREE, Poller

START = dt.datetime(2024, 12, 20, tzinfo=dt.UTC)
DAYS = 22  # polls every 6 hours up to 2025-01-10 18:00
NOW = dt.datetime(2025, 1, 10, 21, 0, tzinfo=dt.UTC)
# Horizon: 2025-01-05 00:00 (NOW less 5 days, at midnight); fetch log cutoff: 2025-01-07 21:00.
POLICY = RetentionPolicy(snapshot_days=5, fetch_log_days=3, poll_interval=dt.timedelta(hours=6))
HORIZON = dt.datetime(2025, 1, 5, tzinfo=dt.UTC)
SLOTS = (0, 6, 12, 18)
JANUARY = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def deepseek_rank(day: int, slot: int) -> int | None:
    """Not listed in the last poll of odd days; else a rank from 1 to 5."""
    if day % 2 and slot == 3:
        return None
    return (day + slot) % 5 + 1


def chart_at(day: int, slot: int) -> list[str | None]:
    """Five ranked apps: DeepSeek where deepseek_rank says, ChatGPT always first or second."""
    rank = deepseek_rank(day, slot)
    others = [CHATGPT, "501", "502", "503", "504"] if rank != 1 else ["501", CHATGPT, "502", "503"]
    ranked = [app for app in others if app != DEEPSEEK]
    if rank is not None:
        ranked.insert(rank - 1, DEEPSEEK)
    return ranked[:5]


def poll_story(poller: Poller) -> None:
    for day in range(DAYS):
        for slot, hour in enumerate(SLOTS):
            at = START + dt.timedelta(days=day, hours=hour)
            poller.store(US_FREE, at, chart_at(day, slot))
    poller.fail(US_FREE, dt.datetime(2024, 12, 28, 3, tzinfo=dt.UTC))
    poller.fail(US_FREE, dt.datetime(2025, 1, 9, 3, tzinfo=dt.UTC))


def expected_day(day: int) -> RankPoint:
    ranks = [rank for slot in range(4) if (rank := deepseek_rank(day, slot)) is not None]
    last = ranks[-1]
    return RankPoint(
        at=START + dt.timedelta(days=day),
        chart=US_FREE,
        status=RankStatus.LISTED,
        rank=last,
        depth=5,
        resolution=Resolution.DAY,
        best=min(ranks),
        worst=max(ranks),
        hours_listed=6.0 * len(ranks),
    )


def _app_id(repository: Repository, store_id: str) -> int:
    (found,) = repository.find_apps(store_id)
    return found.id


def make_story_months(database: Database) -> None:
    """The months of the story as partitions, as the service would have made them then."""
    if database.dialect == "postgresql":
        with database.engine.begin() as connection:
            partitions.ensure_months(connection, partitions.months(START, NOW))


@pytest.fixture
def story(database: Database, poller: Poller) -> Repository:
    make_story_months(database)
    poller.repository.sync_watchlist([WatchedApp(Store.APPLE, DEEPSEEK, "DeepSeek")])
    poll_story(poller)
    return poller.repository


@pytest.fixture
def postgres_story(postgres_url: str) -> Iterator[Poller]:
    """The story polled on PostgreSQL, with Japan's chart in the schedule too."""
    with migrated(postgres_url) as database:
        repository = Repository(database)
        repository.sync_charts([US_FREE, JP_FREE], now=START)
        make_story_months(database)
        poller = Poller(repository, database)
        poll_story(poller)
        yield poller


def test_history_before_the_horizon_is_one_point_a_day_and_the_same_after_it(
    story: Repository,
) -> None:
    deepseek, chatgpt = _app_id(story, DEEPSEEK), _app_id(story, CHATGPT)
    before = {app: story.history(app) for app in (deepseek, chatgpt)}

    report = story.run_retention(POLICY, now=NOW)

    assert report.horizon == HORIZON
    assert report.days_folded == 16  # 2024-12-20 to 2025-01-04
    after = story.history(deepseek)
    folded_days = [p for p in after if p.at < HORIZON]
    assert folded_days == [expected_day(day) for day in range(16)]
    # The failure of 2025-01-09 is within the fetch log's days; that of 2024-12-28 is not.
    assert [p for p in after if p.at >= HORIZON] == [p for p in before[deepseek] if p.at >= HORIZON]
    # An app not tracked reads its days from the same summaries.
    untracked = story.history(chatgpt)
    assert [p.at for p in untracked if p.at < HORIZON] == [p.at for p in folded_days]
    assert {p.best for p in untracked if p.at < HORIZON} == {1}
    assert {p.worst for p in untracked if p.at < HORIZON} == {1, 3}
    assert [p for p in untracked if p.at >= HORIZON] == [
        p for p in before[chatgpt] if p.at >= HORIZON
    ]


def test_history_windows_over_folded_days_hold_the_days_they_cover(story: Repository) -> None:
    deepseek = _app_id(story, DEEPSEEK)
    story.run_retention(POLICY, now=NOW)
    since, until = dt.datetime(2025, 1, 2, 12, tzinfo=dt.UTC), HORIZON + dt.timedelta(hours=6)

    window = story.history(deepseek, since=since, until=until)

    assert [(p.at, p.resolution) for p in window] == [
        (dt.datetime(2025, 1, 3, tzinfo=dt.UTC), Resolution.DAY),
        (dt.datetime(2025, 1, 4, tzinfo=dt.UTC), Resolution.DAY),
        (HORIZON, Resolution.POLL),
        (HORIZON + dt.timedelta(hours=6), Resolution.POLL),
    ]
    assert story.first_poll_at() == START


def test_a_chart_that_listed_the_app_only_in_folded_days_stays_in_its_recent_history(
    story: Repository, poller: Poller
) -> None:
    deepseek = _app_id(story, DEEPSEEK)
    poller.store(JP_FREE, START, [DEEPSEEK, CHATGPT])
    # Standing at the horizon, so kept; the one listing DeepSeek goes.
    poller.store(JP_FREE, START + dt.timedelta(days=2), [CHATGPT, "501"])
    poller.store(JP_FREE, HORIZON + dt.timedelta(days=1), ["501", CHATGPT])
    recent = HORIZON + dt.timedelta(hours=12)
    before = story.history(deepseek, since=recent)

    story.run_retention(POLICY, now=NOW)

    assert story.history(deepseek, since=recent) == before
    japan = [p for p in before if p.chart == JP_FREE]
    assert [(p.status, p.resolution) for p in japan] == [(RankStatus.BELOW_DEPTH, Resolution.POLL)]


def test_a_chart_that_cannot_be_folded_is_named_keeps_its_rows_and_holds_up_no_other(
    database: Database, story: Repository, poller: Poller
) -> None:
    poller.store(JP_FREE, START, [DEEPSEEK, CHATGPT])
    poller.store(JP_FREE, START + dt.timedelta(days=1), [CHATGPT, DEEPSEEK])
    with database.engine.begin() as connection:
        japan = connection.scalar(select(charts.c.id).where(charts.c.country == "jp"))
        connection.execute(
            update(snapshots)
            .where(snapshots.c.chart_id == japan, snapshots.c.fetched_at == START)
            .values(ranked_app_ids=b"\x01\x02\x03")  # not a packed ranking
        )

    report = story.run_retention(POLICY, now=NOW)

    assert report.failed_charts == [JP_FREE.slug]
    assert report.days_folded == 16  # the US chart's, as if Japan's were not there
    with database.engine.connect() as connection:
        kept = connection.scalar(
            select(func.count()).select_from(snapshots).where(snapshots.c.chart_id == japan)
        )
    assert kept == 2
    assert story.folded_before(JP_FREE) is None


def test_folded_snapshots_are_removed_but_those_the_service_reads(
    database: Database, story: Repository
) -> None:
    story.run_retention(POLICY, now=NOW)

    with database.engine.connect() as connection:
        # The snapshot standing at the horizon stays: the next fold starts from it. On
        # PostgreSQL so do the others of January, which goes whole once past the horizon.
        kept_since = JANUARY if database.dialect == "postgresql" else HORIZON - 6 * HOUR
        old = connection.scalars(
            select(snapshots.c.fetched_at).where(snapshots.c.fetched_at < HORIZON)
        )
        assert set(old) == {
            START + dt.timedelta(hours=6 * n)
            for n in range(DAYS * 4)
            if kept_since <= START + dt.timedelta(hours=6 * n) < HORIZON
        }
        orphans = connection.scalar(
            select(func.count())
            .select_from(app_ranks)
            .where(
                ~select(snapshots.c.id)
                .where(
                    snapshots.c.chart_id == app_ranks.c.chart_id,
                    snapshots.c.fetched_at == app_ranks.c.fetched_at,
                )
                .exists()
            )
        )
        assert orphans == 0
        oldest_fetch = connection.scalar(select(func.min(fetch_log.c.started_at)))
    if database.dialect == "postgresql":
        # Whole months: December's went, January's stays until it is past the cutoff.
        assert oldest_fetch == JANUARY
    else:
        assert oldest_fetch >= NOW - dt.timedelta(days=POLICY.fetch_log_days)


def test_what_the_service_reads_now_is_the_same_after_retention(story: Repository) -> None:
    window = dt.timedelta(days=3)  # DeepSeek left the chart since 2025-01-07 18:00
    chart_at_horizon = HORIZON + dt.timedelta(hours=1)

    def current() -> tuple[object, ...]:
        return (
            story.tracked_apps(),
            story.movers(now=NOW, window=window),
            story.chart_at(US_FREE),
            story.chart_at(US_FREE, chart_at_horizon),
            story.service_state(now=NOW),
        )

    before = current()
    story.run_retention(POLICY, now=NOW)

    assert current() == before
    movers, latest = before[1], before[2]
    assert [mover.store_id for mover in movers] == [DEEPSEEK]  # not a comparison of empties
    assert latest is not None


@pytest.mark.postgres
def test_postgresql_drops_past_months_instead_of_deleting_rows(postgres_story: Poller) -> None:
    database, repository = postgres_story.database, postgres_story.repository

    report = repository.run_retention(POLICY, now=NOW)

    assert set(report.partitions_dropped) == {
        "snapshots_p202412",
        "app_ranks_p202412",
        "fetch_log_p202412",
    }
    with database.engine.connect() as connection:
        left = {
            name
            for name in connection.scalars(text("SELECT tablename FROM pg_tables"))
            if partitions.is_partition(name) and "202412" in name
        }
        december = connection.scalar(
            select(func.count())
            .select_from(snapshots)
            .where(snapshots.c.fetched_at < dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
        )
    assert left == set()
    assert december == 0
    # January's folded days stay stored until all of January is past the horizon.
    assert report.snapshots_deleted == 0


@pytest.mark.postgres
def test_a_month_holding_a_snapshot_still_read_is_kept_with_only_that_row(
    postgres_story: Poller,
) -> None:
    database, repository = postgres_story.database, postgres_story.repository
    # Japan's chart has not changed since December: its one snapshot is its current one.
    postgres_story.store(JP_FREE, START, [DEEPSEEK, CHATGPT])

    report = repository.run_retention(POLICY, now=NOW)

    assert "snapshots_p202412" not in report.partitions_dropped
    with database.engine.connect() as connection:
        december = connection.execute(
            text("SELECT chart_id, fetched_at FROM snapshots_p202412")
        ).all()
    assert [fetched_at for _, fetched_at in december] == [START]
    japan = repository.chart_at(JP_FREE, NOW)
    assert japan is not None
    assert japan.fetched_at == START


def test_a_chart_unchanged_for_longer_than_the_retention_keeps_its_current_snapshot(
    database: Database, poller: Poller
) -> None:
    repository = poller.repository
    poller.store(JP_FREE, START, [DEEPSEEK, CHATGPT])
    poller.unchanged(JP_FREE, NOW - dt.timedelta(hours=1))

    repository.run_retention(POLICY, now=NOW)

    current = repository.chart_at(JP_FREE, NOW)
    assert current is not None
    assert [entry.store_id for entry in current.entries] == [DEEPSEEK, CHATGPT]
    # Each folded day counts the chart as it stood all day.
    days = repository.history(_app_id(repository, DEEPSEEK), until=HORIZON)
    assert {p.hours_listed for p in days if p.at > START} == {24.0}


def test_running_retention_again_folds_and_removes_nothing_more(story: Repository) -> None:
    deepseek = _app_id(story, DEEPSEEK)
    story.run_retention(POLICY, now=NOW)
    folded = story.history(deepseek)

    again = story.run_retention(POLICY, now=NOW)

    assert (again.days_folded, again.snapshots_deleted, again.fetches_deleted) == (0, 0, 0)
    assert story.history(deepseek) == folded


def test_a_later_run_folds_the_days_since(database: Database, story: Repository) -> None:
    deepseek = _app_id(story, DEEPSEEK)
    story.run_retention(POLICY, now=NOW)

    later = story.run_retention(POLICY, now=NOW + dt.timedelta(days=2))

    assert later.days_folded == 2
    days = [p for p in story.history(deepseek) if p.resolution is Resolution.DAY]
    assert days == [expected_day(day) for day in range(18)]
    with database.engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(daily_ranks)) == 18


def test_sqlite_gives_the_space_back(sqlite_url: str) -> None:
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    with open_database(sqlite_url, writer=True) as database:
        # A file made before incremental vacuum: the first run converts it.
        raw = database.engine.raw_connection()
        raw.cursor().execute("PRAGMA auto_vacuum = NONE")
        raw.cursor().execute("VACUUM")
        raw.close()
        upgrade(database)
        repository = Repository(database)
        repository.sync_charts([US_FREE], now=START)
        poller = Poller(repository, database)
        for hour in range(24 * DAYS):
            ranking = [str(1000 + (hour * 7 + n) % 300) for n in range(100)]
            poller.store(US_FREE, START + dt.timedelta(hours=hour), ranking)
        raw = database.engine.raw_connection()
        raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        raw.close()
        size = path.stat().st_size

        report = repository.run_retention(POLICY, now=NOW)

        with database.engine.connect() as connection:
            mode = connection.exec_driver_sql("PRAGMA auto_vacuum").scalar_one()
            free = connection.exec_driver_sql("PRAGMA freelist_count").scalar_one()
            check = connection.exec_driver_sql("PRAGMA integrity_check").scalar_one()
    assert report.bytes_reclaimed > 0
    assert report.snapshots_deleted > 0
    assert path.stat().st_size <= size - report.bytes_reclaimed // 2
    assert (mode, free, check) == (SQLITE_INCREMENTAL_VACUUM, 0, "ok")


def test_one_replica_runs_a_days_job(database: Database, database_url: str) -> None:
    day = dt.datetime(2025, 1, 10, tzinfo=dt.UTC)
    stale = dt.timedelta(hours=6)
    results: list[bool] = []
    lock = threading.Lock()

    def replica(name: str) -> None:
        with open_database(database_url, writer=True, exclusive=False) as own:
            won = Repository(own).claim_job(
                "retention", period_start=day, owner=name, now=NOW, stale_after=stale
            )
        with lock:
            results.append(won)

    threads = [threading.Thread(target=replica, args=(f"replica-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    repository = Repository(database)

    assert sorted(results) == [False, False, False, True]
    # A run that neither finished nor was heard of for `stale` is taken over; a finished one
    # is not.
    later = NOW + stale + dt.timedelta(minutes=1)
    assert repository.claim_job(
        "retention", period_start=day, owner="successor", now=later, stale_after=stale
    )
    repository.finish_job("retention", period_start=day, owner="successor", now=later, outcome="ok")
    assert not repository.claim_job(
        "retention", period_start=day, owner="third", now=later + 2 * stale, stale_after=stale
    )
    assert repository.claim_job(
        "retention",
        period_start=day + dt.timedelta(days=1),
        owner="third",
        now=later,
        stale_after=stale,
    )


@pytest.mark.postgres
def test_a_month_whose_table_stays_busy_is_left_for_the_next_run(
    postgres_story: Poller, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(partitions, "DDL_ATTEMPTS", 2)
    monkeypatch.setattr(partitions, "DDL_RETRY_PAUSE_SECONDS", 0.1)
    database, repository = postgres_story.database, postgres_story.repository
    # A long reader of the snapshots (an export, say) holds a lock a drop must wait for.
    with database.engine.connect() as reader, reader.begin():
        reader.execute(select(func.count()).select_from(snapshots)).scalar_one()
        busy = repository.run_retention(POLICY, now=NOW)
    free = repository.run_retention(POLICY, now=NOW)

    assert "snapshots_p202412" not in busy.partitions_dropped
    assert "fetch_log_p202412" in busy.partitions_dropped
    assert set(free.partitions_dropped) == {"snapshots_p202412", "app_ranks_p202412"}


def test_a_new_sqlite_database_frees_pages_in_place(sqlite_database: Database) -> None:
    with sqlite_database.engine.connect() as connection:
        mode = connection.exec_driver_sql("PRAGMA auto_vacuum").scalar_one()

    assert mode == SQLITE_INCREMENTAL_VACUUM
