"""The legacy iTunes RSS parser, on real payloads and on the quirks the format is known for.

The entry policy shared by both formats (gaps, repeats, depth, the 10% rule) is tested here, on
the legacy format; tests/sources/test_apple_v2.py shows that v2 follows it too.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from monitor.errors import EmptyChart, FeedFormatError
from monitor.model import ChartKey, ChartSnapshot, SourceName
from monitor.sources.itunes_rss import parse_itunes_rss

FEEDS = Path(__file__).resolve().parent.parent / "fixtures" / "feeds"
HK_TOP_FREE = "legacy_itunes_hk_topfreeapplications_limit100_2024-09-04.json"
HK_TOP_GROSSING = "legacy_itunes_hk_topgrossingapplications_limit10_2024-09-04.json"
US_LIMIT5 = "legacy_itunes_us_topfreeapplications_limit5_2026-08-07.json"
US_TRIMMED = "legacy_itunes_us_topfreeapplications_limit3_2026-05-31_TRIMMED.json"
FETCHED_AT = dt.datetime(2026, 8, 7, 10, 0, tzinfo=dt.UTC)
CHATGPT = "6448311069"


def body_of(name: str) -> bytes:
    return (FEEDS / name).read_bytes()


def doc_of(name: str) -> Any:
    return json.loads(body_of(name))


def parse(body: bytes | Any, chart: str = "us/top_free", depth: int | None = None) -> ChartSnapshot:
    """Parse raw bytes, or a JSON document serialized the way Apple does."""
    if not isinstance(body, bytes):
        body = json.dumps(body, ensure_ascii=False).encode()
    if depth is None:
        depth = len(json.loads(body)["feed"].get("entry", [None]))
    return parse_itunes_rss(
        body, chart=ChartKey.parse(chart), requested_depth=depth, fetched_at=FETCHED_AT
    )


def ids(snapshot: ChartSnapshot) -> dict[int, str]:
    return {entry.rank: entry.store_id for entry in snapshot.entries}


# Real payloads


@pytest.mark.parametrize(
    ("name", "chart", "count"),
    [
        (HK_TOP_FREE, "hk/top_free", 100),
        (HK_TOP_GROSSING, "hk/top_grossing", 10),
        (US_LIMIT5, "us/top_free", 5),
        (US_TRIMMED, "us/top_free", 3),
    ],
)
def test_every_real_sample_is_read_whole_and_without_notices(
    name: str, chart: str, count: int
) -> None:
    snapshot = parse(body_of(name), chart, depth=count)
    assert snapshot.source is SourceName.ITUNES_RSS
    assert [entry.rank for entry in snapshot.entries] == list(range(1, count + 1))
    assert snapshot.notices == ()
    assert (snapshot.served_depth, snapshot.is_short) == (count, False)
    assert all(entry.bundle_id and entry.developer_id and entry.url for entry in snapshot.entries)


def test_hong_kong_entry_is_read_from_ids_amounts_and_iso_dates_not_chinese_labels() -> None:
    kktix = parse(body_of(HK_TOP_FREE), "hk/top_free").entries[0]
    assert (kktix.rank, kktix.store_id, kktix.name) == (1, "780240742", "KKTIX")
    assert kktix.bundle_id == "com.kkbox.kktix"
    assert (kktix.developer, kktix.developer_id) == (
        "Walking Internet Entertainment Limited",
        "397726059",
    )
    assert (kktix.genre_id, kktix.genre_name) == ("6012", "生活風格")
    assert (kktix.price, kktix.currency) == (Decimal("0.00"), "HKD")
    assert kktix.url == "https://apps.apple.com/hk/app/kktix/id780240742?uo=2"


def test_release_date_is_the_calendar_date_the_store_wrote_not_shifted_to_utc() -> None:
    # "2014-02-13T22:07:14-07:00" is already the 14th in UTC; the store shows the 13th.
    kktix = parse(body_of(HK_TOP_FREE), "hk/top_free").entries[0]
    assert kktix.release_date == dt.date(2014, 2, 13)


@pytest.mark.parametrize(
    ("name", "chart", "updated_utc"),
    [
        (HK_TOP_FREE, "hk/top_free", dt.datetime(2024, 9, 4, 14, 15, 13, tzinfo=dt.UTC)),
        (HK_TOP_GROSSING, "hk/top_grossing", dt.datetime(2024, 9, 4, 13, 55, 1, tzinfo=dt.UTC)),
        (US_LIMIT5, "us/top_free", dt.datetime(2026, 8, 7, 9, 17, 38, tzinfo=dt.UTC)),
        # 18:23 Pacific on 31 May is already 1 June in UTC.
        (US_TRIMMED, "us/top_free", dt.datetime(2026, 6, 1, 1, 23, 44, tzinfo=dt.UTC)),
    ],
)
def test_feed_updated_in_pacific_time_is_stored_in_utc(
    name: str, chart: str, updated_utc: dt.datetime
) -> None:
    updated = parse(body_of(name), chart).feed_updated_at
    assert updated == updated_utc
    assert updated is not None
    assert updated.utcoffset() == dt.timedelta(0)


def test_hong_kong_grossing_chart_has_youtube_first() -> None:
    snapshot = parse(body_of(HK_TOP_GROSSING), "hk/top_grossing")
    assert ids(snapshot)[1] == "544007664"
    assert snapshot.entries[0].currency == "HKD"


def test_chatgpt_is_second_in_the_us_limit5_sample() -> None:
    chatgpt = parse(body_of(US_LIMIT5)).entries[1]
    assert (chatgpt.rank, chatgpt.store_id, chatgpt.name) == (2, CHATGPT, "ChatGPT")
    assert (chatgpt.bundle_id, chatgpt.developer_id) == ("com.openai.chat", "1684349733")
    assert chatgpt.release_date == dt.date(2023, 5, 18)


def test_link_as_object_and_as_list_both_give_the_store_page() -> None:
    chatgpt, netflix, claude = parse(body_of(US_TRIMMED)).entries
    assert chatgpt.url == "https://apps.apple.com/us/app/chatgpt/id6448311069?uo=2"
    assert netflix.url == "https://apps.apple.com/us/app/netflix-game-controller/id6447582581?uo=2"
    assert (claude.store_id, claude.bundle_id) == ("6473753684", "com.anthropic.claude")


# Quirks


def test_single_entry_object_is_a_chart_of_one() -> None:
    snapshot = parse(body_of("handmade_legacy_limit1_entry_object.json"), depth=1)
    (chatgpt,) = snapshot.entries
    assert (chatgpt.rank, chatgpt.store_id, chatgpt.name) == (1, CHATGPT, "ChatGPT")
    assert chatgpt.url == "https://apps.apple.com/us/app/chatgpt/id6448311069?uo=2"


def test_missing_entry_is_an_empty_chart() -> None:
    with pytest.raises(EmptyChart):
        parse(body_of("handmade_legacy_no_entry.json"), "us/top_paid/ipad/6021", depth=10)


def test_empty_entry_list_is_an_empty_chart() -> None:
    doc = doc_of(US_LIMIT5)
    doc["feed"]["entry"] = []
    with pytest.raises(EmptyChart):
        parse(doc, depth=5)


def test_artist_without_attributes_keeps_its_name_and_has_no_developer_id() -> None:
    chatgpt, netflix = parse(body_of("handmade_legacy_artist_without_attributes.json")).entries
    assert (netflix.developer, netflix.developer_id) == ("Netflix, Inc.", None)
    assert chatgpt.developer_id == "1684349733"


def test_byte_order_mark_is_ignored() -> None:
    snapshot = parse(b"\xef\xbb\xbf" + body_of(US_LIMIT5), depth=5)
    assert ids(snapshot)[2] == CHATGPT


def test_paid_app_price_is_the_amount_not_the_localized_label() -> None:
    doc = doc_of(US_LIMIT5)
    doc["feed"]["entry"][0]["im:price"] = {
        "label": "$4.99",
        "attributes": {"amount": "4.99000", "currency": "USD"},
    }
    doc["feed"]["entry"][1]["im:price"] = {"label": "4,99 €", "attributes": {"amount": "4,99"}}
    first, second = parse(doc).entries[:2]
    assert (first.price, first.currency) == (Decimal("4.99"), "USD")
    assert (second.price, second.currency) == (None, None)


def test_unreadable_metadata_is_none_and_costs_the_entry_nothing() -> None:
    doc = doc_of(US_LIMIT5)
    entry = doc["feed"]["entry"][0]
    entry["im:releaseDate"] = {"label": "June 3, 2026"}
    entry["category"] = {"attributes": {"im:id": "Entertainment"}}
    entry["im:artist"]["attributes"]["href"] = "https://apps.apple.com/us/developer/tiktok"
    entry["link"] = {"attributes": {"rel": "alternate", "href": "javascript:alert(1)"}}
    entry["im:price"] = {"label": "Get", "attributes": {"amount": "NaN", "currency": "usd"}}
    first = parse(doc).entries[0]
    assert (first.rank, first.store_id) == (1, "6741796873")
    assert (first.release_date, first.genre_id, first.developer_id, first.url) == (None,) * 4
    assert (first.price, first.currency) == (None, None)


def test_feed_updated_without_offset_is_left_unknown_with_a_notice() -> None:
    doc = doc_of(US_LIMIT5)
    doc["feed"]["updated"]["label"] = "2026-08-07T02:17:38"
    snapshot = parse(doc)
    assert snapshot.feed_updated_at is None
    assert snapshot.notices == ("feed.updated.label unreadable, ignored: '2026-08-07T02:17:38'",)


def test_missing_feed_updated_is_unknown_without_a_notice() -> None:
    doc = doc_of(US_LIMIT5)
    del doc["feed"]["updated"]
    snapshot = parse(doc)
    assert (snapshot.feed_updated_at, snapshot.notices) == (None, ())


def test_feed_of_another_storefront_is_a_format_error() -> None:
    with pytest.raises(FeedFormatError, match=r"feed\.id\.label: storefront 'hk' .* 'us'"):
        parse(body_of(HK_TOP_GROSSING), "us/top_grossing")


def test_names_keep_their_text_but_not_characters_no_database_can_store() -> None:
    doc = doc_of(US_LIMIT5)
    doc["feed"]["entry"][0]["im:name"]["label"] = "Tik\x00Tok \ud800 Pro 🎵"
    body = json.dumps(doc).encode()  # ASCII escapes, as JSON allows for lone surrogates
    assert parse(body).entries[0].name == "Tik\ufffdTok \ufffd Pro 🎵"


# Entry policy


def test_repeated_app_keeps_its_best_rank_and_leaves_a_gap_without_moving_others() -> None:
    doc = doc_of(US_LIMIT5)
    entries = doc["feed"]["entry"]
    entries[3] = entries[1]  # ChatGPT at #2 and again at #4
    snapshot = parse(doc)
    assert ids(snapshot) == {1: "6741796873", 2: CHATGPT, 3: "908126679", 5: "632064380"}
    assert snapshot.notices == (f"rank 4 left as a gap: app {CHATGPT} repeats rank 2",)
    assert snapshot.visible_depth == 5


def test_malformed_entry_becomes_a_gap_with_a_notice_naming_the_field() -> None:
    doc = doc_of(HK_TOP_FREE)
    del doc["feed"]["entry"][3]["id"]["attributes"]["im:id"]
    snapshot = parse(doc, "hk/top_free")
    assert 4 not in ids(snapshot)
    assert ids(snapshot)[5] == "1551748743"
    assert snapshot.notices == ("rank 4 left as a gap: feed.entry[3].id.attributes.im:id: missing",)


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        ({"im:name": {"label": "  "}}, "feed.entry[0].im:name.label: not a name: '  '"),
        ({"im:name": None}, "feed.entry[0].im:name: missing"),
        ({"id": "780240742"}, "feed.entry[0].id: expected an object, got string"),
        ({"id": {"attributes": {"im:id": "id780240742"}}}, "not an app id: 'id780240742'"),
    ],
)
def test_entry_without_usable_id_or_name_is_dropped(breakage: dict[str, Any], reason: str) -> None:
    doc = doc_of(HK_TOP_FREE)
    doc["feed"]["entry"][0].update(breakage)
    snapshot = parse(doc, "hk/top_free")
    assert snapshot.entries[0].rank == 2
    assert len(snapshot.notices) == 1
    assert reason in snapshot.notices[0]


def test_ten_percent_of_malformed_entries_is_stored_with_gaps() -> None:
    doc = doc_of(HK_TOP_FREE)
    for entry in doc["feed"]["entry"][::10]:
        del entry["im:name"]
    snapshot = parse(doc, "hk/top_free")
    assert len(snapshot.entries) == 90
    assert sorted(set(range(1, 101)) - set(ids(snapshot))) == list(range(1, 101, 10))


def test_more_than_ten_percent_of_malformed_entries_rejects_the_feed() -> None:
    doc = doc_of(HK_TOP_FREE)
    for entry in doc["feed"]["entry"][:11]:
        del entry["im:name"]
    expected = r"^11 of 100 entries malformed, more than 10%; first: rank 1 left as a gap"
    with pytest.raises(FeedFormatError, match=expected):
        parse(doc, "hk/top_free")


def test_repeats_do_not_count_towards_the_ten_percent_rule() -> None:
    doc = doc_of(HK_TOP_FREE)
    entries = doc["feed"]["entry"]
    entries[50:70] = [entries[0]] * 20
    entries[70:80] = [{"im:name": {"label": "no id"}}] * 10
    snapshot = parse(doc, "hk/top_free")
    assert len(snapshot.entries) == 70
    assert len(snapshot.notices) == 30


def test_chart_of_only_broken_entries_is_a_format_error_not_an_empty_chart() -> None:
    doc = doc_of(US_LIMIT5)
    doc["feed"]["entry"] = [{"im:name": {"label": "x"}}] * 5
    with pytest.raises(FeedFormatError, match="5 of 5"):
        parse(doc)


def test_malformed_last_entry_is_a_gap_not_a_short_chart() -> None:
    doc = doc_of(HK_TOP_FREE)
    del doc["feed"]["entry"][99]["id"]["attributes"]["im:id"]
    snapshot = parse(doc, "hk/top_free", depth=100)
    assert snapshot.entries[-1].rank == 99
    assert (snapshot.served_depth, snapshot.visible_depth, snapshot.is_short) == (100, 100, False)
    assert snapshot.notices == (
        "rank 100 left as a gap: feed.entry[99].id.attributes.im:id: missing",
    )


def test_repeated_last_entry_is_a_gap_not_a_short_chart() -> None:
    doc = doc_of(US_LIMIT5)
    entries = doc["feed"]["entry"]
    entries[4] = entries[1]
    snapshot = parse(doc, depth=5)
    assert list(ids(snapshot)) == [1, 2, 3, 4]
    assert (snapshot.visible_depth, snapshot.is_short) == (5, False)
    assert snapshot.notices == (f"rank 5 left as a gap: app {CHATGPT} repeats rank 2",)


def test_short_chart_with_a_malformed_last_entry_is_as_deep_as_served() -> None:
    doc = doc_of(HK_TOP_FREE)
    del doc["feed"]["entry"][99]["im:name"]
    snapshot = parse(doc, "hk/top_free", depth=120)
    assert snapshot.entries[-1].rank == 99
    assert (snapshot.visible_depth, snapshot.is_short) == (100, True)
    assert snapshot.notices[0] == "short chart: 100 entries served, 120 requested"


def test_entries_past_the_requested_depth_are_cut_off() -> None:
    snapshot = parse(body_of(US_LIMIT5), depth=3)
    assert list(ids(snapshot)) == [1, 2, 3]
    assert (snapshot.served_depth, snapshot.is_short) == (3, False)
    assert snapshot.notices == ("5 entries served for a depth of 3: cut off",)


def test_entries_cut_off_do_not_count_as_malformed() -> None:
    doc = doc_of(US_LIMIT5)
    doc["feed"]["entry"][4] = {}
    assert len(parse(doc, depth=4).entries) == 4


def test_short_chart_is_kept_as_served() -> None:
    snapshot = parse(body_of(US_LIMIT5), depth=100)
    assert (len(snapshot.entries), snapshot.visible_depth, snapshot.is_short) == (5, 5, True)
    assert snapshot.notices == ("short chart: 5 entries served, 100 requested",)


# Bodies that are not a legacy chart


def test_html_error_page_is_a_format_error_quoting_its_start() -> None:
    with pytest.raises(FeedFormatError, match=r"^not JSON: body starts with '<!DOCTYPE html>\\n"):
        parse(body_of("handmade_apple_error_page.html"), depth=5)


def test_truncated_body_is_a_format_error() -> None:
    body = body_of(US_LIMIT5)
    with pytest.raises(FeedFormatError, match=r"not JSON: .*14277 bytes"):
        parse(body[: len(body) // 2], depth=5)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not JSON: body is empty (0 bytes)"),
        (b"[]", "top level: expected an object, got array"),
        (b'{"feed": []}', "feed: expected an object, got array"),
        (b'{"errors": [{"status": "404"}]}', "feed: missing (top-level keys: 'errors')"),
        (b'{"feed": {"entry": "none"}}', "feed.entry: expected a list of entries, got string"),
        (b'{"feed": {"entry": [1]}}', "1 of 1 entries malformed"),
        (b'{"feed": {"entry": []}}\xff', "not UTF-8: byte 0xff at offset 23"),
        (b"[" * 100_000, "JSON too deep or too large"),
    ],
)
def test_body_of_the_wrong_shape_is_a_format_error(body: bytes, message: str) -> None:
    with pytest.raises(FeedFormatError) as raised:
        parse(body, depth=5)
    assert message in str(raised.value)
