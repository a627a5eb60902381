"""The notification outbox: claimed by senders a message at a time, finished with the outcome.

A message is the due notifications of one channel and recipient, claimed together under a
lease (on PostgreSQL by one sender at a time per recipient: replicas neither claim the same
rows nor split one message between them) and given a Message-ID derived from their events.
The rows keep that Message-ID: a retry, or a sender taking over after a crash, sends exactly
those rows again under the same id. Every attempt is recorded; its outcome only while the
sender's claim stands (a sender paused past its lease, whose rows another sender took over,
cannot overwrite what that one recorded).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Select, and_, func, or_, select, type_coerce, update

from monitor.alerts.model import (
    AlertEvent,
    AppRef,
    EventState,
    RuleKind,
    Severity,
    message_id,
)
from monitor.model import Store
from monitor.store.results import OutboxStatus
from monitor.store.schedule import ChartCatalog
from monitor.store.tables import (
    UtcDateTime,
    alert_events,
    apps,
    delivery_attempts,
    notifications,
)

# Enough for one poll round's news to one recipient; more waits for the next message.
MAX_EVENTS_PER_MESSAGE = 200


@dataclasses.dataclass(frozen=True)
class OutboxItem:
    notification_id: int
    app_id: int
    event: AlertEvent


@dataclasses.dataclass(frozen=True)
class OutboxMessage:
    """Claimed notifications to send as one message. `first_queued_at` is when the oldest
    was queued (retries give up past an age); `attempt` counts this one."""

    channel: str
    recipient: str
    message_id: str
    claimed_by: str
    first_queued_at: dt.datetime
    attempt: int
    items: tuple[OutboxItem, ...]


def _due(now: dt.datetime) -> Any:
    return and_(
        notifications.c.state == "pending",
        notifications.c.not_before <= now,
        or_(notifications.c.claimed_until.is_(None), notifications.c.claimed_until < now),
    )


def _locked(query: Select[Any], dialect: str) -> Select[Any]:
    # The notification rows alone: an app's row, which a snapshot write may be updating, is
    # only read (locking it would have that write wait, or the claim skip that app's news).
    return query.with_for_update(of=notifications) if dialect == "postgresql" else query


def _one_claimer_per_recipient(connection: Connection, channel: str, recipient: str) -> None:
    """PostgreSQL: wait for any other sender claiming this recipient's notifications to commit.
    Two senders claiming at once would each take part of them (skipping the other's rows),
    and one round's news would go out as two messages; after the wait, the rows the other
    claimed are no longer due. (SQLite's one writer serializes claims by itself.)"""
    key = func.hashtextextended(channel + " " + recipient, 0)
    connection.execute(select(func.pg_advisory_xact_lock(key)))


def claim_message(
    connection: Connection,
    dialect: str,
    catalog: ChartCatalog,
    *,
    owner: str,
    now: dt.datetime,
    lease: dt.timedelta,
    domain: str,
    app_names: Mapping[tuple[Store, str], str],
) -> OutboxMessage | None:
    """Claim the oldest due message, if any."""
    first = connection.execute(
        select(notifications.c.channel, notifications.c.recipient, notifications.c.message_id)
        .where(_due(now))
        .order_by(notifications.c.not_before, notifications.c.id)
        .limit(1)
    ).first()
    if first is None:
        return None
    if dialect == "postgresql":
        _one_claimer_per_recipient(connection, first.channel, first.recipient)
    same = (
        notifications.c.message_id == first.message_id
        if first.message_id is not None
        else and_(
            notifications.c.message_id.is_(None),
            notifications.c.channel == first.channel,
            notifications.c.recipient == first.recipient,
        )
    )
    rows = connection.execute(
        _locked(
            select(
                notifications.c.id,
                notifications.c.created_at,
                notifications.c.attempts,
                alert_events,
                apps.c.store,
                apps.c.store_id,
            )
            .join(alert_events, alert_events.c.id == notifications.c.event_id)
            .join(apps, apps.c.id == alert_events.c.app_id)
            .where(_due(now), same)
            .order_by(alert_events.c.at, alert_events.c.id)
            .limit(MAX_EVENTS_PER_MESSAGE),
            dialect,
        )
    ).all()
    if not rows:
        return None  # the sender waited for took them (PostgreSQL; SQLite cannot)
    keys = [row.dedupe_key for row in rows]
    message = first.message_id or message_id(first.recipient, keys, domain)
    connection.execute(
        update(notifications)
        .where(notifications.c.id.in_([row.id for row in rows]))
        .values(
            message_id=message,
            claimed_by=owner,
            claimed_until=now + lease,
            attempts=notifications.c.attempts + 1,
        )
    )
    charts = catalog.keys(connection, {row.chart_id for row in rows if row.chart_id})
    return OutboxMessage(
        channel=first.channel,
        recipient=first.recipient,
        message_id=message,
        claimed_by=owner,
        first_queued_at=min(row.created_at for row in rows),
        attempt=max(row.attempts for row in rows) + 1,
        items=tuple(
            OutboxItem(row.id, row.app_id, stored_event(row, charts, app_names)) for row in rows
        ),
    )


def stored_event(
    row: Any, charts: Mapping[int, Any], app_names: Mapping[tuple[Store, str], str]
) -> AlertEvent:
    """The event of an alert_events row joined with its app's store and store_id; `charts`
    maps the row's chart id to its key, `app_names` gives the app its watchlist name."""
    store = Store(row.store)
    return AlertEvent(
        rule=row.rule,
        kind=RuleKind(row.kind),
        state=EventState(row.state),
        severity=Severity(row.severity),
        app=AppRef(store, row.store_id, app_names.get((store, row.store_id), row.store_id)),
        chart=charts.get(row.chart_id) if row.chart_id is not None else None,
        scope=row.scope,
        at=row.at,
        rank=row.rank,
        previous_rank=row.previous_rank,
        depth=row.depth,
        summary=row.summary,
        facts=json.loads(row.facts),
        dedupe_key=row.dedupe_key,
    )


def finish_message(
    connection: Connection,
    message: OutboxMessage,
    *,
    outcome: str,
    now: dt.datetime,
    error: str | None = None,
    retry_at: dt.datetime | None = None,
) -> None:
    """Record the attempt and its outcome: "sent", "retrying" (due again at `retry_at`) or
    "dead_lettered"; the outcome only on the rows still claimed by the message's claimer."""
    values: dict[str, Any] = {"claimed_by": None, "claimed_until": None, "last_error": error}
    if outcome == "sent":
        values |= {"state": "sent", "sent_at": now}
    elif outcome == "retrying":
        assert retry_at is not None
        values["not_before"] = retry_at
    else:
        values["state"] = "dead"
    connection.execute(
        update(notifications)
        .where(
            notifications.c.id.in_([item.notification_id for item in message.items]),
            notifications.c.claimed_by == message.claimed_by,
        )
        .values(**values)
    )
    connection.execute(
        delivery_attempts.insert().values(
            at=now,
            message_id=message.message_id,
            channel=message.channel,
            recipient=message.recipient,
            events=len(message.items),
            outcome=outcome,
            error=error,
        )
    )


def status(connection: Connection) -> OutboxStatus:
    row = connection.execute(
        select(func.count(), type_coerce(func.min(notifications.c.created_at), UtcDateTime)).where(
            notifications.c.state == "pending"
        )
    ).one()
    return OutboxStatus(pending=int(row[0]), oldest_pending_at=row[1])
