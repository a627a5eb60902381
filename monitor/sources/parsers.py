"""The feed parser registry: one `ChartParser` per `SourceName`.

What a parser must do, and the entry policy every one follows, is documented in
`monitor.sources.entry_policy`; the JSON field readers they share are `monitor.sources.feedjson`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Protocol

from monitor.model import ChartKey, ChartSnapshot, SourceName
from monitor.sources.apple_v2 import parse_apple_v2
from monitor.sources.itunes_rss import parse_itunes_rss


class ChartParser(Protocol):
    """The body of a 2xx response to a `ChartSnapshot`; raises only FeedFormatError/EmptyChart."""

    def __call__(
        self, body: bytes, *, chart: ChartKey, requested_depth: int, fetched_at: dt.datetime
    ) -> ChartSnapshot: ...


PARSERS: Mapping[SourceName, ChartParser] = {
    SourceName.ITUNES_RSS: parse_itunes_rss,
    SourceName.APPLE_V2: parse_apple_v2,
}
