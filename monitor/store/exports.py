"""Bulk reads for `export`: every snapshot stored in a time range, a page at a time.

Snapshots come chart by chart, oldest first, in pages that go on from where the last one
ended along the (chart, fetched_at) unique index (keyset pagination): each page is one short
read transaction and one index range however much history lies before it, and a long export
never holds a transaction open beside a running service.
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

from sqlalchemy import Connection, func, literal, select, tuple_

from monitor.store.history import between
from monitor.store.queries import chart_views
from monitor.store.results import ChartView
from monitor.store.schedule import ChartCatalog
from monitor.store.tables import snapshots


class PagePosition(NamedTuple):
    """Where a page ended: the next one starts after this snapshot of this chart."""

    chart_id: int
    fetched_at: dt.datetime


def count_snapshots(
    connection: Connection, *, since: dt.datetime | None, until: dt.datetime | None
) -> int:
    counted = connection.scalar(
        select(func.count())
        .select_from(snapshots)
        .where(*between(snapshots.c.fetched_at, since, until))
    )
    return int(counted or 0)


def snapshot_page(
    connection: Connection,
    catalog: ChartCatalog,
    *,
    since: dt.datetime | None,
    until: dt.datetime | None,
    after: PagePosition | None,
    limit: int,
) -> tuple[list[ChartView], PagePosition | None]:
    """Up to `limit` snapshots fetched in [since, until] after `after`, by chart and time,
    with where the page ended (None: it was the last)."""
    query = select(snapshots).where(*between(snapshots.c.fetched_at, since, until))
    if after is not None:
        query = query.where(
            tuple_(snapshots.c.chart_id, snapshots.c.fetched_at)
            > tuple_(
                literal(after.chart_id), literal(after.fetched_at, snapshots.c.fetched_at.type)
            )
        )
    rows = connection.execute(
        query.order_by(snapshots.c.chart_id, snapshots.c.fetched_at).limit(limit)
    ).all()
    keys = catalog.keys(connection, {row.chart_id for row in rows})
    views = chart_views(connection, [(keys[row.chart_id], row) for row in rows])
    end = PagePosition(rows[-1].chart_id, rows[-1].fetched_at) if len(rows) == limit else None
    return views, end
