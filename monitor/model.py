"""Plain dataclasses of the domain: charts, their entries, snapshots and rank history.

Standard library only: everything else in the package depends on this module, never the reverse.
All datetimes are timezone-aware UTC.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import itertools
import re
from collections.abc import Iterable
from decimal import Decimal

ALL_GENRES = "all"
_COUNTRY = re.compile(r"^[a-z]{2}$")
_GENRE = re.compile(r"^(all|\d{1,6})$")


class Store(enum.StrEnum):
    APPLE = "apple"


class Collection(enum.StrEnum):
    TOP_FREE = "top_free"
    TOP_PAID = "top_paid"
    TOP_GROSSING = "top_grossing"
    NEW = "new"
    NEW_FREE = "new_free"
    NEW_PAID = "new_paid"


class Device(enum.StrEnum):
    IPHONE = "iphone"
    IPAD = "ipad"


class SourceName(enum.StrEnum):
    """A feed format, i.e. one parser; also the `source` label in metrics and the fetch log."""

    APPLE_V2 = "apple_v2"
    ITUNES_RSS = "itunes_rss"


@dataclasses.dataclass(frozen=True, order=True)
class ChartKey:
    """One chart `(store, country, collection, device, genre)`: apple/us/top_free/iphone/all."""

    store: Store
    country: str
    collection: Collection
    device: Device
    genre: str = ALL_GENRES

    def __post_init__(self) -> None:
        if not _COUNTRY.match(self.country):
            raise ValueError(f"country must be a two-letter lower-case code, got {self.country!r}")
        if not _GENRE.match(self.genre):
            raise ValueError(f"genre must be 'all' or a numeric genre id, got {self.genre!r}")

    @property
    def slug(self) -> str:
        return "/".join((self.store, self.country, self.collection, self.device, self.genre))

    def __str__(self) -> str:
        return self.slug

    @classmethod
    def parse(cls, text: str) -> ChartKey:
        """Parse `[store/]country/collection[/device[/genre]]`; device defaults to iphone."""
        parts = [part.strip().lower() for part in text.strip().strip("/").split("/")]
        if parts and parts[0] in Store._value2member_map_:
            store, parts = Store(parts[0]), parts[1:]
        else:
            store = Store.APPLE
        if not 2 <= len(parts) <= 4:
            raise ValueError(
                f"chart {text!r}: expected [store/]country/collection[/device[/genre]]"
            )
        country, collection = parts[0], parts[1]
        device = parts[2] if len(parts) > 2 else Device.IPHONE
        genre = parts[3] if len(parts) > 3 else ALL_GENRES
        try:
            return cls(store, country, Collection(collection), Device(device), genre)
        except ValueError as exc:
            raise ValueError(f"chart {text!r}: {exc}") from None


@dataclasses.dataclass(frozen=True)
class ChartEntry:
    """One app at one position of a chart, with the metadata the feed carried."""

    rank: int
    store_id: str
    name: str
    bundle_id: str | None = None
    developer: str | None = None
    developer_id: str | None = None
    genre_id: str | None = None
    genre_name: str | None = None
    price: Decimal | None = None
    currency: str | None = None
    release_date: dt.date | None = None
    url: str | None = None


@dataclasses.dataclass(frozen=True)
class ChartSnapshot:
    """One successful fetch of one chart.

    Ranks are the 1-based positions in the feed as served. They are strictly increasing; a gap
    means the position held an entry the parser dropped by policy (see `notices`).
    `served_depth` is how many positions the feed served within the requested depth, gaps
    included, so a dropped last entry does not make the chart look short.
    """

    chart: ChartKey
    source: SourceName
    fetched_at: dt.datetime
    requested_depth: int
    entries: tuple[ChartEntry, ...]
    feed_updated_at: dt.datetime | None = None
    notices: tuple[str, ...] = ()
    served_depth: int | None = None

    def __post_init__(self) -> None:
        if self.fetched_at.tzinfo is None:
            raise ValueError("fetched_at must be timezone-aware")
        ranks = [entry.rank for entry in self.entries]
        if any(b <= a for a, b in itertools.pairwise(ranks)) or (ranks and ranks[0] < 1):
            raise ValueError(f"{self.chart}: ranks must be positive and strictly increasing")
        if self.served_depth is not None and ranks and self.served_depth < ranks[-1]:
            raise ValueError(f"{self.chart}: served_depth is less than the last rank")
        ids = [entry.store_id for entry in self.entries]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self.chart}: an app id appears more than once")

    @property
    def visible_depth(self) -> int:
        """How deep the chart was visible in this snapshot (the last position served)."""
        if self.served_depth is not None:
            return self.served_depth
        return self.entries[-1].rank if self.entries else 0

    @property
    def is_short(self) -> bool:
        return self.visible_depth < self.requested_depth


@dataclasses.dataclass(frozen=True)
class WatchedApp:
    """An app on the watchlist: its rank history is derived and kept queryable."""

    store: Store
    store_id: str
    name: str
    bundle_id: str | None = None
    # Who gets this app's alerts, besides [alerts] recipients.
    recipients: tuple[str, ...] = ()


def watchlist_names(apps: Iterable[WatchedApp]) -> dict[tuple[Store, str], str]:
    """(store, store id) -> the name the watchlist gives the app: how alerts, metrics and the
    status page name it."""
    return {(app.store, app.store_id): app.name for app in apps}


class RankStatus(enum.StrEnum):
    """Why a rank point has the rank it has. The three must never be confused."""

    LISTED = "listed"
    BELOW_DEPTH = "below_depth"
    FETCH_FAILED = "fetch_failed"


class Resolution(enum.StrEnum):
    POLL = "poll"  # one poll's snapshot
    DAY = "day"  # a day of snapshots, folded by retention


@dataclasses.dataclass(frozen=True)
class RankPoint:
    """One point of an app's rank series on one chart.

    `rank` is set only when `status` is LISTED. `depth` is the visible depth of the snapshot
    (so "below 100" can be told from "below 37"); `error` names the failure for FETCH_FAILED.

    A DAY point stands for a UTC day whose snapshots retention folded, at its midnight: LISTED
    when some snapshot of the day listed the app, with `rank` its rank in the last of them,
    `best`, `worst` and `hours_listed`; `depth` is the deepest of the day.
    """

    at: dt.datetime
    chart: ChartKey
    status: RankStatus
    rank: int | None = None
    depth: int | None = None
    error: str | None = None
    resolution: Resolution = Resolution.POLL
    best: int | None = None
    worst: int | None = None
    hours_listed: float | None = None


class FetchOutcome(enum.StrEnum):
    CHANGED = "changed"
    UNCHANGED = "unchanged"
    NOT_MODIFIED = "not_modified"
    FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class Validators:
    """HTTP cache validators a feed sent, replayed as If-None-Match / If-Modified-Since."""

    etag: str | None = None
    last_modified: str | None = None


@dataclasses.dataclass(frozen=True)
class PollClaim:
    """A lease on polling one chart, handed out by the poll schedule.

    `token` is the fencing token: a completion is accepted only while it still matches the
    schedule row, so a worker that lost its lease writes nothing.
    """

    chart_id: int
    chart: ChartKey
    token: int
    lease_expires_at: dt.datetime
    validators: Validators
    last_hash: str | None
    last_source: SourceName | None


# Fetching stops this long before a poll lease expires, to leave time to record the outcome;
# a short lease keeps this share of itself instead (a fixed margin longer than the lease would
# fail every poll before its first request).
LEASE_MARGIN_SECONDS = 10.0
LEASE_MARGIN_SHARE = 0.2


def lease_margin_seconds(lease: dt.timedelta) -> float:
    """How long before `lease` runs out a poll stops fetching."""
    return min(LEASE_MARGIN_SECONDS, LEASE_MARGIN_SHARE * lease.total_seconds())


@dataclasses.dataclass(frozen=True)
class FetchRecord:
    """What one poll attempt of one chart did, as written to the fetch log."""

    chart: ChartKey
    started_at: dt.datetime
    duration_seconds: float
    outcome: FetchOutcome
    source: SourceName | None = None
    url: str | None = None
    http_status: int | None = None
    attempts: int = 0
    body_bytes: int | None = None
    error_class: str | None = None
    error_message: str | None = None
    # The head of a body that arrived but was no chart (not JSON, the wrong shape, no
    # entries): what the feed served instead, for debugging. None for every other fetch.
    body_sample: bytes | None = None
