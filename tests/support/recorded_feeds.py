"""Serving a folder of recorded payloads (monitor.replay's layout) as Apple's feeds, one
moment at a time, to poll what `replay` imports.

    feeds = RecordedFeeds(payloads)
    with ScriptedServer(fallback=feeds.serve) as server:
        for at, charts in feeds.moments():
            feeds.now = at          # each chart answers with its payload recorded at `at`
            ...poll `charts` with a clock reading `at`...
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator, Sequence

from monitor.model import ChartKey
from monitor.replay import RecordedPayload, read_body
from monitor.sources.catalog import FeedEndpoints, feed_requests
from tests.support.http_server import Request, Response

# feed_requests only needs the paths: the host part is cut off again.
_NO_HOST = FeedEndpoints(itunes_base_url="", apple_rss_base_url="")
_MAX_BODY = 8 * 1024 * 1024


class RecordedFeeds:
    """Each payload at the path its feed serves its chart at (`depth` entries asked for), while
    `now` is the payload's time; a 404 for any other request."""

    def __init__(self, payloads: Sequence[RecordedPayload], *, depth: int = 100) -> None:
        self._paths: dict[tuple[dt.datetime, str], RecordedPayload] = {}
        self._moments: dict[dt.datetime, list[ChartKey]] = {}
        for payload in payloads:
            (request,) = [
                r
                for r in feed_requests(payload.chart, depth=depth, endpoints=_NO_HOST)
                if r.source is payload.source
            ]
            self._paths[(payload.fetched_at, request.url)] = payload
            self._moments.setdefault(payload.fetched_at, []).append(payload.chart)
        self._lock = threading.Lock()
        self.now: dt.datetime | None = None

    def moments(self) -> Iterator[tuple[dt.datetime, list[ChartKey]]]:
        """Each recorded time, oldest first, with the charts recorded then."""
        yield from sorted(self._moments.items())

    def serve(self, request: Request) -> Response:
        with self._lock:
            payload = self._paths.get((self.now, request.path)) if self.now else None
        if payload is None:
            return Response(404, b"not recorded")
        # Gzip on the wire, as Apple serves it; the client hands the poller the plain body.
        return Response(200, read_body(payload, max_bytes=_MAX_BODY), gzip=True)
