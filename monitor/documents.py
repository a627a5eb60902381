"""Query results as JSON-ready documents: what `--format json` prints and the read API serves.

One shape per kind of result, so the command line and the API never drift apart: a chart as
its slug (and split into its parts where a row is about one chart), times in ISO 8601 UTC.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from monitor.alerts.channels import shown_recipient
from monitor.model import RankPoint
from monitor.store.alert_queries import AlertRecord, DeliveryState
from monitor.store.repository import ChartView


def point_document(point: RankPoint) -> dict[str, Any]:
    """One point of `history`."""
    return {
        "time": point.at.isoformat(),
        "chart": point.chart.slug,
        "store": point.chart.store.value,
        "country": point.chart.country,
        "collection": point.chart.collection.value,
        "device": point.chart.device.value,
        "genre": point.chart.genre,
        "status": point.status.value,
        "rank": point.rank,
        "depth": point.depth,
        "error": point.error,
        "resolution": point.resolution.value,
        "best": point.best,
        "worst": point.worst,
        "hours_listed": point.hours_listed,
    }


def chart_document(view: ChartView) -> dict[str, Any]:
    """A stored snapshot of a chart with its entries: `chart`."""
    return {
        "chart": view.chart.slug,
        "snapshot_id": view.snapshot_id,
        "fetched_at": view.fetched_at.isoformat(),
        "confirmed_at": view.confirmed_at.isoformat(),
        "feed_updated_at": view.feed_updated_at.isoformat() if view.feed_updated_at else None,
        "source": view.source.value,
        "requested_depth": view.requested_depth,
        "visible_depth": view.visible_depth,
        "entries": [dataclasses.asdict(entry) for entry in view.entries],
    }


def alert_document(record: AlertRecord) -> dict[str, Any]:
    """A stored alert event with its deliveries: `alerts list`."""
    event = record.event
    return {
        "id": record.id,
        "at": event.at.isoformat(),
        "app": event.app.name,
        "store_id": event.app.store_id,
        "chart": event.chart.slug if event.chart is not None else None,
        "scope": event.scope,
        "rule": event.rule,
        "kind": event.kind.value,
        "state": event.state.value,
        "severity": event.severity.value,
        "summary": event.summary,
        "silenced_by": record.silenced_by,
        "deliveries": [delivery_document(one) for one in record.deliveries],
    }


def delivery_recipient(delivery: DeliveryState) -> str:
    """Where a delivery goes: a webhook URL may carry credentials; an address is shown as is."""
    return shown_recipient(delivery.channel, delivery.recipient)


def delivery_document(delivery: DeliveryState) -> dict[str, Any]:
    return {
        "channel": delivery.channel,
        "recipient": delivery_recipient(delivery),
        "state": delivery.state,
        "attempts": delivery.attempts,
        "not_before": delivery.not_before.isoformat(),
        "sent_at": delivery.sent_at.isoformat() if delivery.sent_at else None,
        "last_error": delivery.last_error,
    }
