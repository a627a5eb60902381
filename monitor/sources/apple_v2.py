"""The Marketing Tools RSS v2 feed.

`https://rss.marketingtools.apple.com/api/v2/{cc}/apps/{top-free,top-paid}/{n}/apps.json`:
plain JSON; `feed.results` is the ranked list, ids are strings, `genres` is often `[]`, and there
is no price or bundle id (they stay None; the lookup API has them). `feed.country` names the
storefront actually served and `feed.updated` is an RFC 2822 date. The shared entry policy is
documented in `monitor.sources.entry_policy`.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re

from monitor.errors import FeedFormatError
from monitor.model import ChartEntry, ChartKey, ChartSnapshot, SourceName
from monitor.sources.entry_policy import build_snapshot
from monitor.sources.feedjson import (
    check_storefront,
    decode_json,
    feed_object,
    feed_timestamp,
    id_in_url,
    items_at,
    kind,
    member,
    optional_date,
    optional_id,
    optional_text,
    required,
    web_url,
)

# RFC 2822 reads "-0000" as "UTC, local zone unknown"; the stdlib returns it as a naive datetime.
_UTC_UNKNOWN_ZONE = re.compile(r"\s-0000\s*$")


def parse_apple_v2(
    body: bytes, *, chart: ChartKey, requested_depth: int, fetched_at: dt.datetime
) -> ChartSnapshot:
    feed = feed_object(decode_json(body))
    country = feed.get("country")
    if country is not None:
        if not isinstance(country, str):
            raise FeedFormatError(f"feed.country: expected a storefront code, got {kind(country)}")
        check_storefront(country, chart, "feed.country")
    notices: list[str] = []
    updated = feed_timestamp(feed.get("updated"), "feed.updated", _rfc2822, notices)
    return build_snapshot(
        items_at(feed, "results", absent_is_empty=False),
        _entry,
        chart=chart,
        source=SourceName.APPLE_V2,
        requested_depth=requested_depth,
        fetched_at=fetched_at,
        feed_updated_at=updated,
        notices=notices,
    )


def _rfc2822(text: str) -> dt.datetime:
    parsed = email.utils.parsedate_to_datetime(text)
    if parsed.tzinfo is None and _UTC_UNKNOWN_ZONE.search(text):
        return parsed.replace(tzinfo=dt.UTC)
    return parsed


def _entry(item: object, path: str, rank: int) -> ChartEntry:
    genres = member(item, "genres")
    genre = genres[0] if isinstance(genres, list) and genres else None
    return ChartEntry(
        rank=rank,
        store_id=required(optional_id, "an app id", item, path, "id"),
        name=required(optional_text, "a name", item, path, "name"),
        developer=optional_text(member(item, "artistName")),
        developer_id=optional_id(member(item, "artistId")) or id_in_url(member(item, "artistUrl")),
        genre_id=optional_id(member(genre, "genreId")),
        genre_name=optional_text(member(genre, "name")),
        release_date=optional_date(member(item, "releaseDate")),
        url=web_url(member(item, "url")),
    )
