"""Pages of the read API's lists: offsets, `next` URLs, and history read a window at a time.

A history page is read in time windows that double from a few hours, starting where the
page starts, until the page is full: the first page of a year of hourly points reads about
a page of them, not the year.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Callable, Sequence
from typing import TypeVar

from fastapi import Request

from monitor.api.access import ApiError
from monitor.model import RankPoint

T = TypeVar("T")
FIRST_WINDOW = dt.timedelta(hours=6)
Cursor = tuple[dt.datetime, str]


def next_url(request: Request, has_more: bool, **query: str | int) -> str | None:
    """The path and query of the next page: this request's with `query` replaced."""
    if not has_more:
        return None
    url = request.url.include_query_params(**query)
    return f"{url.path}?{url.query}"


def one_page(items: Sequence[T], offset: int, limit: int) -> tuple[list[T], bool]:
    return list(items[offset : offset + limit]), len(items) > offset + limit


def encode_cursor(point: RankPoint) -> str:
    text = json.dumps([point.at.isoformat(), point.chart.slug])
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Cursor:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        at, slug = json.loads(base64.urlsafe_b64decode(padded.encode()))
        moment = dt.datetime.fromisoformat(at)
        if moment.tzinfo is None or not isinstance(slug, str):
            raise ValueError(cursor)
    except (ValueError, TypeError, RecursionError, binascii.Error):
        raise ApiError(400, "not a cursor from a `next` URL", "cursor") from None
    return moment, slug


def _order(point: RankPoint) -> Cursor:
    return point.at, point.chart.slug


def history_page(
    read: Callable[[dt.datetime, dt.datetime | None], list[RankPoint]],
    *,
    start: dt.datetime,
    end: dt.datetime | None,
    now: dt.datetime,
    after: Cursor | None,
    limit: int,
) -> tuple[list[RankPoint], bool]:
    """Up to `limit` points from `start` to `end` (both included) that come after `after`,
    in time then chart order, and whether more follow. `read(since, until)` reads the points
    of a time range, bounds included; `until` None reads to the end."""
    found: list[RankPoint] = []
    low, window = start, FIRST_WINDOW
    seen_until: dt.datetime | None = None  # the end of the windows read, included

    def fresh(batch: list[RankPoint]) -> list[RankPoint]:
        return sorted(
            (
                point
                for point in batch
                if (seen_until is None or point.at > seen_until)
                and (after is None or _order(point) > after)
            ),
            key=_order,
        )

    while True:
        try:
            high = low + window
        except OverflowError:  # past the year 9999: read to the end
            high = dt.datetime.max.replace(tzinfo=dt.UTC)
        if high >= (end or now):
            found += fresh(read(low, end))
            return found[:limit], len(found) > limit
        found += fresh(read(low, high))
        if len(found) > limit:
            return found[:limit], True
        seen_until = low = high
        window *= 2
