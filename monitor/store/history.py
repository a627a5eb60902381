"""One app's rank history: LISTED, BELOW_DEPTH and FETCH_FAILED points, kept apart.

A tracked app's points come from `app_ranks` joined to the snapshots of its charts; an
untracked app's are computed from the packed rankings (slower, same answer). FETCH_FAILED
points come from the fetch log, one per failed poll however many feeds it tried.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    LargeBinary,
    and_,
    bindparam,
    exists,
    false,
    func,
    select,
)

from monitor.model import ChartKey, FetchOutcome, RankPoint, RankStatus
from monitor.store import packing
from monitor.store.schedule import ChartCatalog
from monitor.store.tables import app_ranks, apps, charts, fetch_log, snapshots

# Far beyond any poll: its fetches start within its lease (5 minutes by default).
POLL_SPAN_BOUND = dt.timedelta(days=1)


def history(
    connection: Connection,
    dialect: str,
    catalog: ChartCatalog,
    app_id: int,
    *,
    country: str | None,
    collection: str | None,
    device: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    only: Collection[ChartKey] | None = None,
) -> list[RankPoint]:
    """The app's points on every chart (matching the filters, and among `only` if given)
    that has ever listed it."""
    tracked = connection.scalar(select(apps.c.tracked).where(apps.c.id == app_id))
    if tracked is None:
        return []
    wanted_charts = select(charts.c.id).where(
        *chart_filters(country=country, collection=collection, device=device)
    )
    if only is not None:
        wanted_charts = wanted_charts.where(charts.c.id.in_(catalog.ids(connection, only).values()))
    if tracked:
        # One probe of the primary key per chart: a DISTINCT over the app's rows would read
        # every rank it ever had (a year of hourly polls: ~8,760 per chart) on each call.
        listed_on = exists().where(
            app_ranks.c.app_id == app_id, app_ranks.c.chart_id == charts.c.id
        )
        chart_ids = set(connection.scalars(wanted_charts.where(listed_on)))
    else:
        chart_ids = _charts_listing(connection, dialect, app_id, wanted_charts)
    if not chart_ids:
        return []
    keys = catalog.keys(connection, chart_ids)
    points = [
        *_snapshot_points(
            connection, app_id, keys, tracked=bool(tracked), since=since, until=until
        ),
        *_failure_points(connection, keys, since, until),
    ]
    # ChartKey compares field by field in Python: ordered by each chart's position instead,
    # thousands of points sort on ints.
    position = {key: index for index, key in enumerate(sorted(keys.values()))}
    points.sort(key=lambda point: (position[point.chart], point.at))
    return points


def chart_filters(
    *, country: str | None, collection: str | None, device: str | None
) -> list[ColumnElement[bool]]:
    """Conditions on `charts` for the filters given (None: any)."""
    return [
        column == value
        for column, value in (
            (charts.c.country, country),
            (charts.c.collection, collection),
            (charts.c.device, device),
        )
        if value is not None
    ]


def between(
    column: Any, since: dt.datetime | None, until: dt.datetime | None
) -> list[ColumnElement[bool]]:
    bounds: list[ColumnElement[bool]] = []
    if since is not None:
        bounds.append(column >= since)
    if until is not None:
        bounds.append(column <= until)
    return bounds


def _latest_fetch_of_poll(poll_started: dt.datetime | None) -> dt.datetime | None:
    """The latest a fetch of a poll started at `poll_started` can start: polling gives up
    fetching before the poll's lease runs out (monitor.polling), and a lease is minutes. (A
    poll longer than the bound would still be a point, with the error of an earlier fetch.)"""
    if poll_started is None:
        return None
    try:
        return poll_started + POLL_SPAN_BOUND
    except OverflowError:  # past the year 9999: no bound
        return None


def _charts_listing(connection: Connection, dialect: str, app_id: int, wanted: Any) -> set[int]:
    """Charts with a snapshot listing an untracked app: a byte search narrows the scan, the
    slot alignment check rejects hits that straddle two ids."""
    needle = bindparam("needle", packing.pack_ranking({1: app_id}), type_=LargeBinary)
    if dialect == "postgresql":
        contains = func.pg_catalog.position(snapshots.c.ranked_app_ids, needle) > 0
    else:
        contains = func.instr(snapshots.c.ranked_app_ids, needle) > 0
    rows = connection.execute(
        select(snapshots.c.chart_id, snapshots.c.ranked_app_ids).where(
            snapshots.c.chart_id.in_(wanted), contains
        )
    )
    return {row.chart_id for row in rows if packing.rank_of(row.ranked_app_ids, app_id)}


def _snapshot_points(
    connection: Connection,
    app_id: int,
    keys: dict[int, ChartKey],
    *,
    tracked: bool,
    since: dt.datetime | None,
    until: dt.datetime | None,
) -> list[RankPoint]:
    where = [snapshots.c.chart_id.in_(keys), *between(snapshots.c.fetched_at, since, until)]
    columns = (snapshots.c.chart_id, snapshots.c.fetched_at, snapshots.c.visible_depth)
    ranked: Sequence[Sequence[Any]]  # (chart id, fetched at, depth, rank) per snapshot
    if tracked:
        joined = snapshots.outerjoin(
            app_ranks,
            and_(
                app_ranks.c.app_id == app_id,
                app_ranks.c.chart_id == snapshots.c.chart_id,
                app_ranks.c.fetched_at == snapshots.c.fetched_at,
            ),
        )
        query = select(*columns, app_ranks.c.rank).select_from(joined).where(*where)
        # Thousands of rows: fetched at once and unpacked, not fetched and looked up one by one.
        ranked = connection.execute(query).all()
    else:
        rows = connection.execute(select(*columns, snapshots.c.ranked_app_ids).where(*where))
        ranked = [
            (chart_id, fetched_at, depth, packing.rank_of(packed, app_id))
            for chart_id, fetched_at, depth, packed in rows.all()
        ]
    return [
        RankPoint(
            at=fetched_at,
            chart=keys[chart_id],
            status=RankStatus.LISTED if rank is not None else RankStatus.BELOW_DEPTH,
            rank=rank,
            depth=depth,
        )
        for chart_id, fetched_at, depth, rank in ranked
    ]


def _failure_points(
    connection: Connection,
    keys: dict[int, ChartKey],
    since: dt.datetime | None,
    until: dt.datetime | None,
) -> list[RankPoint]:
    """One point per poll that got no chart at all, at the time the poll started, carrying the
    error of its last fetch (a poll tries a feed, then its fallback: one row each)."""
    poll = func.coalesce(fetch_log.c.poll_started_at, fetch_log.c.started_at)
    rows = connection.execute(
        select(fetch_log.c.chart_id, poll.label("poll"), fetch_log.c.error_class)
        .where(
            fetch_log.c.chart_id.in_(keys),
            fetch_log.c.outcome == FetchOutcome.FAILED.value,
            fetch_log.c.recovered == false(),
            # Implied by the bounds on the poll (a fetch never starts before its poll, nor
            # after its lease), and what narrows the scan of the primary key to the range.
            *between(fetch_log.c.started_at, since, _latest_fetch_of_poll(until)),
            *between(poll, since, until),
        )
        .order_by(fetch_log.c.chart_id, fetch_log.c.started_at)
    )
    errors: dict[tuple[int, dt.datetime], str | None] = {}
    for row in rows:  # in fetch order, so the last fetch of each poll has the last word
        errors[(row.chart_id, row.poll)] = row.error_class
    return [
        RankPoint(
            at=poll_started_at,
            chart=keys[chart_id],
            status=RankStatus.FETCH_FAILED,
            error=error or "unknown",
        )
        for (chart_id, poll_started_at), error in errors.items()
    ]
