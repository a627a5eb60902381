"""What the alerting works with: alert events and the notifications that carry them.

Plain frozen dataclasses, standard library only: rule evaluation produces AlertEvents, the
outbox groups them into Notifications, and the channels (email, webhook) render those.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
from collections.abc import Mapping

from monitor.model import ALL_GENRES, ChartKey, Collection, Device, Store

_COLLECTION_TITLES = {
    Collection.TOP_FREE: "Top Free",
    Collection.TOP_PAID: "Top Paid",
    Collection.TOP_GROSSING: "Top Grossing",
    Collection.NEW: "New",
    Collection.NEW_FREE: "New Free",
    Collection.NEW_PAID: "New Paid",
}
_DEVICE_TITLES = {Device.IPHONE: "iPhone", Device.IPAD: "iPad"}


def chart_title(chart: ChartKey) -> str:
    """How people name a chart: "US Top Free iPhone", "JP Top Paid iPad (genre 6014)"."""
    title = (
        f"{chart.country.upper()} {_COLLECTION_TITLES[chart.collection]} "
        f"{_DEVICE_TITLES[chart.device]}"
    )
    return title if chart.genre == ALL_GENRES else f"{title} (genre {chart.genre})"


class RuleKind(enum.StrEnum):
    MOVED = "moved"  # moved by >= N places against the previous snapshot or a window
    ENTERED_TOP = "entered_top"  # now in the top N (N = 1: new #1); resolved when it leaves
    LEFT_TOP = "left_top"  # was in the top N, is not now; resolved when back in
    DROPPED_OUT = "dropped_out"  # listed, now below the visible depth; resolved: re-entered
    RIVAL_PASSED = "rival_passed"  # app A now ranks above app B on the same chart
    BREADTH = "breadth"  # in the top N in >= K of the watched countries


class EventState(enum.StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


class Severity(enum.StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


@dataclasses.dataclass(frozen=True, order=True)
class AppRef:
    """A tracked app: `name` is its watchlist name, the one people and metrics use."""

    store: Store
    store_id: str
    name: str

    @property
    def store_url(self) -> str:
        return f"https://apps.apple.com/app/id{self.store_id}"


@dataclasses.dataclass(frozen=True)
class AlertEvent:
    """A rule's alert for one target starting to fire, firing again after the repeat
    interval, or resolving.

    `chart` is None for breadth alerts, which span the countries of `scope` (e.g. "Top Free
    iPhone"). `rank`, `previous_rank` and `depth` are the target's as of `at` (the snapshot's
    fetch time); `facts` holds what else the rule knows (the rival, the countries, the
    threshold), as text. `dedupe_key` names the episode and its transition: the same event
    evaluated twice has the same key.
    """

    rule: str
    kind: RuleKind
    state: EventState
    severity: Severity
    app: AppRef
    chart: ChartKey | None
    scope: str
    at: dt.datetime
    rank: int | None
    previous_rank: int | None
    depth: int | None
    summary: str
    facts: Mapping[str, str] = dataclasses.field(default_factory=dict)
    dedupe_key: str = ""


@dataclasses.dataclass(frozen=True)
class RankSeries:
    """An app's rank on one chart over the last days, for the picture in a notification:
    (time, rank) points in time order, rank None where it was below `depth`."""

    chart: ChartKey
    points: tuple[tuple[dt.datetime, int | None], ...]
    depth: int


@dataclasses.dataclass(frozen=True)
class AppNews:
    """One app's events in a notification, most important first, and the rank series of
    the charts they are about."""

    app: AppRef
    events: tuple[AlertEvent, ...]
    series: tuple[RankSeries, ...]


@dataclasses.dataclass(frozen=True)
class Notification:
    """What one recipient gets for one group of events: one email, or one webhook post.

    `message_id` is derived from the events' dedupe keys and the recipient, so a message sent
    again after a crash (at-least-once delivery) carries the same id as the first one.
    """

    recipient: str
    message_id: str
    created_at: dt.datetime
    news: tuple[AppNews, ...]

    @property
    def events(self) -> tuple[AlertEvent, ...]:
        return tuple(event for app in self.news for event in app.events)

    @property
    def subject(self) -> str:
        """The news in one line: the first event's summary, and how many more there are."""
        events = self.events
        if not events:
            return "No news"
        more = len(events) - 1
        return events[0].summary + (f" (and {more} more)" if more else "")


def message_id(recipient: str, dedupe_keys: list[str], domain: str) -> str:
    """A Message-ID that is the same whenever the same events go to the same recipient."""
    digest = hashlib.sha256("\n".join([recipient, *sorted(dedupe_keys)]).encode()).hexdigest()
    return f"<{digest[:32]}@{domain}>"
