"""monitor.demo.feeds' recorded feeds answering a ScriptedServer, to poll what `replay`
imports one moment at a time.

    feeds = RecordedFeeds(payloads)
    with ScriptedServer(fallback=feeds.serve) as server:
        for at, charts in feeds.moments():
            feeds.now = at          # each chart answers with its payload recorded at `at`
            ...poll `charts` with a clock reading `at`...
"""

from __future__ import annotations

from collections.abc import Sequence

from monitor.demo import feeds
from monitor.replay import RecordedPayload
from tests.support.http_server import Request, Response

_MAX_BODY = 8 * 1024 * 1024


class RecordedFeeds(feeds.RecordedFeeds):
    def __init__(self, payloads: Sequence[RecordedPayload], *, depth: int = 100) -> None:
        super().__init__(payloads, depth=depth, max_body_bytes=_MAX_BODY)

    def serve(self, request: Request) -> Response:
        payload = self.payload_at(request.path)
        if payload is None:
            return Response(404, b"not recorded")
        # Gzip on the wire, as Apple serves it; the client hands the poller the plain body.
        return Response(200, self.body(payload), gzip=True)
