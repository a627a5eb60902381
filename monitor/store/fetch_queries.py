"""The fetch log, newest first: `app-rank-monitor fetches`, why a chart fails and what it got."""

from __future__ import annotations

import dataclasses
import datetime as dt

from sqlalchemy import Connection, select

from monitor.model import ChartKey, FetchOutcome, FetchRecord, SourceName
from monitor.store.schedule import ChartCatalog
from monitor.store.tables import fetch_log


@dataclasses.dataclass(frozen=True)
class LoggedFetch:
    """One fetch log row; `recovered`: it failed, and the other feed served the chart in the
    same poll (no gap in history)."""

    fetch: FetchRecord
    recovered: bool


def recent_fetches(
    connection: Connection,
    catalog: ChartCatalog,
    *,
    limit: int,
    chart: ChartKey | None,
    failed_only: bool,
    since: dt.datetime | None,
) -> list[LoggedFetch]:
    """The latest `limit` fetches at or after `since`, of `chart` if given (none when it is not
    stored), failed ones only with `failed_only`."""
    query = select(fetch_log).order_by(fetch_log.c.started_at.desc()).limit(limit)
    if chart is not None:
        chart_id = catalog.ids(connection, [chart]).get(chart)
        if chart_id is None:
            return []
        query = query.where(fetch_log.c.chart_id == chart_id)
    if failed_only:
        query = query.where(fetch_log.c.outcome == FetchOutcome.FAILED.value)
    if since is not None:
        query = query.where(fetch_log.c.started_at >= since)
    rows = connection.execute(query).all()
    keys = catalog.keys(connection, {row.chart_id for row in rows})
    return [
        LoggedFetch(
            FetchRecord(
                chart=keys[row.chart_id],
                started_at=row.started_at,
                duration_seconds=row.duration_ms / 1000,
                outcome=FetchOutcome(row.outcome),
                source=SourceName(row.source) if row.source else None,
                url=row.url,
                http_status=row.http_status,
                attempts=row.attempts,
                body_bytes=row.body_bytes,
                error_class=row.error_class,
                error_message=row.error_message,
                body_sample=bytes(row.body_sample) if row.body_sample is not None else None,
            ),
            recovered=row.recovered,
        )
        for row in rows
    ]
