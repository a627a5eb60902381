"""Faulty feed answers for ScriptedServer, as a broken edge, proxy or feed change serves them.

    server.route(path, lambda request: no_answer())
    server.script(path, too_many_requests(seconds=2), Response(200, body))

Each builder returns a `Response` (or bytes for a body); the fault is in the bytes on the
wire, so the whole client path (timeouts, deadline, size cap, inflation, parsing) meets it.
"""

from __future__ import annotations

import email.utils
import gzip
import json
import time
from collections.abc import Callable
from typing import Any

from tests.support.http_server import Request, Response
from tests.support.processes import free_port

# Longer than any test waits: the server's close() interrupts it.
FOREVER = 3600.0


def always(response: Response) -> Callable[[Request], Response]:
    """A handler for `ScriptedServer.route`: `response` to every request."""
    return lambda request: response


def html_error_page(size: int = 6000) -> bytes:
    """A 200's worth of HTML, as an edge server's error page or a captive portal serves it;
    `size` bytes, past what the fetch log keeps of a body."""
    head = (
        b'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        b"<title>Service Unavailable</title>\n</head>\n<body>\n"
        b"<h1>We're sorry, this service is temporarily unavailable.</h1>\n"
    )
    tail = b"</body>\n</html>\n"
    filler = b"<p>Please try again later.</p>\n"
    body = head + filler * ((size - len(head) - len(tail)) // len(filler) + 1)
    return body[: size - len(tail)] + tail


def truncated(body: bytes) -> bytes:
    """The first half of `body`, served whole (honest length): JSON that ends mid-way."""
    return body[: len(body) // 2]


def wrong_schema() -> bytes:
    """Valid JSON of another shape: an API error document where a feed was expected."""
    document: dict[str, Any] = {
        "errors": [
            {
                "id": "RSS_FEED_RETIRED",
                "status": "200",
                "title": "This feed has moved",
                "detail": "See the App Store Connect API. " * 80,
            }
        ]
    }
    return json.dumps(document).encode()


def redirect_to_closed_port() -> Response:
    """A redirect to a loopback port nothing listens on: the one chart meets a refused
    connection while its server answers every other chart."""
    return Response(302, headers={"Location": f"http://127.0.0.1:{free_port()}/feed.json"})


def no_answer() -> Response:
    """The connection is accepted, the request read, and nothing ever comes back."""
    return Response(200, b"{}", delay=FOREVER)


def dripping(body: bytes, *, piece: int = 256, pause: float = 0.05) -> Response:
    """`body` a few bytes at a time: no read ever times out, only the overall deadline helps."""
    return Response(200, body, drip=(piece, pause))


def cut_short(body: bytes) -> Response:
    """Content-Length says the whole body; the connection closes after half of it."""
    return Response(200, body, close_after=len(body) // 2)


def content_length_lie(body: bytes, *, extra: int = 1000) -> Response:
    """Content-Length claims `extra` bytes more than are sent, then the connection closes."""
    return Response(200, body, content_length=len(body) + extra)


def oversized(size: int) -> Response:
    """An honest body of `size` bytes (Content-Length says so)."""
    return Response(200, b" " * size, headers={"Content-Type": "application/json"})


def gzip_bomb(inflated: int) -> Response:
    """`inflated` zero bytes gzip-compressed: about a thousandth of that on the wire.
    Compressed once, here: the server compressing 50 MB per request would delay the head."""
    body = gzip.compress(b"\0" * inflated, mtime=0)
    return Response(200, body, headers={"Content-Encoding": "gzip"})


def too_many_requests(*, seconds: int) -> Response:
    """429 asking for `seconds` of quiet, in Retry-After's delay-seconds form."""
    return Response(429, b"slow down", headers={"Retry-After": str(seconds)})


def too_many_requests_until(*, seconds: int) -> Response:
    """429 asking for quiet until an HTTP date `seconds` after the server's own Date (whole
    seconds, so the wait is exactly `seconds` whatever the clocks)."""
    now = int(time.time())
    return Response(
        429,
        b"slow down",
        headers={
            "Date": email.utils.formatdate(now, usegmt=True),
            "Retry-After": email.utils.formatdate(now + seconds, usegmt=True),
        },
    )
