"""Which feed can serve which chart, and at which URL.

The Marketing Tools v2 feed serves only overall top free / top paid iPhone charts; the legacy
iTunes RSS feed serves every collection, iPhone and iPad, overall and per genre. Both stop at
100 entries. Candidates are returned preferred first so a failing feed can fall back to the
other where it serves the chart.
"""

from __future__ import annotations

import dataclasses

from monitor.model import ALL_GENRES, ChartKey, Collection, Device, SourceName, Store

MAX_DEPTH = 100

_V2_PATHS = {Collection.TOP_FREE: "top-free", Collection.TOP_PAID: "top-paid"}

_LEGACY_TYPES: dict[tuple[Collection, Device], str] = {
    (Collection.TOP_FREE, Device.IPHONE): "topfreeapplications",
    (Collection.TOP_PAID, Device.IPHONE): "toppaidapplications",
    (Collection.TOP_GROSSING, Device.IPHONE): "topgrossingapplications",
    (Collection.TOP_FREE, Device.IPAD): "topfreeipadapplications",
    (Collection.TOP_PAID, Device.IPAD): "toppaidipadapplications",
    (Collection.TOP_GROSSING, Device.IPAD): "topgrossingipadapplications",
    (Collection.NEW, Device.IPHONE): "newapplications",
    (Collection.NEW_FREE, Device.IPHONE): "newfreeapplications",
    (Collection.NEW_PAID, Device.IPHONE): "newpaidapplications",
}


@dataclasses.dataclass(frozen=True)
class FeedEndpoints:
    itunes_base_url: str
    apple_rss_base_url: str


@dataclasses.dataclass(frozen=True)
class FeedRequest:
    source: SourceName
    url: str


def is_supported(chart: ChartKey) -> bool:
    return chart.store is Store.APPLE and (chart.collection, chart.device) in _LEGACY_TYPES


def feed_requests(
    chart: ChartKey, *, depth: int, endpoints: FeedEndpoints, prefer_v2: bool = True
) -> list[FeedRequest]:
    """The feeds able to serve `chart`, preferred first; empty when none can."""
    if not is_supported(chart):
        return []
    if not 1 <= depth <= MAX_DEPTH:
        raise ValueError(f"depth must be between 1 and {MAX_DEPTH}, got {depth}")
    legacy = FeedRequest(SourceName.ITUNES_RSS, _legacy_url(chart, depth, endpoints))
    v2_path = _V2_PATHS.get(chart.collection)
    if v2_path is None or chart.device is not Device.IPHONE or chart.genre != ALL_GENRES:
        return [legacy]
    base = endpoints.apple_rss_base_url.rstrip("/")
    v2 = FeedRequest(
        SourceName.APPLE_V2, f"{base}/api/v2/{chart.country}/apps/{v2_path}/{depth}/apps.json"
    )
    return [v2, legacy] if prefer_v2 else [legacy, v2]


def _legacy_url(chart: ChartKey, depth: int, endpoints: FeedEndpoints) -> str:
    feed_type = _LEGACY_TYPES[(chart.collection, chart.device)]
    genre = "" if chart.genre == ALL_GENRES else f"/genre={chart.genre}"
    base = endpoints.itunes_base_url.rstrip("/")
    return f"{base}/{chart.country}/rss/{feed_type}/limit={depth}{genre}/json"
