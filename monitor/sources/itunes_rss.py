"""The legacy iTunes RSS feed in JSON.

`https://itunes.apple.com/{cc}/rss/{type}/limit={n}[/genre={g}]/json` is Atom translated to
JSON: every value is `{"label": ...}` with its XML attributes under `"attributes"`. Labels are
localized ("Get" / "取得", "May 18, 2023" / "2023年05月18日"), so only ids, amounts, ISO codes
and ISO timestamps are read. Quirks this format is known for, all survived here: `feed.entry`
missing for an empty chart, or a single object instead of a list for a chart of one; an entry's
`link` and `im:image` either an object or a list; `im:artist.attributes` missing;
`feed.updated` in Pacific time with its offset. The shared entry policy is documented in
`monitor.sources.entry_policy`.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

from monitor.model import ChartEntry, ChartKey, ChartSnapshot, SourceName
from monitor.sources.entry_policy import build_snapshot
from monitor.sources.feedjson import (
    check_storefront,
    decode_json,
    feed_object,
    feed_timestamp,
    id_in_url,
    items_at,
    member,
    optional_date,
    optional_id,
    optional_text,
    required,
    web_url,
)

# feed.id is the URL the chart was generated for, e.g. https://itunes.apple.com/hk/rss/...
_STOREFRONT_IN_FEED_ID = re.compile(r"/([A-Za-z]{2})/rss/")
# Amounts come as "0.00" whatever the locale; Decimal() alone would also take "NaN" or "1_0".
_AMOUNT = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,8})?")
_CURRENCY = re.compile(r"[A-Z]{3}")


def parse_itunes_rss(
    body: bytes, *, chart: ChartKey, requested_depth: int, fetched_at: dt.datetime
) -> ChartSnapshot:
    feed = feed_object(decode_json(body))
    feed_id = member(feed, "id", "label")
    match = _STOREFRONT_IN_FEED_ID.search(feed_id) if isinstance(feed_id, str) else None
    if match:
        check_storefront(match.group(1), chart, "feed.id.label")
    notices: list[str] = []
    updated = feed_timestamp(
        member(feed, "updated", "label"), "feed.updated.label", dt.datetime.fromisoformat, notices
    )
    return build_snapshot(
        items_at(feed, "entry", absent_is_empty=True),
        _entry,
        chart=chart,
        source=SourceName.ITUNES_RSS,
        requested_depth=requested_depth,
        fetched_at=fetched_at,
        feed_updated_at=updated,
        notices=notices,
    )


def _entry(item: object, path: str, rank: int) -> ChartEntry:
    artist = member(item, "im:artist")
    category = member(item, "category", "attributes")
    price = member(item, "im:price", "attributes")
    return ChartEntry(
        rank=rank,
        store_id=required(optional_id, "an app id", item, path, "id", "attributes", "im:id"),
        name=required(optional_text, "a name", item, path, "im:name", "label"),
        bundle_id=optional_text(member(item, "id", "attributes", "im:bundleId")),
        developer=optional_text(member(artist, "label")),
        developer_id=id_in_url(member(artist, "attributes", "href")),
        genre_id=optional_id(member(category, "im:id")),
        genre_name=optional_text(member(category, "label")),
        price=_amount(member(price, "amount")),
        currency=_currency(member(price, "currency")),
        release_date=optional_date(member(item, "im:releaseDate", "label")),
        url=_store_page(member(item, "link")),
    )


def _amount(value: object) -> Decimal | None:
    return Decimal(value) if isinstance(value, str) and _AMOUNT.fullmatch(value) else None


def _currency(value: object) -> str | None:
    return value if isinstance(value, str) and _CURRENCY.fullmatch(value) else None


def _store_page(link: object) -> str | None:
    """The href of the `rel="alternate"` link; the other links are screenshot previews."""
    links = link if isinstance(link, list) else [link]
    for candidate in links:
        attributes = member(candidate, "attributes")
        if member(attributes, "rel") == "alternate":
            return web_url(member(attributes, "href"))
    return None
