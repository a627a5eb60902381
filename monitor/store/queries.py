"""Read side: apps by reference, a chart as stored, tracked apps' current ranks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    case,
    func,
    or_,
    select,
    true,
)

from monitor.model import ChartKey, SourceName, Store
from monitor.store import packing
from monitor.store.folding import midnight
from monitor.store.history import between, chart_filters
from monitor.store.results import (
    AppInfo,
    ChartView,
    ChartViewEntry,
    CurrentRank,
    TrackedAppStatus,
)
from monitor.store.schedule import ChartCatalog
from monitor.store.tables import apps, charts, daily_ranks, fetch_log, poll_tasks, snapshots

_APP_COLUMNS = (
    apps.c.id,
    apps.c.store,
    apps.c.store_id,
    apps.c.name,
    apps.c.developer,
    apps.c.bundle_id,
    apps.c.genre_name,
    apps.c.tracked,
    apps.c.first_seen_at,
    apps.c.last_seen_at,
)


def _app_info(row: Any) -> AppInfo:
    return AppInfo(
        id=row.id,
        store=Store(row.store),
        store_id=row.store_id,
        name=row.name,
        developer=row.developer,
        bundle_id=row.bundle_id,
        genre_name=row.genre_name,
        tracked=bool(row.tracked),
        first_seen_at=row.first_seen_at,
        last_seen_at=row.last_seen_at,
    )


def find_apps(connection: Connection, ref: str, *, limit: int) -> list[AppInfo]:
    """Apps whose store id or bundle id is `ref`, or whose name contains it (any case).

    Exact id matches come first. SQLite's lower() folds ASCII letters only.
    """
    ref = ref.strip()
    if not ref:
        return []
    escaped = ref.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    exact = or_(apps.c.store_id == ref, apps.c.bundle_id == ref)
    rows = connection.execute(
        select(*_APP_COLUMNS)
        .where(or_(exact, func.lower(apps.c.name).like(f"%{escaped}%", escape="\\")))
        .order_by(case((exact, 0), else_=1), apps.c.tracked.desc(), apps.c.name, apps.c.id)
        .limit(limit)
    )
    return [_app_info(row) for row in rows]


def chart_at(
    connection: Connection, catalog: ChartCatalog, chart: ChartKey, at: dt.datetime | None
) -> ChartView | None:
    chart_id = catalog.ids(connection, [chart]).get(chart)
    if chart_id is None:
        return None
    row = connection.execute(
        select(snapshots)
        .where(snapshots.c.chart_id == chart_id, *between(snapshots.c.fetched_at, None, at))
        .order_by(snapshots.c.fetched_at.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    return chart_views(connection, [(chart, row)])[0]


def chart_views(connection: Connection, stored: Sequence[tuple[ChartKey, Any]]) -> list[ChartView]:
    """Snapshot rows (all columns of `snapshots`) of the given charts as views with their
    entries, the apps of all of them read at once."""
    rankings = [packing.unpack_ranking(row.ranked_app_ids) for _, row in stored]
    app_ids = {app_id for ranking in rankings for app_id in ranking.values()}
    listed = {
        app.id: app
        for app in connection.execute(
            select(apps.c.id, apps.c.store_id, apps.c.name, apps.c.developer).where(
                apps.c.id.in_(app_ids)
            )
        )
    }
    return [
        _chart_view(chart, row, ranking, listed)
        for (chart, row), ranking in zip(stored, rankings, strict=True)
    ]


def _chart_view(
    chart: ChartKey, row: Any, ranking: Mapping[int, int], listed: Mapping[int, Any]
) -> ChartView:
    return ChartView(
        chart=chart,
        snapshot_id=row.id,
        fetched_at=row.fetched_at,
        confirmed_at=row.confirmed_at,
        feed_updated_at=row.feed_updated_at,
        source=SourceName(row.source),
        requested_depth=row.requested_depth,
        visible_depth=row.visible_depth,
        entries=tuple(
            ChartViewEntry(
                rank=rank,
                store_id=listed[app_id].store_id,
                name=listed[app_id].name,
                developer=listed[app_id].developer,
            )
            for rank, app_id in sorted(ranking.items())
        ),
    )


def latest_of_chart(column: Any, chart_id: Any) -> Any:
    """`column` of the latest snapshot of the chart `chart_id` of the enclosing query: one
    index probe per chart (a correlated LIMIT 1)."""
    return (
        select(column)
        .where(snapshots.c.chart_id == chart_id)
        .order_by(snapshots.c.fetched_at.desc())
        .limit(1)
        .correlate(chart_id.table)
        .scalar_subquery()
    )


def tracked_apps(connection: Connection, catalog: ChartCatalog) -> list[TrackedAppStatus]:
    """Tracked apps with their rank in the latest snapshot of every enabled chart.

    The latest snapshot per chart is one index probe per chart (a correlated LIMIT 1), and
    the ranks come from the packed rankings: no scan of the history.
    """
    tracked = [
        _app_info(row)
        for row in connection.execute(
            select(*_APP_COLUMNS).where(apps.c.tracked == true()).order_by(apps.c.name, apps.c.id)
        )
    ]
    if not tracked:
        return []
    latest_id = latest_of_chart(snapshots.c.id, poll_tasks.c.chart_id)
    latest_ids = [
        snapshot_id
        for snapshot_id in connection.scalars(
            select(latest_id).select_from(poll_tasks).where(poll_tasks.c.enabled == true())
        )
        if snapshot_id is not None
    ]
    latest = connection.execute(
        select(
            snapshots.c.chart_id,
            snapshots.c.fetched_at,
            snapshots.c.confirmed_at,
            snapshots.c.visible_depth,
            snapshots.c.ranked_app_ids,
        ).where(snapshots.c.id.in_(latest_ids))
    ).all()
    keys = catalog.keys(connection, [row.chart_id for row in latest])
    app_ids = {app.id for app in tracked}
    ranks: dict[int, list[CurrentRank]] = {app.id: [] for app in tracked}
    for row in sorted(latest, key=lambda row: keys[row.chart_id]):
        found = packing.ranks_of(row.ranked_app_ids, app_ids)
        for app_id, current in ranks.items():
            current.append(
                CurrentRank(
                    chart=keys[row.chart_id],
                    rank=found.get(app_id),
                    depth=row.visible_depth,
                    fetched_at=row.fetched_at,
                    confirmed_at=row.confirmed_at,
                )
            )
    return [TrackedAppStatus(app=app, ranks=tuple(ranks[app.id])) for app in tracked]


def first_poll_at(
    connection: Connection,
    *,
    country: str | None = None,
    collection: str | None = None,
    device: str | None = None,
) -> dt.datetime | None:
    """When the first of the matching charts was first polled (its first snapshot, fetch or
    folded day): no history point on them is older. One index probe per chart and table."""
    matching = chart_filters(country=country, collection=collection, device=device)
    firsts = [
        select(func.min(table.c[column]))
        .where(table.c.chart_id == charts.c.id)
        .correlate(charts)
        .scalar_subquery()
        for table, column in (
            (snapshots, "fetched_at"),
            (fetch_log, "started_at"),
            (daily_ranks, "day"),
        )
    ]
    # From charts even without a filter: otherwise the subqueries have no chart to correlate
    # with, and each joins every chart to its whole table (a scan of a year of snapshots).
    times = connection.execute(
        select(*(func.min(first) for first in firsts)).select_from(charts).where(*matching)
    )
    snapshot, fetch, day = tuple(times.one())
    found = [moment for moment in (snapshot, fetch) if moment is not None]
    if day is not None:
        found.append(midnight(day))
    return min(found) if found else None
