"""One app's rank history: LISTED, BELOW_DEPTH and FETCH_FAILED points, kept apart.

A tracked app's points come from `app_ranks` joined to the snapshots of its charts; an
untracked app's are computed from the packed rankings (slower, same answer). FETCH_FAILED
points come from the fetch log, one per failed poll however many feeds it tried.

Before a chart's `folded_before`, retention has folded its snapshots into `daily_ranks`: the
points there are one a day (Resolution.DAY), read from the summaries whether or not the
snapshots are still stored, so the answer is the same before and after they are removed.
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

from monitor.model import ChartKey, FetchOutcome, RankPoint, RankStatus, Resolution
from monitor.store import packing
from monitor.store.folding import midnight
from monitor.store.schedule import ChartCatalog
from monitor.store.tables import app_ranks, apps, charts, daily_ranks, fetch_log, snapshots

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
    folded: dict[int, dt.datetime] = {
        row.id: row.folded_before
        for row in connection.execute(
            select(charts.c.id, charts.c.folded_before).where(
                charts.c.id.in_(wanted_charts), charts.c.folded_before.is_not(None)
            )
        )
    }
    if tracked:
        # One probe of the primary key per chart: a DISTINCT over the app's rows would read
        # every rank it ever had (a year of hourly polls: ~8,760 per chart) on each call.
        listed_on = exists().where(
            app_ranks.c.app_id == app_id, app_ranks.c.chart_id == charts.c.id
        )
        chart_ids = set(connection.scalars(wanted_charts.where(listed_on)))
    else:
        chart_ids = _charts_listing(connection, dialect, app_id, wanted_charts)
    # A chart whose summaries alone list the app (its snapshots are gone) is one of its charts
    # too, whatever the window: the answer must not change when retention removes rows. Only
    # the summaries of charts not found yet are searched.
    unseen = [chart_id for chart_id in folded if chart_id not in chart_ids]
    if unseen:
        chart_ids |= _charts_listing(connection, dialect, app_id, unseen, daily=True)
    if not chart_ids:
        return []
    keys = catalog.keys(connection, chart_ids)
    folded_at = {keys[chart_id]: before for chart_id, before in folded.items() if chart_id in keys}
    snapshot_points = _snapshot_points(
        connection, app_id, keys, tracked=bool(tracked), since=since, until=until
    )
    points = [
        # Snapshots retention folded but has not removed yet are told by their day.
        *(p for p in snapshot_points if p.at >= folded_at.get(p.chart, p.at)),
        *_day_points(connection, app_id, keys, folded, since=since, until=until),
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


def between(column: Any, since: dt.date | None, until: dt.date | None) -> list[ColumnElement[bool]]:
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


def _charts_listing(
    connection: Connection, dialect: str, app_id: int, wanted: Any, *, daily: bool = False
) -> set[int]:
    """Charts with a snapshot (or with `daily`, a daily summary) listing an app: a byte
    search narrows the scan, the slot alignment check rejects hits that straddle two ids."""
    chart_id, packed = (
        (daily_ranks.c.chart_id, daily_ranks.c.app_ids)
        if daily
        else (snapshots.c.chart_id, snapshots.c.ranked_app_ids)
    )
    needle = bindparam("needle", packing.pack_ranking({1: app_id}), type_=LargeBinary)
    if dialect == "postgresql":
        contains = func.pg_catalog.position(packed, needle) > 0
    else:
        contains = func.instr(packed, needle) > 0
    rows = connection.execute(select(chart_id, packed).where(chart_id.in_(wanted), contains))
    return {found for found, ids in rows if packing.rank_of(ids, app_id)}


def _day_points(
    connection: Connection,
    app_id: int,
    keys: dict[int, ChartKey],
    folded: dict[int, dt.datetime],
    *,
    since: dt.datetime | None,
    until: dt.datetime | None,
) -> list[RankPoint]:
    """One point per folded day of the charts, at the day's midnight."""
    wanted = [chart_id for chart_id in keys if chart_id in folded]
    if not wanted:
        return []
    rows = connection.execute(
        select(daily_ranks).where(
            daily_ranks.c.chart_id.in_(wanted),
            *between(daily_ranks.c.day, since and since.date(), until and until.date()),
        )
    )
    points = []
    for row in rows:
        at = midnight(row.day)
        if at >= folded[row.chart_id] or (since is not None and at < since):
            continue
        slot = packing.rank_of(row.app_ids, app_id)
        if slot is None:
            points.append(
                RankPoint(
                    at=at,
                    chart=keys[row.chart_id],
                    status=RankStatus.BELOW_DEPTH,
                    depth=row.depth,
                    resolution=Resolution.DAY,
                )
            )
            continue
        best, worst, last, minutes = packing.day_stats_at(row.stats, slot - 1)
        points.append(
            RankPoint(
                at=at,
                chart=keys[row.chart_id],
                status=RankStatus.LISTED,
                rank=last,
                depth=row.depth,
                resolution=Resolution.DAY,
                best=best,
                worst=worst,
                hours_listed=round(minutes / 60, 2),
            )
        )
    return points


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
                # Implied by the line above, but PostgreSQL does not carry a range across an
                # equality: stated, it reads the window's months of the app's ranks, not all.
                *between(app_ranks.c.fetched_at, since, until),
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
