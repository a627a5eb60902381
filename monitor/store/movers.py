"""Movers: tracked apps' biggest rank changes over a window, chart by chart.

On each chart matching the filters, the latest snapshot at or before `now` is compared with
the latest one at or before `now - window`: two index probes per chart (the snapshots'
(chart_id, fetched_at) key), then one read of `app_ranks` by its primary key for the tracked
apps in those snapshots. A chart without a snapshot before the window has no baseline and is
left out. An app listed in only one of the two snapshots entered or left the chart; it
counts as one place below the other snapshot's visible depth, so that the size of every move
compares on one scale.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from typing import Any

from sqlalchemy import Connection, select, true

from monitor.model import ChartKey, Store
from monitor.store.schedule import ChartCatalog
from monitor.store.tables import app_ranks, apps, charts, snapshots


class Movement(enum.StrEnum):
    ROSE = "rose"
    FELL = "fell"
    ENTERED = "entered"
    LEFT = "left"


@dataclasses.dataclass(frozen=True)
class Mover:
    """A tracked app whose rank on `chart` changed between the two snapshots.

    `rank` is None when it left the chart (below `depth`), `previous_rank` None when it
    entered it (was below `previous_depth`).
    """

    app_id: int
    store: Store
    store_id: str
    name: str
    chart: ChartKey
    rank: int | None
    previous_rank: int | None
    depth: int
    previous_depth: int
    at: dt.datetime
    previous_at: dt.datetime

    @property
    def places(self) -> int:
        """Places gained (negative: lost); off the chart counts as one below its depth."""
        before = self.previous_rank if self.previous_rank is not None else self.previous_depth + 1
        now = self.rank if self.rank is not None else self.depth + 1
        return before - now

    @property
    def movement(self) -> Movement:
        if self.previous_rank is None:
            return Movement.ENTERED
        if self.rank is None:
            return Movement.LEFT
        return Movement.ROSE if self.places > 0 else Movement.FELL


def _latest_at_or_before(moment: dt.datetime) -> Any:
    """The id of the chart's latest snapshot fetched at or before `moment`: one index probe
    per chart (a correlated LIMIT 1)."""
    return (
        select(snapshots.c.id)
        .where(snapshots.c.chart_id == charts.c.id, snapshots.c.fetched_at <= moment)
        .order_by(snapshots.c.fetched_at.desc())
        .limit(1)
        .correlate(charts)
        .scalar_subquery()
    )


def movers(
    connection: Connection,
    catalog: ChartCatalog,
    *,
    now: dt.datetime,
    window: dt.timedelta,
    store: Store = Store.APPLE,
    country: str | None = None,
    collection: str | None = None,
    device: str | None = None,
    genre: str | None = None,
) -> list[Mover]:
    """Every tracked app that moved, entered or left a matching chart within `window` before
    `now`, the biggest move first (then by chart and store id)."""
    filters = [
        column == value
        for column, value in (
            (charts.c.store, store.value),
            (charts.c.country, country),
            (charts.c.collection, collection),
            (charts.c.device, device),
            (charts.c.genre, genre),
        )
        if value is not None
    ]
    pairs = connection.execute(
        select(
            charts.c.id,
            _latest_at_or_before(now).label("current"),
            _latest_at_or_before(now - window).label("previous"),
        ).where(*filters)
    ).all()
    compared = {
        row.id: (row.current, row.previous)
        for row in pairs
        if row.previous is not None and row.current != row.previous
    }
    if not compared:
        return []
    snapshot_ids = {snapshot_id for pair in compared.values() for snapshot_id in pair}
    tracked = list(connection.scalars(select(apps.c.id).where(apps.c.tracked == true())))
    meta = {
        row.id: row
        for row in connection.execute(
            select(snapshots.c.id, snapshots.c.fetched_at, snapshots.c.visible_depth).where(
                snapshots.c.id.in_(snapshot_ids)
            )
        )
    }
    ranked = connection.execute(
        select(
            app_ranks.c.app_id,
            app_ranks.c.chart_id,
            app_ranks.c.fetched_at,
            app_ranks.c.rank,
            apps.c.store,
            apps.c.store_id,
            apps.c.name,
        )
        .join(apps, apps.c.id == app_ranks.c.app_id)
        .where(
            # Each column of the primary key bound: index probes on both backends, not a
            # scan of every rank a tracked app ever held.
            app_ranks.c.app_id.in_(tracked),
            app_ranks.c.chart_id.in_(compared),
            app_ranks.c.fetched_at.in_({row.fetched_at for row in meta.values()}),
        )
    ).all()
    ranks: dict[tuple[int, int], dict[dt.datetime, int]] = {}
    names: dict[int, Any] = {}
    for row in ranked:
        ranks.setdefault((row.app_id, row.chart_id), {})[row.fetched_at] = row.rank
        names[row.app_id] = row
    keys = catalog.keys(connection, compared)
    found = []
    for (app_id, chart_id), by_fetch in ranks.items():
        current, previous = (meta[snapshot_id] for snapshot_id in compared[chart_id])
        rank, previous_rank = by_fetch.get(current.fetched_at), by_fetch.get(previous.fetched_at)
        if rank == previous_rank:
            continue
        app = names[app_id]
        found.append(
            Mover(
                app_id=app_id,
                store=Store(app.store),
                store_id=app.store_id,
                name=app.name,
                chart=keys[chart_id],
                rank=rank,
                previous_rank=previous_rank,
                depth=current.visible_depth,
                previous_depth=previous.visible_depth,
                at=current.fetched_at,
                previous_at=previous.fetched_at,
            )
        )
    found.sort(key=lambda mover: (-abs(mover.places), mover.chart, mover.store_id))
    return found
