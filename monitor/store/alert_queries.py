"""Stored alert events, newest first, with what became of their notifications: `alerts list`."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Collection, Mapping, Sequence

from sqlalchemy import Connection, select, tuple_

from monitor.alerts.model import AlertEvent
from monitor.model import Store
from monitor.store.outbox import stored_event
from monitor.store.schedule import ChartCatalog
from monitor.store.sql import among
from monitor.store.tables import alert_events, apps, notifications


@dataclasses.dataclass(frozen=True)
class DeliveryState:
    """One notification of an event: where it goes and how far it got. `state` is pending
    (due at `not_before`, also between retries), sent or dead; `last_error` is the last
    failed attempt's."""

    channel: str
    recipient: str
    state: str
    attempts: int
    not_before: dt.datetime
    sent_at: dt.datetime | None
    last_error: str | None


@dataclasses.dataclass(frozen=True)
class AlertRecord:
    """A stored event, the silence that kept it from being sent, and its notifications (none
    when silenced, or when nobody was to be told)."""

    id: int
    event: AlertEvent
    silenced_by: str | None
    deliveries: tuple[DeliveryState, ...]


def recent_alerts(
    connection: Connection,
    dialect: str,
    catalog: ChartCatalog,
    *,
    limit: int,
    since: dt.datetime | None,
    of_apps: Collection[tuple[Store, str]] | None,
    app_names: Mapping[tuple[Store, str], str],
) -> list[AlertRecord]:
    """The latest `limit` events at or after `since`, of the apps `of_apps` ((store, store id)
    pairs) if given; `app_names` names the apps as the watchlist does."""
    query = (
        select(alert_events, apps.c.store, apps.c.store_id)
        .join(apps, apps.c.id == alert_events.c.app_id)
        .order_by(alert_events.c.at.desc(), alert_events.c.id.desc())
        .limit(limit)
    )
    if since is not None:
        query = query.where(alert_events.c.at >= since)
    if of_apps is not None:
        pairs = [(store.value, store_id) for store, store_id in of_apps]
        query = query.where(tuple_(apps.c.store, apps.c.store_id).in_(pairs))
    rows = connection.execute(query).all()
    charts = catalog.keys(connection, {row.chart_id for row in rows if row.chart_id is not None})
    deliveries = _deliveries(connection, dialect, [row.id for row in rows])
    return [
        AlertRecord(
            id=row.id,
            event=stored_event(row, charts, app_names),
            silenced_by=row.silenced_by,
            deliveries=tuple(deliveries.get(row.id, ())),
        )
        for row in rows
    ]


def _deliveries(
    connection: Connection, dialect: str, event_ids: Sequence[int]
) -> dict[int, list[DeliveryState]]:
    if not event_ids:
        return {}
    rows = connection.execute(
        select(
            notifications.c.event_id,
            notifications.c.channel,
            notifications.c.recipient,
            notifications.c.state,
            notifications.c.attempts,
            notifications.c.not_before,
            notifications.c.sent_at,
            notifications.c.last_error,
        )
        .where(among(notifications.c.event_id, "event_ids", dialect))
        .order_by(notifications.c.id),
        {"event_ids": list(event_ids)},
    )
    by_event: dict[int, list[DeliveryState]] = {}
    for row in rows:
        by_event.setdefault(row.event_id, []).append(
            DeliveryState(
                channel=row.channel,
                recipient=row.recipient,
                state=row.state,
                attempts=row.attempts,
                not_before=row.not_before,
                sent_at=row.sent_at,
                last_error=row.last_error,
            )
        )
    return by_event
