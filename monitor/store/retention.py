"""Retention: snapshots older than the policy folded into daily summaries, then removed; the
fetch log kept for its own number of days.

Each chart is folded up to the horizon (a UTC midnight `snapshot_days` before now) in
transactions of at most a month of its snapshots: the summaries, the chart's new
`folded_before` and, on SQLite, the deletion of the folded snapshots and their derived ranks
commit together, so that a run stopped anywhere loses nothing and repeats nothing. History
reads summaries before `folded_before` and snapshots from it on (history.py), whichever of the
two backends removed them when.

On PostgreSQL the folded snapshots go with their month: once every chart is folded past a
month's end, its partitions of `snapshots` and `app_ranks` are dropped, and so are the months
of `fetch_log` past its own cutoff. Rows outside a droppable month (in the default partition)
are deleted chart by chart.

Retention never removes a snapshot that the service still reads: each chart's latest one, the
one standing at its `folded_before` (the next fold starts from it), and those an alert hold
names. A month on PostgreSQL holding one of them is kept, and its other rows deleted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    TableClause,
    column,
    delete,
    func,
    select,
    table,
    true,
    union,
    update,
)

from monitor.errors import StoreError
from monitor.model import ChartKey
from monitor.store import folding, partitions
from monitor.store.engine import give_back_free_pages
from monitor.store.schedule import ChartCatalog
from monitor.store.sql import in_transaction, insert_ignoring_conflicts, reading
from monitor.store.tables import (
    alert_holds,
    app_ranks,
    apps,
    charts,
    daily_ranks,
    fetch_log,
    snapshots,
)

log = logging.getLogger(__name__)

# The most of one chart's history a fold transaction covers.
DAYS_PER_BATCH = 31
# SQLite: fetch log rows deleted by one transaction.
FETCHES_PER_BATCH = 20_000


@dataclasses.dataclass(frozen=True)
class RetentionPolicy:
    snapshot_days: int = 400
    fetch_log_days: int = 30
    # The configured [poll] interval: in a summary a snapshot stands for two of them past its
    # last confirmation at most (folding.py).
    poll_interval: dt.timedelta = dt.timedelta(hours=1)


@dataclasses.dataclass
class RetentionReport:
    horizon: dt.datetime  # snapshots fetched before it are folded
    fetch_log_cutoff: dt.datetime
    days_folded: int = 0
    snapshots_deleted: int = 0
    fetches_deleted: int = 0
    partitions_made: list[str] = dataclasses.field(default_factory=list)
    partitions_dropped: list[str] = dataclasses.field(default_factory=list)
    bytes_reclaimed: int = 0
    failed_charts: list[str] = dataclasses.field(default_factory=list)
    # Stopped before the end (the service shutting down): a later run goes on from there.
    interrupted: bool = False

    def summary(self) -> str:
        parts = [
            f"folded {self.days_folded} chart-days before {self.horizon:%Y-%m-%d}",
            f"deleted {self.snapshots_deleted} snapshots and {self.fetches_deleted} fetch log rows",
        ]
        if self.partitions_dropped:
            parts.append(f"dropped partitions {', '.join(self.partitions_dropped)}")
        if self.partitions_made:
            parts.append(f"made partitions {', '.join(self.partitions_made)}")
        if self.bytes_reclaimed:
            parts.append(f"reclaimed {self.bytes_reclaimed} bytes")
        if self.failed_charts:
            parts.append(f"charts not folded: {', '.join(self.failed_charts)}")
        if self.interrupted:
            parts.append("interrupted")
        return "; ".join(parts)


Progress = Callable[[int, int], None]


def horizon_of(policy: RetentionPolicy, now: dt.datetime) -> dt.datetime:
    return folding.midnight((now - dt.timedelta(days=policy.snapshot_days)).date())


def run_retention(
    engine: Engine,
    dialect: str,
    policy: RetentionPolicy,
    *,
    now: dt.datetime,
    progress: Progress | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> RetentionReport:
    """Fold and remove what `policy` no longer keeps, as of `now`. Checked between
    transactions, `stopping()` ends the run early (nothing is lost: each transaction is
    whole, and the next run starts where this one ended)."""
    report = RetentionReport(
        horizon=horizon_of(policy, now),
        fetch_log_cutoff=now - dt.timedelta(days=policy.fetch_log_days),
    )
    run = _Run(engine, dialect, report, stopping, stands_for=2 * policy.poll_interval)
    if run.postgresql:
        report.partitions_made = partitions.make_months_ahead(engine, now)
    chart_rows = reading(engine, lambda c: c.execute(_CHARTS_TO_FOLD).all())
    for done, row in enumerate(chart_rows, start=1):
        if stopping():
            report.interrupted = True
            return report
        try:
            run.fold_chart(row.id, row.folded_before)
        except (StoreError, ValueError) as exc:
            # The chart lags: no month it may need is dropped (drop_folded_months).
            slug = "/".join(row._mapping[column] for column in _CHART_KEY)
            log.warning("retention: chart %s not folded: %s", slug, exc)
            report.failed_charts.append(slug)
        if progress is not None:
            progress(done, len(chart_rows))
    if stopping():
        report.interrupted = True
        return report
    if run.postgresql:
        run.drop_folded_months()
    run.prune_fetch_log([row.id for row in chart_rows])
    if not run.postgresql:
        report.bytes_reclaimed = give_back_free_pages(engine)
    return report


_CHART_HORIZONS = select(charts.c.id, charts.c.folded_before).order_by(charts.c.id)
# As the store wrote them, not parsed: a chart of a store this version no longer knows is
# folded all the same.
_CHART_KEY = ("store", "country", "collection", "device", "genre")
_CHARTS_TO_FOLD = _CHART_HORIZONS.add_columns(*(charts.c[column] for column in _CHART_KEY))
_SNAPSHOT_COLUMNS = (
    snapshots.c.fetched_at,
    snapshots.c.confirmed_at,
    snapshots.c.visible_depth,
    snapshots.c.ranked_app_ids,
)


class _Run:
    def __init__(
        self,
        engine: Engine,
        dialect: str,
        report: RetentionReport,
        stopping: Callable[[], bool],
        *,
        stands_for: dt.timedelta,
    ) -> None:
        self._stands_for = stands_for
        self._engine = engine
        self._stopping = stopping
        self._dialect = dialect
        self.postgresql = dialect == "postgresql"
        self._report = report
        self._tracked = reading(
            engine, lambda c: list(c.scalars(select(apps.c.id).where(apps.c.tracked == true())))
        )

    # -- folding ---------------------------------------------------------------------------

    def fold_chart(self, chart_id: int, folded_before: dt.datetime | None) -> None:
        """Fold the chart up to the horizon, at most DAYS_PER_BATCH days a transaction."""
        horizon = self._report.horizon
        start = folded_before
        if start is None:
            first = reading(
                self._engine,
                lambda c: c.scalar(
                    select(func.min(snapshots.c.fetched_at)).where(snapshots.c.chart_id == chart_id)
                ),
            )
            start = horizon if first is None else min(folding.midnight(first.date()), horizon)
            if start == horizon:  # nothing to fold yet: the chart is folded up to here
                in_transaction(self._engine, lambda c: _set_folded(c, chart_id, horizon))
        while start < horizon and not self._stopping():
            end = min(horizon, start + dt.timedelta(days=DAYS_PER_BATCH))

            def batch(
                connection: Connection, start: dt.datetime = start, end: dt.datetime = end
            ) -> tuple[int, int]:
                return self._fold_batch(connection, chart_id, start, end)

            days, deleted = in_transaction(self._engine, batch)
            self._report.days_folded += days
            self._report.snapshots_deleted += deleted
            start = end

    def _fold_batch(
        self, connection: Connection, chart_id: int, start: dt.datetime, end: dt.datetime
    ) -> tuple[int, int]:
        """Fold the chart's days from `start` to `end`; on SQLite delete what was folded.
        Returns (days written, snapshots deleted)."""
        stored = [
            folding.StoredSnapshot(
                row.fetched_at, row.confirmed_at, row.visible_depth, bytes(row.ranked_app_ids)
            )
            for row in _snapshots_for_fold(connection, chart_id, start, end)
        ]
        rows = [
            {
                "chart_id": chart_id,
                "day": summary.day,
                "depth": summary.depth,
                "snapshots": summary.snapshots,
                "app_ids": app_ids,
                "stats": stats,
            }
            for summary in folding.fold(
                stored, first_day=start.date(), end_day=end.date(), stands_for=self._stands_for
            )
            for app_ids, stats in [summary.packed()]
        ]
        if rows:
            connection.execute(insert_ignoring_conflicts(daily_ranks, self._dialect), rows)
        _set_folded(connection, chart_id, end)
        if self.postgresql:
            return len(rows), 0  # the months go whole (drop_folded_months)
        return len(rows), self._delete_snapshots(connection, (snapshots, app_ranks), chart_id, end)

    def _delete_snapshots(
        self,
        connection: Connection,
        tables: tuple[TableClause, TableClause],
        chart_id: int,
        before: dt.datetime,
    ) -> int:
        """Delete the chart's snapshots fetched before `before` but those kept, and their
        derived ranks, from `tables` (those of `snapshots` and `app_ranks`, or partitions of
        them); returns the snapshots deleted."""
        snapshots_in, ranks_in = tables
        keep = list(_kept(connection, chart_id, before))

        def removed(where: TableClause) -> list[Any]:
            conditions = [where.c.chart_id == chart_id, where.c.fetched_at < before]
            if keep:
                conditions.append(where.c.fetched_at.not_in(keep))
            return conditions

        deleted = connection.execute(delete(snapshots_in).where(*removed(snapshots_in))).rowcount
        if self._tracked and deleted:
            # Every column of the primary key bound: range probes, not a scan per chart.
            connection.execute(
                delete(ranks_in).where(ranks_in.c.app_id.in_(self._tracked), *removed(ranks_in))
            )
        return int(deleted)

    # -- PostgreSQL: whole months ----------------------------------------------------------

    def drop_folded_months(self) -> None:
        """Drop the months of `snapshots` and `app_ranks` that every chart is folded past;
        delete the folded rows left elsewhere (the default partition, a month holding a
        snapshot that is kept), a chart a transaction."""
        horizons, droppable, leftovers = reading(self._engine, self._month_plan)
        for month in droppable:
            self._drop(month)
        for snapshots_name, ranks_name in leftovers:
            tables = (_like(snapshots_name, snapshots), _like(ranks_name, app_ranks))
            for chart_id, horizon in horizons.items():
                delete_chart = functools.partial(
                    self._delete_snapshots, tables=tables, chart_id=chart_id, before=horizon
                )
                self._report.snapshots_deleted += in_transaction(self._engine, delete_chart)

    def _month_plan(
        self, connection: Connection
    ) -> tuple[
        dict[int, dt.datetime],
        list[list[partitions.MonthPartition]],
        list[tuple[str, str]],
    ]:
        """(each chart's folded horizon, the months to drop with their app_ranks month, the
        (snapshots, app_ranks) partitions to delete folded rows from)."""
        horizons = {row.id: row.folded_before for row in connection.execute(_CHART_HORIZONS)}
        if not horizons or None in horizons.values():
            return {}, [], []  # a chart not yet folded may still need any month
        floor = min(horizon for horizon in horizons.values() if horizon is not None)
        kept_months = {
            partitions.month_start(moment)
            for chart_id, horizon in horizons.items()
            if horizon is not None
            for moment in _kept(connection, chart_id, horizon)
        }
        rank_months = {p.month: p for p in partitions.month_partitions(connection, "app_ranks")}
        droppable = []
        leftovers = [(partitions.default_partition("snapshots"), "app_ranks_default")]
        for month in partitions.month_partitions(connection, "snapshots"):
            if month.end > floor:
                break
            ranks_month = rank_months.get(month.month)
            if month.month in kept_months:
                ranks_name = ranks_month.name if ranks_month else "app_ranks_default"
                leftovers.append((month.name, ranks_name))
            else:
                droppable.append([p for p in (ranks_month, month) if p is not None])
        return {c: h for c, h in horizons.items() if h is not None}, droppable, leftovers

    def _drop(self, together: Sequence[partitions.MonthPartition]) -> None:
        def drop(connection: Connection) -> None:
            for partition in together:
                partitions.drop_month(connection, partition)

        if partitions.alter_briefly(self._engine, drop, together[-1].name):
            self._report.partitions_dropped.extend(p.name for p in together)

    # -- the fetch log ---------------------------------------------------------------------

    def prune_fetch_log(self, chart_ids: Sequence[int]) -> None:
        """Remove what is older than the cutoff: on PostgreSQL whole months and rows of the
        default partition, on SQLite rows, FETCHES_PER_BATCH a transaction."""
        cutoff = self._report.fetch_log_cutoff
        target: TableClause = fetch_log
        if self.postgresql:
            months = reading(self._engine, lambda c: partitions.month_partitions(c, "fetch_log"))
            for month in months:
                if month.end > cutoff:
                    break
                self._drop([month])
            target = _like(partitions.default_partition("fetch_log"), fetch_log)
        for chart_id in chart_ids:
            delete_batch = functools.partial(
                _delete_fetches, target=target, chart_id=chart_id, cutoff=cutoff
            )
            while True:
                deleted = in_transaction(self._engine, delete_batch)
                self._report.fetches_deleted += deleted
                if deleted < FETCHES_PER_BATCH:
                    break


def _delete_fetches(
    connection: Connection, *, target: TableClause, chart_id: int, cutoff: dt.datetime
) -> int:
    """Delete the chart's oldest fetch log rows before `cutoff`, at most FETCHES_PER_BATCH."""
    oldest = (
        select(target.c.started_at)
        .where(target.c.chart_id == chart_id, target.c.started_at < cutoff)
        .order_by(target.c.started_at)
        .limit(FETCHES_PER_BATCH)
        .subquery()
    )
    last = connection.scalar(select(func.max(oldest.c.started_at)))
    if last is None:
        return 0
    deleted = connection.execute(
        delete(target).where(target.c.chart_id == chart_id, target.c.started_at <= last)
    )
    return int(deleted.rowcount)


def _snapshots_for_fold(
    connection: Connection, chart_id: int, start: dt.datetime, end: dt.datetime
) -> list[Any]:
    """The snapshots `folding.fold` needs for the days from `start` to `end`."""
    of_chart = snapshots.c.chart_id == chart_id
    standing = connection.execute(
        select(*_SNAPSHOT_COLUMNS)
        .where(of_chart, snapshots.c.fetched_at < start)
        .order_by(snapshots.c.fetched_at.desc())
        .limit(1)
    ).all()
    within = connection.execute(
        select(*_SNAPSHOT_COLUMNS)
        .where(of_chart, snapshots.c.fetched_at >= start, snapshots.c.fetched_at < end)
        .order_by(snapshots.c.fetched_at)
    ).all()
    after = connection.execute(
        select(*_SNAPSHOT_COLUMNS)
        .where(of_chart, snapshots.c.fetched_at >= end)
        .order_by(snapshots.c.fetched_at)
        .limit(1)
    ).all()
    return [*standing, *within, *after]


def _set_folded(connection: Connection, chart_id: int, folded_before: dt.datetime) -> None:
    connection.execute(
        update(charts).where(charts.c.id == chart_id).values(folded_before=folded_before)
    )


def _kept(connection: Connection, chart_id: int, folded_before: dt.datetime) -> set[dt.datetime]:
    """Fetch times of the chart's snapshots that retention keeps (module docstring)."""
    of_chart = snapshots.c.chart_id == chart_id
    latest = select(func.max(snapshots.c.fetched_at)).where(of_chart)
    standing = select(func.max(snapshots.c.fetched_at)).where(
        of_chart, snapshots.c.fetched_at < folded_before
    )
    on_chart = alert_holds.c.chart_id == chart_id
    held_ids = union(
        select(alert_holds.c.baseline_snapshot_id).where(on_chart),
        select(alert_holds.c.held_snapshot_id).where(on_chart),
    )
    held = select(snapshots.c.fetched_at).where(of_chart, snapshots.c.id.in_(held_ids))
    kept = {connection.scalar(latest), connection.scalar(standing), *connection.scalars(held)}
    return {moment for moment in kept if moment is not None}


def folded_before(
    connection: Connection, catalog: ChartCatalog, chart: ChartKey
) -> dt.datetime | None:
    chart_id = catalog.ids(connection, [chart]).get(chart)
    if chart_id is None:
        return None
    return connection.scalar(select(charts.c.folded_before).where(charts.c.id == chart_id))


def _like(name: str, parent: Any) -> TableClause:
    """A partition of `parent`, addressed by its own name, with the parent's columns."""
    return table(name, *(column(c.name, c.type) for c in parent.c))
