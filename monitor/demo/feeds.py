"""A folder of recorded payloads (monitor.replay's layout) served at the paths Apple's feeds
serve their charts at, as of a settable moment: the demo's feed server, and the tests' way to
poll what `replay` imports.

At each moment a chart's path answers with the payload recorded last at or before it, as a
live feed keeps serving a chart until it changes; before its first payload, or at a path no
payload is for, it answers 404. Bodies go out gzip-encoded, as Apple serves them.
"""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import gzip
import threading
from collections.abc import Iterator, Sequence

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from monitor.model import ChartKey
from monitor.replay import RecordedPayload, read_body
from monitor.sources.catalog import FeedEndpoints, feed_requests

# feed_requests only needs the paths: the host part is cut off again.
_NO_HOST = FeedEndpoints(itunes_base_url="", apple_rss_base_url="")


class RecordedFeeds:
    """`depth`: the entries a poll asks for, which is part of a feed's path."""

    def __init__(
        self, payloads: Sequence[RecordedPayload], *, depth: int, max_body_bytes: int
    ) -> None:
        self._by_path: dict[str, list[RecordedPayload]] = {}
        self._moments: dict[dt.datetime, list[ChartKey]] = {}
        self._max_body_bytes = max_body_bytes
        for payload in sorted(payloads, key=lambda payload: payload.fetched_at):
            (request,) = [
                r
                for r in feed_requests(payload.chart, depth=depth, endpoints=_NO_HOST)
                if r.source is payload.source
            ]
            self._by_path.setdefault(request.url, []).append(payload)
            self._moments.setdefault(payload.fetched_at, []).append(payload.chart)
        self._lock = threading.Lock()
        self._now: dt.datetime | None = None

    @property
    def now(self) -> dt.datetime | None:
        with self._lock:
            return self._now

    @now.setter
    def now(self, at: dt.datetime | None) -> None:
        with self._lock:
            self._now = at

    def moments(self) -> Iterator[tuple[dt.datetime, list[ChartKey]]]:
        """Each recorded time, oldest first, with the charts recorded then."""
        yield from sorted(self._moments.items())

    def payload_at(self, path: str) -> RecordedPayload | None:
        """What the feed at `path` serves now."""
        now = self.now
        recorded = self._by_path.get(path)
        if now is None or not recorded:
            return None
        index = bisect.bisect_right(recorded, now, key=lambda payload: payload.fetched_at)
        return recorded[index - 1] if index else None

    def body(self, payload: RecordedPayload) -> bytes:
        """The payload's bytes as served (OSError for a file that cannot be read)."""
        return read_body(payload, max_bytes=self._max_body_bytes)

    def app(self) -> Starlette:
        """The feeds as an ASGI application, for any host name."""

        async def serve(request: Request) -> Response:
            payload = self.payload_at(request.url.path)
            if payload is None:
                return Response(b"not recorded", status_code=404, media_type="text/plain")
            body = await asyncio.to_thread(self.body, payload)
            return Response(
                gzip.compress(body, mtime=0),
                media_type="application/json",
                headers={"Content-Encoding": "gzip"},
            )

        return Starlette(routes=[Route("/{path:path}", serve)])
