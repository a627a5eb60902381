"""Which feed serves which chart, at which URL, in which order of preference."""

from __future__ import annotations

import pytest

from monitor.model import ChartKey, Collection, Device, SourceName
from monitor.sources.catalog import (
    MAX_DEPTH,
    FeedEndpoints,
    FeedRequest,
    feed_requests,
    is_supported,
)

ENDPOINTS = FeedEndpoints(
    itunes_base_url="https://itunes.apple.com",
    apple_rss_base_url="https://rss.marketingtools.apple.com",
)
LEGACY_TYPES = [
    ("top_free", "iphone", "topfreeapplications"),
    ("top_paid", "iphone", "toppaidapplications"),
    ("top_grossing", "iphone", "topgrossingapplications"),
    ("top_free", "ipad", "topfreeipadapplications"),
    ("top_paid", "ipad", "toppaidipadapplications"),
    ("top_grossing", "ipad", "topgrossingipadapplications"),
    ("new", "iphone", "newapplications"),
    ("new_free", "iphone", "newfreeapplications"),
    ("new_paid", "iphone", "newpaidapplications"),
]


def requests_for(chart: str, depth: int = 100, *, prefer_v2: bool = True) -> list[FeedRequest]:
    return feed_requests(
        ChartKey.parse(chart), depth=depth, endpoints=ENDPOINTS, prefer_v2=prefer_v2
    )


@pytest.mark.parametrize(("collection", "device", "feed_type"), LEGACY_TYPES)
def test_legacy_feed_url_names_the_collection_and_device(
    collection: str, device: str, feed_type: str
) -> None:
    legacy = requests_for(f"jp/{collection}/{device}", depth=50)[-1]
    assert legacy == FeedRequest(
        SourceName.ITUNES_RSS, f"https://itunes.apple.com/jp/rss/{feed_type}/limit=50/json"
    )


@pytest.mark.parametrize(("collection", "device", "feed_type"), LEGACY_TYPES)
def test_genre_chart_is_served_by_the_legacy_feed_alone_with_a_genre_filter(
    collection: str, device: str, feed_type: str
) -> None:
    assert requests_for(f"us/{collection}/{device}/6014", depth=10) == [
        FeedRequest(
            SourceName.ITUNES_RSS,
            f"https://itunes.apple.com/us/rss/{feed_type}/limit=10/genre=6014/json",
        )
    ]


@pytest.mark.parametrize(
    ("collection", "path"), [("top_free", "top-free"), ("top_paid", "top-paid")]
)
def test_overall_iphone_top_free_and_paid_prefer_v2_then_fall_back_to_legacy(
    collection: str, path: str
) -> None:
    v2, legacy = requests_for(f"de/{collection}")
    assert v2 == FeedRequest(
        SourceName.APPLE_V2,
        f"https://rss.marketingtools.apple.com/api/v2/de/apps/{path}/100/apps.json",
    )
    assert legacy.source is SourceName.ITUNES_RSS


def test_legacy_comes_first_when_v2_is_not_preferred() -> None:
    sources = [request.source for request in requests_for("us/top_free", prefer_v2=False)]
    assert sources == [SourceName.ITUNES_RSS, SourceName.APPLE_V2]


@pytest.mark.parametrize(
    "chart", ["us/top_grossing", "us/top_free/ipad", "us/top_paid/ipad", "us/new", "us/new_free"]
)
def test_v2_serves_no_grossing_no_ipad_and_no_new_chart(chart: str) -> None:
    assert [request.source for request in requests_for(chart)] == [SourceName.ITUNES_RSS]


@pytest.mark.parametrize("collection", [Collection.NEW, Collection.NEW_FREE, Collection.NEW_PAID])
def test_new_app_charts_exist_only_for_iphone(collection: Collection) -> None:
    ipad = ChartKey.parse(f"us/{collection}/ipad")
    assert not is_supported(ipad)
    assert feed_requests(ipad, depth=10, endpoints=ENDPOINTS) == []
    assert is_supported(ChartKey.parse(f"us/{collection}/{Device.IPHONE}"))


@pytest.mark.parametrize("depth", [1, MAX_DEPTH])
def test_depth_from_1_to_100_is_in_the_url(depth: int) -> None:
    urls = [request.url for request in requests_for("us/top_free", depth=depth)]
    assert urls == [
        f"https://rss.marketingtools.apple.com/api/v2/us/apps/top-free/{depth}/apps.json",
        f"https://itunes.apple.com/us/rss/topfreeapplications/limit={depth}/json",
    ]


@pytest.mark.parametrize("depth", [0, -1, MAX_DEPTH + 1, 200])
def test_depth_outside_1_to_100_is_refused(depth: int) -> None:
    with pytest.raises(ValueError, match="depth must be between 1 and 100"):
        requests_for("us/top_free", depth=depth)


def test_trailing_slash_on_a_base_url_does_not_double_the_slash() -> None:
    endpoints = FeedEndpoints("http://127.0.0.1:8080/itunes/", "http://127.0.0.1:8080/rss/")
    chart = ChartKey.parse("gb/top_paid")
    assert [request.url for request in feed_requests(chart, depth=5, endpoints=endpoints)] == [
        "http://127.0.0.1:8080/rss/api/v2/gb/apps/top-paid/5/apps.json",
        "http://127.0.0.1:8080/itunes/gb/rss/toppaidapplications/limit=5/json",
    ]
