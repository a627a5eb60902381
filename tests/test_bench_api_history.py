"""The history benchmark's bulk builder (bench/api_history.py) stores what the write path stores.

The benchmark is only as honest as its data: the same polls written through
`Repository.record_snapshot` / `record_failure` and through the bulk builder must leave the
same rows (compared by store ids and chart keys, since internal ids are assigned in another
order) and give the same history. SQLite only: the builder's statements are plain inserts,
the same on both backends.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import select

from monitor.config import Settings, load_settings
from monitor.model import ChartEntry, ChartSnapshot, Validators
from monitor.store import packing
from monitor.store.apps import LAST_SEEN_RESOLUTION
from monitor.store.engine import Database, open_database
from monitor.store.repository import Repository
from monitor.store.tables import app_ranks, apps, charts, fetch_log, snapshots
from monitor.worker import prepare_database

BENCH = Path(__file__).resolve().parent.parent / "bench"
HOURS = 8


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    sys.path.insert(0, str(BENCH))  # the bench scripts import each other by name
    try:
        yield importlib.import_module("api_history")
    finally:
        sys.path.remove(str(BENCH))


def write_through_repository(
    bench: ModuleType, database: Database, settings: Settings, stream: Any
) -> None:
    repository = prepare_database(settings, database)
    for poll in stream:
        [claim] = repository.claim_due(
            owner="test", now=poll.at, lease=dt.timedelta(hours=1), limit=1, charts=[poll.chart]
        )
        fetches = [bench.fetch_record(poll)]
        next_due_at = poll.at + dt.timedelta(hours=1)
        if poll.ranking is None:
            repository.record_failure(claim, fetches=fetches, next_due_at=next_due_at)
            continue
        entries = tuple(
            ChartEntry(rank=rank, store_id=store_id, name=bench.app_name(store_id))
            for rank, store_id in enumerate(poll.ranking, start=1)
        )
        snapshot = ChartSnapshot(
            chart=poll.chart,
            source=bench.source_of(poll.chart),
            fetched_at=poll.at,
            requested_depth=bench.DEPTH,
            entries=entries,
        )
        repository.record_snapshot(
            claim,
            snapshot,
            content_hash=bench.content_hash(poll),
            validators=Validators(),
            fetches=fetches,
            next_due_at=next_due_at,
        )


def stored(database: Database) -> dict[str, Any]:
    """Every row the history reads, with internal ids replaced by store ids and chart keys."""
    with database.engine.connect() as connection:
        store_ids = dict(connection.execute(select(apps.c.id, apps.c.store_id)).all())
        chart_of = {
            row.id: (row.country, row.collection) for row in connection.execute(select(charts))
        }
        snapshot_rows = {
            (chart_of[row.chart_id], row.fetched_at): (
                row.confirmed_at,
                row.feed_updated_at,
                row.requested_depth,
                row.visible_depth,
                row.source,
                bytes(row.content_hash),
                [store_ids[a] for a in packing.slots(row.ranked_app_ids)],
            )
            for row in connection.execute(select(snapshots))
        }
        rank_rows = {
            (store_ids[row.app_id], chart_of[row.chart_id], row.fetched_at, row.rank)
            for row in connection.execute(select(app_ranks))
        }
        log_rows = {
            (chart_of[row.chart_id], *row[1:]) for row in connection.execute(select(fetch_log))
        }
        app_rows = {
            row.store_id: row for row in connection.execute(select(apps)) if row.first_seen_at
        }
    repository = Repository(database)
    histories = {
        store_id: repository.history(app_id)
        for app_id, store_id in store_ids.items()
        if app_rows.get(store_id) is not None and app_rows[store_id].tracked
    }
    return {
        "snapshots": snapshot_rows,
        "ranks": rank_rows,
        "log": log_rows,
        "apps": app_rows,
        "histories": histories,
    }


def test_bulk_built_history_equals_the_write_paths(bench: ModuleType, tmp_path: Path) -> None:
    through_repository, bulk = tmp_path / "repository.sqlite3", tmp_path / "bulk.sqlite3"
    config = tmp_path / "config"
    config.mkdir()
    settings = load_settings(bench.write_config(config, f"sqlite:///{bulk}", 8080))
    some_charts = settings.chart_keys()[:3]
    stream = list(bench.polls(some_charts, hours=HOURS, end=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)))
    stream[4] = dataclasses.replace(stream[4], ranking=None)  # a failed poll: a gap
    with open_database(f"sqlite:///{through_repository}", writer=True) as database:
        write_through_repository(bench, database, settings, stream)
        expected = stored(database)
    with open_database(f"sqlite:///{bulk}", writer=True) as database:
        prepare_database(settings, database)
        assert bench.bulk_write(database, settings.chart_keys(), stream) == len(stream) - 1
        built = stored(database)

    assert len(expected["snapshots"]) == len(stream) - 1
    assert expected["ranks"], "no watched app listed: the comparison would prove little"
    assert built["snapshots"] == expected["snapshots"]
    assert built["ranks"] == expected["ranks"]
    assert built["log"] == expected["log"]
    assert built["histories"] == expected["histories"]
    assert built["apps"].keys() == expected["apps"].keys()
    for store_id, app in expected["apps"].items():
        twin = built["apps"][store_id]
        assert (twin.name, twin.tracked, twin.first_seen_at) == (
            app.name,
            app.tracked,
            app.first_seen_at,
        )
        assert abs(twin.last_seen_at - app.last_seen_at) <= LAST_SEEN_RESOLUTION
