"""The entry policy every feed parser follows, and `build_snapshot`, which applies it.

A parser turns the body of a 2xx response into a `ChartSnapshot`, or raises `FeedFormatError`
(not a chart we can read) or `EmptyChart` (a chart of zero entries). No other exception escapes,
whatever the bytes. Parsers are pure: standard library, `monitor.model` and `monitor.errors` only.

Policies, the same for every feed format (decoding, metadata, feed time and text are read by
`monitor.sources.feedjson`; ranks, gaps, depth and the 10% rule are `build_snapshot` below):

- Decoding. The body is read by its content, never by its Content-Type (the legacy feed is
  served as text/javascript): UTF-8 JSON, with or without a byte-order mark. Anything else is a
  FeedFormatError quoting a short, escaped prefix of the body (e.g. an HTML error page).
- Rank. An entry's rank is its 1-based position in the list as served. Two entries can never
  share a rank, because ranks are positions; a position whose entry was dropped stays a gap, so
  every other app keeps exactly the rank the store showed.
- Depth. Entries past `requested_depth` are cut off first, with a notice, and never looked at
  (so never counted as malformed). A chart shorter than requested is kept as served, with a
  notice (`ChartSnapshot.is_short` reports it too). `ChartSnapshot.served_depth` is the number
  of positions served within the depth, gaps included: a dropped last entry leaves a gap, not a
  chart that looks short.
- Empty. A feed listing no entries at all raises EmptyChart: a failed fetch, not a chart that
  everything dropped out of. The legacy feed says so by leaving `feed.entry` out (Atom with no
  entry element); v2 by `"results": []`, so a v2 feed without `results` is a FeedFormatError.
- Malformed entry. An entry without a usable app id (digits) or name is dropped with a notice
  naming what was wrong and where; its position becomes a gap.
- Repeated app. When an app id appears more than once, its first (best) position is kept and
  every later one is dropped with a notice and becomes a gap.
- Shape drift. When more than 10% of the entries within the depth are malformed, the whole feed
  is rejected as FeedFormatError: that is a changed format, not a glitch to store. A chart of 10
  tolerates one malformed entry, a chart of 9 none; a chart whose every entry is malformed is
  therefore a FeedFormatError, never an EmptyChart. Repeats do not count: they are the store's
  own glitch, and the chart they leave is still what it showed.
- Metadata (bundle id, developer, genre, price, currency, release date, URL) is taken only from
  what the format carries, in its locale-independent form: ids, amounts, ISO codes and dates,
  never the localized labels (the genre name excepted: it is only a label). A value that is
  absent or unreadable is None, never a guess, and never costs the entry its rank. URLs are
  kept only when http(s). The release date is the calendar date the store wrote (its own
  Pacific date), not shifted to UTC, so both formats agree for the same app.
- Feed time. `feed_updated_at` is converted to UTC. Absent, unreadable or without a UTC offset
  (a zone is never guessed) it is None, with a notice when it was present; it never fails a feed.
- Storefront. Where a feed says which storefront it serves (v2 `feed.country`, the legacy
  `feed.id` URL), it must be the chart's country, or the feed is a FeedFormatError: another
  country's chart stored under this one would be silently wrong history.
- Text is kept as served, except NUL and unpaired surrogates (valid JSON escapes that neither
  UTF-8 nor PostgreSQL can store), which become U+FFFD.
- Messages. Errors and notices are one line naming the path at fault, e.g.
  `feed.entry[3].id.attributes.im:id: missing`; feed text in them is shortened and escaped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from monitor.errors import EmptyChart, FeedFormatError
from monitor.model import ChartEntry, ChartKey, ChartSnapshot, SourceName
from monitor.sources.feedjson import Item


def build_snapshot(
    items: Sequence[Item],
    extract: Callable[[object, str, int], ChartEntry],
    *,
    chart: ChartKey,
    source: SourceName,
    requested_depth: int,
    fetched_at: dt.datetime,
    feed_updated_at: dt.datetime | None,
    notices: Sequence[str] = (),
) -> ChartSnapshot:
    """Apply the entry policy of the module docstring; `extract` raises FeedFormatError."""
    if requested_depth < 1:
        raise ValueError(f"requested_depth must be at least 1, got {requested_depth}")
    if not items:
        raise EmptyChart("the feed lists no entries")
    notes = list(notices)
    if len(items) > requested_depth:
        notes.append(f"{len(items)} entries served for a depth of {requested_depth}: cut off")
        items = items[:requested_depth]
    elif len(items) < requested_depth:
        notes.append(f"short chart: {len(items)} entries served, {requested_depth} requested")
    entries: list[ChartEntry] = []
    first_rank: dict[str, int] = {}
    malformed: list[str] = []
    repeated: list[str] = []
    for rank, (path, item) in enumerate(items, start=1):
        try:
            entry = extract(item, path, rank)
        except FeedFormatError as exc:
            malformed.append(f"rank {rank} left as a gap: {exc}")
            continue
        if entry.store_id in first_rank:
            repeated.append(
                f"rank {rank} left as a gap: app {entry.store_id} "
                f"repeats rank {first_rank[entry.store_id]}"
            )
            continue
        first_rank[entry.store_id] = rank
        entries.append(entry)
    # Integer arithmetic: exactly 10% is tolerated, and a chart that lost every entry never is.
    if len(malformed) * 10 > len(items):
        raise FeedFormatError(
            f"{len(malformed)} of {len(items)} entries malformed, more than 10%; "
            f"first: {malformed[0]}"
        )
    return ChartSnapshot(
        chart=chart,
        source=source,
        fetched_at=fetched_at,
        requested_depth=requested_depth,
        entries=tuple(entries),
        feed_updated_at=feed_updated_at,
        notices=(*notes, *malformed, *repeated),
        served_depth=len(items),
    )
