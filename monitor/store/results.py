"""What the repository returns besides monitor.model types: small frozen dataclasses."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from monitor.alerts.model import AlertEvent
from monitor.model import ChartKey, SourceName, Store


@dataclasses.dataclass(frozen=True)
class ChartSync:
    """What `sync_charts` changed: charts new to the schedule, re-enabled, disabled."""

    added: int
    reenabled: int
    disabled: int
    enabled: int

    def __str__(self) -> str:
        return (
            f"{self.enabled} enabled, {self.added} added, {self.reenabled} re-enabled, "
            f"{self.disabled} disabled"
        )


@dataclasses.dataclass(frozen=True)
class ScheduleStatus:
    """The poll schedule at a glance, for /readyz, the round planner and logs."""

    enabled: int
    due_now: int
    leased: int
    failing: int
    oldest_due_at: dt.datetime | None


@dataclasses.dataclass(frozen=True)
class ChartHealth:
    """An enabled chart's poll record: when it last succeeded and how often it failed since."""

    chart: ChartKey
    last_success_at: dt.datetime | None
    consecutive_failures: int
    last_error: str | None


@dataclasses.dataclass(frozen=True)
class TrackedRankChange:
    """A tracked app whose rank on the chart differs from the previous snapshot's."""

    app_id: int
    store_id: str
    before: int | None
    after: int | None


@dataclasses.dataclass(frozen=True)
class AlertsWritten:
    """What a snapshot did to alerting: the events it stored, or why it was held back (it
    looked like a feed glitch; the next snapshot decides)."""

    events: tuple[AlertEvent, ...] = ()
    held: str | None = None


@dataclasses.dataclass(frozen=True)
class SnapshotWrite:
    """The result of `record_snapshot`.

    `stored` is False when nothing new was written: the content equals the previous snapshot
    (its `confirmed_at` moved instead) or this exact fetch was stored before (a replay).
    """

    stored: bool
    snapshot_id: int
    new_apps: int = 0
    changes: tuple[TrackedRankChange, ...] = ()
    alerts: AlertsWritten = AlertsWritten()

    @property
    def ranks_changed(self) -> int:
        return len(self.changes)


@dataclasses.dataclass(frozen=True)
class WatchlistSync:
    """What `sync_watchlist` changed; `backfilled` counts rank rows derived for new apps."""

    tracked: int
    added: int
    created: int
    untracked: int
    backfilled: int

    def __str__(self) -> str:
        return (
            f"{self.tracked} tracked, {self.added} newly tracked ({self.created} never seen), "
            f"{self.untracked} untracked, {self.backfilled} rank points backfilled"
        )


@dataclasses.dataclass(frozen=True)
class AppInfo:
    id: int
    store: Store
    store_id: str
    name: str
    developer: str | None
    bundle_id: str | None
    genre_name: str | None
    tracked: bool
    first_seen_at: dt.datetime | None
    last_seen_at: dt.datetime | None


@dataclasses.dataclass(frozen=True)
class ChartViewEntry:
    rank: int
    store_id: str
    name: str
    developer: str | None


@dataclasses.dataclass(frozen=True)
class ChartView:
    """One stored snapshot of a chart, with app names from the apps table."""

    chart: ChartKey
    snapshot_id: int
    fetched_at: dt.datetime
    confirmed_at: dt.datetime
    feed_updated_at: dt.datetime | None
    source: SourceName
    requested_depth: int
    visible_depth: int
    entries: tuple[ChartViewEntry, ...]


@dataclasses.dataclass(frozen=True)
class CurrentRank:
    """A tracked app on one enabled chart, as of the chart's latest snapshot.

    `rank` is None when the app is below the snapshot's visible `depth`.
    """

    chart: ChartKey
    rank: int | None
    depth: int
    fetched_at: dt.datetime
    confirmed_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class TrackedAppStatus:
    """A tracked app with its rank on every enabled chart that has a snapshot."""

    app: AppInfo
    ranks: tuple[CurrentRank, ...]

    @property
    def listed(self) -> tuple[CurrentRank, ...]:
        return tuple(current for current in self.ranks if current.rank is not None)

    @property
    def best(self) -> CurrentRank | None:
        listed = self.listed
        return min(listed, key=lambda c: (c.rank, c.chart)) if listed else None

    @property
    def best_rank(self) -> int | None:
        best = self.best
        return best.rank if best is not None else None

    def rank_on(self, chart: ChartKey) -> CurrentRank | None:
        return next((current for current in self.ranks if current.chart == chart), None)

    def as_row(self) -> dict[str, Any]:
        best = self.best
        return {
            "store_id": self.app.store_id,
            "name": self.app.name,
            "best_rank": best.rank if best else None,
            "best_chart": best.chart.slug if best else None,
            "charts_listed": len(self.listed),
        }


@dataclasses.dataclass(frozen=True)
class ServiceState:
    """What the metrics and the status page show, read in one transaction: consistent."""

    tracked: tuple[TrackedAppStatus, ...]
    charts: tuple[ChartHealth, ...]
    schedule: ScheduleStatus
    outbox: OutboxStatus


@dataclasses.dataclass(frozen=True)
class OutboxStatus:
    """Notifications waiting to be sent, and when the oldest of them was queued."""

    pending: int
    oldest_pending_at: dt.datetime | None
