"""The Marketing Tools RSS v2 parser, on the real US top-free payload and its variations."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from monitor.errors import EmptyChart, FeedFormatError
from monitor.model import ChartKey, ChartSnapshot, SourceName
from monitor.sources.apple_v2 import parse_apple_v2

FEEDS = Path(__file__).resolve().parent.parent / "fixtures" / "feeds"
US_TOP_FREE = FEEDS / "apple_v2_us_top-free_100_2026-05-26.json"
FETCHED_AT = dt.datetime(2026, 5, 26, 2, 5, tzinfo=dt.UTC)
CHATGPT = "6448311069"
CLAUDE = "6473753684"


def sample() -> Any:
    return json.loads(US_TOP_FREE.read_bytes())


def parse(body: bytes | Any, chart: str = "us/top_free", depth: int = 100) -> ChartSnapshot:
    if not isinstance(body, bytes):
        body = json.dumps(body, ensure_ascii=False).encode()
    return parse_apple_v2(
        body, chart=ChartKey.parse(chart), requested_depth=depth, fetched_at=FETCHED_AT
    )


def test_us_top_free_sample_is_read_whole_with_chatgpt_first_and_claude_third() -> None:
    snapshot = parse(US_TOP_FREE.read_bytes())
    assert snapshot.source is SourceName.APPLE_V2
    assert [entry.rank for entry in snapshot.entries] == list(range(1, 101))
    assert (snapshot.notices, snapshot.is_short) == ((), False)
    ranks = {entry.store_id: entry.rank for entry in snapshot.entries}
    assert (ranks[CHATGPT], ranks[CLAUDE]) == (1, 3)
    assert snapshot.feed_updated_at == dt.datetime(2026, 5, 26, 1, 59, 15, tzinfo=dt.UTC)


def test_entry_carries_what_v2_has_and_no_invented_price_or_bundle_id() -> None:
    chatgpt = parse(US_TOP_FREE.read_bytes()).entries[0]
    assert (chatgpt.store_id, chatgpt.name, chatgpt.developer) == (
        CHATGPT,
        "ChatGPT",
        "OpenAI OpCo, LLC",
    )
    assert chatgpt.release_date == dt.date(2023, 5, 18)
    assert chatgpt.url == "https://apps.apple.com/us/app/chatgpt/id6448311069"
    assert (chatgpt.price, chatgpt.currency, chatgpt.bundle_id) == (None, None, None)
    # genres is [] for ChatGPT and this sample has no artistId at all.
    assert (chatgpt.genre_id, chatgpt.genre_name, chatgpt.developer_id) == (None, None, None)


def test_genre_is_the_first_of_several() -> None:
    google_maps = parse(US_TOP_FREE.read_bytes()).entries[10]
    assert (google_maps.name, google_maps.genre_id, google_maps.genre_name) == (
        "Google Maps",
        "6010",
        "Navigation",
    )


def test_developer_id_comes_from_artist_id_or_else_the_artist_url() -> None:
    doc = sample()
    results = doc["feed"]["results"]
    results[0]["artistId"] = "1684349733"
    results[1]["artistUrl"] = "https://apps.apple.com/us/developer/netflix-inc/id363590054"
    first, second, third = parse(doc).entries[:3]
    assert (first.developer_id, second.developer_id, third.developer_id) == (
        "1684349733",
        "363590054",
        None,
    )


def test_numeric_ids_are_read_as_the_same_strings() -> None:
    doc = sample()
    doc["feed"]["results"][0]["id"] = int(CHATGPT)
    assert parse(doc).entries[0].store_id == CHATGPT


def test_feed_of_another_storefront_is_a_format_error() -> None:
    with pytest.raises(FeedFormatError, match=r"^feed\.country: storefront 'us' .* 'gb'$"):
        parse(US_TOP_FREE.read_bytes(), "gb/top_free")


def test_storefront_is_compared_without_regard_to_case() -> None:
    doc = sample()
    doc["feed"]["country"] = "US"
    assert len(parse(doc).entries) == 100


def test_feed_without_country_is_taken_at_its_word() -> None:
    doc = sample()
    del doc["feed"]["country"]
    assert parse(doc).entries[0].store_id == CHATGPT


def test_country_that_is_not_a_code_is_a_format_error() -> None:
    doc = sample()
    doc["feed"]["country"] = ["us"]
    with pytest.raises(
        FeedFormatError, match=r"^feed\.country: expected a storefront code, got array$"
    ):
        parse(doc)


@pytest.mark.parametrize(
    ("updated", "expected"),
    [
        ("Tue, 26 May 2026 01:59:15 +0000", dt.datetime(2026, 5, 26, 1, 59, 15, tzinfo=dt.UTC)),
        ("Mon, 25 May 2026 18:59:15 -0700", dt.datetime(2026, 5, 26, 1, 59, 15, tzinfo=dt.UTC)),
        ("Tue, 26 May 2026 01:59:15 GMT", dt.datetime(2026, 5, 26, 1, 59, 15, tzinfo=dt.UTC)),
        # RFC 2822: "-0000" is UTC with the local zone unknown.
        ("Tue, 26 May 2026 01:59:15 -0000", dt.datetime(2026, 5, 26, 1, 59, 15, tzinfo=dt.UTC)),
    ],
)
def test_rfc_2822_update_time_is_stored_in_utc(updated: str, expected: dt.datetime) -> None:
    doc = sample()
    doc["feed"]["updated"] = updated
    assert parse(doc).feed_updated_at == expected


@pytest.mark.parametrize("updated", ["Tue, 26 May 2026 01:59:15", "yesterday", 1779760755])
def test_unreadable_update_time_is_unknown_and_noticed_but_the_chart_is_kept(
    updated: object,
) -> None:
    doc = sample()
    doc["feed"]["updated"] = updated
    snapshot = parse(doc)
    assert snapshot.feed_updated_at is None
    assert snapshot.notices[0].startswith("feed.updated unreadable, ignored: ")
    assert len(snapshot.entries) == 100


def test_empty_results_is_an_empty_chart() -> None:
    doc = sample()
    doc["feed"]["results"] = []
    with pytest.raises(EmptyChart):
        parse(doc)


def test_missing_results_is_a_format_error_not_an_empty_chart() -> None:
    doc = sample()
    del doc["feed"]["results"]
    with pytest.raises(FeedFormatError, match=r"^feed\.results: missing$"):
        parse(doc)


def test_repeated_app_keeps_its_first_rank_and_leaves_a_gap() -> None:
    doc = sample()
    results = doc["feed"]["results"]
    results[40] = results[2]
    snapshot = parse(doc)
    ranks = [entry.rank for entry in snapshot.entries]
    assert 41 not in ranks
    assert (ranks[2], ranks[40]) == (3, 42)
    assert snapshot.notices == (f"rank 41 left as a gap: app {CLAUDE} repeats rank 3",)


def test_entry_with_a_non_numeric_id_is_a_gap_naming_the_field() -> None:
    doc = sample()
    doc["feed"]["results"][0]["id"] = "chatgpt"
    snapshot = parse(doc)
    assert snapshot.entries[0].rank == 2
    assert snapshot.notices == (
        "rank 1 left as a gap: feed.results[0].id: not an app id: 'chatgpt'",
    )


def test_malformed_last_entry_is_a_gap_not_a_short_chart() -> None:
    doc = sample()
    doc["feed"]["results"][99]["name"] = ""
    snapshot = parse(doc)
    assert snapshot.entries[-1].rank == 99
    assert (snapshot.served_depth, snapshot.visible_depth, snapshot.is_short) == (100, 100, False)
    assert snapshot.notices == ("rank 100 left as a gap: feed.results[99].name: not a name: ''",)


def test_repeated_last_entry_is_a_gap_not_a_short_chart() -> None:
    doc = sample()
    results = doc["feed"]["results"]
    results[99] = results[0]
    snapshot = parse(doc)
    assert snapshot.entries[-1].rank == 99
    assert (snapshot.visible_depth, snapshot.is_short) == (100, False)
    assert snapshot.notices == (f"rank 100 left as a gap: app {CHATGPT} repeats rank 1",)


def test_more_than_ten_percent_malformed_rejects_the_feed() -> None:
    doc = sample()
    for result in doc["feed"]["results"][-11:]:
        result["name"] = ""
    with pytest.raises(FeedFormatError, match="11 of 100 entries malformed"):
        parse(doc)


def test_depth_below_the_served_hundred_keeps_the_top() -> None:
    snapshot = parse(US_TOP_FREE.read_bytes(), depth=25)
    assert (len(snapshot.entries), snapshot.visible_depth) == (25, 25)
    assert snapshot.notices == ("100 entries served for a depth of 25: cut off",)


def test_byte_order_mark_is_ignored() -> None:
    assert parse(b"\xef\xbb\xbf" + US_TOP_FREE.read_bytes()).entries[0].store_id == CHATGPT


def test_legacy_feed_given_to_the_v2_parser_is_a_format_error() -> None:
    legacy = FEEDS / "legacy_itunes_us_topfreeapplications_limit5_2026-08-07.json"
    with pytest.raises(FeedFormatError, match=r"^feed\.results: missing$"):
        parse(legacy.read_bytes(), depth=5)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<!DOCTYPE html><html>", "not JSON: body starts with '<!DOCTYPE html><html>'"),
        (b'{"feed": {"results": [', "not JSON: body starts with"),
        (b"[]", "top level: expected an object, got array"),
        (b'{"feed": []}', "feed: expected an object, got array"),
        (b'{"feed": {"results": {"id": 1}}}', "1 of 1 entries malformed"),
        (b'{"feed": {"results": 3}}', "feed.results: expected a list of entries, got number"),
    ],
)
def test_body_of_the_wrong_shape_is_a_format_error(body: bytes, message: str) -> None:
    with pytest.raises(FeedFormatError) as raised:
        parse(body)
    assert message in str(raised.value)
