"""What crashes, kills, shutdowns and replicas must never do to the stored history, as queries
on the service's database (SQLite or PostgreSQL), and the few edits a test makes to it while
no service runs (time passing faster than the test can wait).

    assert history_problems(url) == []       # no duplicate or half-written snapshot
    snapshots(url)["apple/us/top_free/iphone/all"]     # that chart's snapshots, oldest first
    held_leases(url, now=...)                 # charts whose lease is still held
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import Connection, func, select, update

from monitor.store import packing
from monitor.store.engine import open_database
from monitor.store.tables import (
    app_ranks,
    apps,
    charts,
    fetch_log,
    notifications,
    poll_tasks,
    snapshots,
)

T = TypeVar("T")
US_TOP_FREE = "apple/us/top_free/iphone/all"


@dataclasses.dataclass(frozen=True)
class StoredSnapshot:
    id: int
    fetched_at: dt.datetime
    content_hash: bytes
    ranks: dict[str, int]  # tracked apps listed in it: store id -> rank, from the packed ranks


@dataclasses.dataclass(frozen=True)
class Lease:
    owner: str | None
    expires_at: dt.datetime | None
    next_due_at: dt.datetime
    token: int


_CHART_KEY = (
    charts.c.store,
    charts.c.country,
    charts.c.collection,
    charts.c.device,
    charts.c.genre,
)


def _slug(row: object) -> str:
    """The chart slug of a row selected with the _CHART_KEY columns."""
    return "/".join(getattr(row, column.name) for column in _CHART_KEY)


@contextmanager
def _connected(url: str, *, write: bool = False) -> Iterator[Connection]:
    # Not the service's one-writer lock: a test reads beside a running service, and edits only
    # while none runs.
    with (
        open_database(url, writer=write, exclusive=False) as database,
        database.engine.begin() as connection,
    ):
        yield connection


def _read(url: str, work: Callable[[Connection], T]) -> T:
    with _connected(url) as connection:
        return work(connection)


def snapshots_by_chart(url: str) -> dict[str, list[StoredSnapshot]]:
    """Every chart's snapshots, oldest first, with the ranks of the tracked apps in them."""

    def read(connection: Connection) -> dict[str, list[StoredSnapshot]]:
        tracked = dict(
            connection.execute(select(apps.c.id, apps.c.store_id).where(apps.c.tracked)).all()
        )
        rows = connection.execute(
            select(
                snapshots,
                *_CHART_KEY,
            )
            .join(charts, charts.c.id == snapshots.c.chart_id)
            .order_by(snapshots.c.fetched_at, snapshots.c.id)
        )
        stored: dict[str, list[StoredSnapshot]] = defaultdict(list)
        for row in rows:
            listed = packing.ranks_of(bytes(row.ranked_app_ids), tracked)
            ranks = {tracked[app_id]: rank for app_id, rank in listed.items()}
            stored[_slug(row)].append(
                StoredSnapshot(row.id, row.fetched_at, bytes(row.content_hash), ranks)
            )
        return dict(stored)

    return _read(url, read)


def history_problems(url: str) -> list[str]:
    """What is wrong with the stored history, one line each; empty when nothing is:
    - a snapshot with the content of the chart's previous one (written twice);
    - a snapshot without the fetch log row of the fetch that produced it;
    - a snapshot whose derived ranks (app_ranks) are not exactly its listed tracked apps."""

    def read(connection: Connection) -> list[str]:
        problems = []
        logged = {
            (row.chart_id, row.started_at)
            for row in connection.execute(
                select(fetch_log.c.chart_id, fetch_log.c.started_at).where(
                    fetch_log.c.outcome == "changed"
                )
            )
        }
        derived: dict[tuple[int, dt.datetime], dict[int, int]] = defaultdict(dict)
        for row in connection.execute(select(app_ranks)):
            derived[(row.chart_id, row.fetched_at)][row.app_id] = row.rank
        tracked = set(connection.scalars(select(apps.c.id).where(apps.c.tracked)))
        previous: dict[int, bytes] = {}
        for row in connection.execute(
            select(snapshots).order_by(snapshots.c.chart_id, snapshots.c.fetched_at)
        ):
            name = f"snapshot {row.id} (chart {row.chart_id}, {row.fetched_at:%H:%M:%S.%f})"
            if previous.get(row.chart_id) == bytes(row.content_hash):
                problems.append(f"{name}: the same content as the chart's previous snapshot")
            previous[row.chart_id] = bytes(row.content_hash)
            if (row.chart_id, row.fetched_at) not in logged:
                problems.append(f"{name}: no fetch log row with outcome 'changed'")
            listed = packing.ranks_of(bytes(row.ranked_app_ids), tracked)
            ranks = derived.get((row.chart_id, row.fetched_at), {})
            if ranks != listed:
                problems.append(f"{name}: derived ranks {ranks}, listed {listed}")
        return problems

    return _read(url, read)


def leases(url: str) -> dict[str, Lease]:
    """Every enabled chart's schedule row."""

    def read(connection: Connection) -> dict[str, Lease]:
        rows = connection.execute(
            select(
                poll_tasks,
                *_CHART_KEY,
            )
            .join(charts, charts.c.id == poll_tasks.c.chart_id)
            .where(poll_tasks.c.enabled)
        )
        return {
            _slug(row): Lease(
                row.lease_owner, row.lease_expires_at, row.next_due_at, row.fencing_token
            )
            for row in rows
        }

    return _read(url, read)


def held_leases(url: str, *, now: dt.datetime) -> dict[str, Lease]:
    """The charts whose lease is still held at `now`."""
    return {
        chart: lease
        for chart, lease in leases(url).items()
        if lease.expires_at is not None and lease.expires_at > now
    }


def fetches_by_chart(url: str) -> dict[str, int]:
    """How many fetches each chart's fetch log holds."""

    def read(connection: Connection) -> dict[str, int]:
        rows = connection.execute(
            select(*_CHART_KEY, func.count())
            .join(fetch_log, fetch_log.c.chart_id == charts.c.id)
            .group_by(*_CHART_KEY)
        )
        return {_slug(row): row[-1] for row in rows}

    return _read(url, read)


def outbox(url: str) -> list[tuple[str, str | None]]:
    """Every notification's state and claimer, oldest first."""
    query = select(notifications.c.state, notifications.c.claimed_by).order_by(notifications.c.id)
    return _read(url, lambda c: [(row.state, row.claimed_by) for row in c.execute(query)])


def expire_outbox_claims(url: str) -> int:
    """End every sender's claim on notifications now, as its lease running out would (the
    sender's lease is 5 minutes); returns how many notifications were claimed."""
    with _connected(url, write=True) as connection:
        return connection.execute(
            update(notifications)
            .where(notifications.c.claimed_until.is_not(None))
            .values(claimed_until=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        ).rowcount


def move_back(url: str, by: dt.timedelta) -> None:
    """Move every stored time of the schedule, the snapshots and the fetch log back `by`, as if
    the service had stopped that long ago. Row by row, in Python: SQLite stores times as text,
    where SQL date arithmetic would not apply."""
    moved = {
        poll_tasks: ("next_due_at", "last_attempt_at", "last_success_at"),
        snapshots: ("fetched_at", "confirmed_at"),
        app_ranks: ("fetched_at",),  # with its snapshot's, which it is keyed by
        fetch_log: ("started_at", "poll_started_at"),
    }
    with _connected(url, write=True) as connection:
        for table, columns in moved.items():
            key = list(table.primary_key.columns)
            for row in connection.execute(select(*key, *(table.c[c] for c in columns))).all():
                connection.execute(
                    update(table)
                    .where(*(column == row._mapping[column.name] for column in key))
                    .values({c: row._mapping[c] - by for c in columns if row._mapping[c]})
                )
