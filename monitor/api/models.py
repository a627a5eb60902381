"""The read API's response bodies as pydantic models: the source of its OpenAPI schemas.

Field for field what the command line's `--format json` prints (see monitor.documents), so a
script can switch between the two; list responses add the paging fields.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from monitor.model import Collection, Device, RankStatus, Resolution, SourceName, Store
from monitor.store.movers import Movement


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ApiError(_Body):
    """A request the API could not answer; `parameter` names the one that was wrong."""

    error: str = Field(description="What was wrong, for people.")
    parameter: str | None = Field(
        default=None, description="The path or query parameter at fault, when one was."
    )


class Page(_Body):
    has_more: bool = Field(description="Whether more items follow this page.")
    next: str | None = Field(
        description="URL (path and query) of the next page; null on the last page."
    )


class ChartRank(_Body):
    chart: str = Field(description="Chart slug, e.g. apple/us/top_free/iphone/all.")
    rank: int | None = Field(description="1-based rank; null when below the visible depth.")
    depth: int = Field(description="Visible depth of the chart's latest snapshot.")
    fetched_at: dt.datetime = Field(description="When the latest snapshot was fetched.")
    confirmed_at: dt.datetime = Field(description="When its content was last served again.")


class TrackedApp(_Body):
    store: Store
    store_id: str
    name: str = Field(description="The watchlist's name for the app.")
    store_name: str = Field(description="The name the store lists it under now.")
    best_rank: int | None
    best_chart: str | None
    charts_listed: int
    ranks: list[ChartRank] = Field(description="Every enabled chart with a snapshot.")


class AppsPage(Page):
    apps: list[TrackedApp]


class HistoryPoint(_Body):
    time: dt.datetime
    chart: str
    store: Store
    country: str
    collection: Collection
    device: Device
    genre: str
    status: RankStatus = Field(
        description="listed; below_depth (fetched, not within depth); fetch_failed (no data)."
    )
    rank: int | None = Field(
        description="The rank; for a day point, the rank in the day's last snapshot listing it."
    )
    depth: int | None
    error: str | None
    resolution: Resolution = Field(
        description="poll: one snapshot; day: a UTC day whose snapshots retention folded into"
        " a daily summary (time is its midnight)."
    )
    best: int | None = Field(description="Day points: the best rank of the day.")
    worst: int | None = Field(description="Day points: the worst rank of the day.")
    hours_listed: float | None = Field(description="Day points: hours of the day listed.")


class HistoryPage(Page):
    store_id: str
    name: str
    points: list[HistoryPoint] = Field(description="Sorted by time, then chart.")


class ChartEntry(_Body):
    rank: int
    store_id: str
    name: str
    developer: str | None


class Chart(_Body):
    chart: str
    snapshot_id: int
    fetched_at: dt.datetime
    confirmed_at: dt.datetime
    feed_updated_at: dt.datetime | None
    source: SourceName
    requested_depth: int
    visible_depth: int
    entries: list[ChartEntry]


class MoverItem(_Body):
    store_id: str
    name: str = Field(description="The watchlist's name for the app, else the store's.")
    chart: str
    movement: Movement = Field(
        description="rose, fell, entered (was below the chart's depth) or left (is now)."
    )
    places: int = Field(
        description="Places gained (negative: lost); off the chart counts as depth + 1."
    )
    rank: int | None
    previous_rank: int | None
    depth: int
    previous_depth: int
    at: dt.datetime = Field(description="Fetch time of the snapshot compared (now).")
    previous_at: dt.datetime = Field(description="Fetch time of the snapshot compared with.")


class MoversPage(Page):
    since: dt.datetime = Field(description="Start of the window: now minus `window`.")
    movers: list[MoverItem] = Field(description="Biggest move first.")


class Delivery(_Body):
    channel: str
    recipient: str
    state: Literal["pending", "sent", "dead"]
    attempts: int
    not_before: dt.datetime
    sent_at: dt.datetime | None
    last_error: str | None


class Alert(_Body):
    id: int
    at: dt.datetime
    app: str
    store_id: str
    chart: str | None
    scope: str
    rule: str
    kind: str
    state: Literal["firing", "resolved"]
    severity: str
    summary: str
    silenced_by: str | None
    deliveries: list[Delivery]


class AlertsPage(Page):
    alerts: list[Alert] = Field(description="Newest first.")
