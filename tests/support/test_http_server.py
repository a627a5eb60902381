"""The scripted test server itself: dispatch order, recording, faults and a clean shutdown."""

from __future__ import annotations

import contextlib
import gzip
import http.client
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.http_server import Request, Response, ScriptedServer


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as server:
        yield server


@contextlib.contextmanager
def connection(server: ScriptedServer) -> Iterator[http.client.HTTPConnection]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        yield conn
    finally:
        conn.close()


def get(server: ScriptedServer, path: str) -> tuple[int, dict[str, str], bytes]:
    with connection(server) as conn:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()


def test_scripted_responses_are_served_once_each_then_the_route_then_a_404(
    server: ScriptedServer,
) -> None:
    server.script("/feed", Response(503), Response(200, b"first"))
    server.route("/feed", lambda request: Response(200, request.query["n"].encode()))
    statuses = [get(server, path)[::2] for path in ("/feed", "/feed", "/feed?n=7")]
    assert statuses == [(503, b""), (200, b"first"), (200, b"7")]
    assert get(server, "/other")[0] == 404
    assert [request.target for request in server.unexpected] == ["/other"]


def test_the_fallback_answers_any_unscripted_path() -> None:
    with ScriptedServer(fallback=lambda request: Response(200, request.path.encode())) as server:
        assert get(server, "/us/rss/topfreeapplications/limit=100/json")[2] == (
            b"/us/rss/topfreeapplications/limit=100/json"
        )
        assert server.unexpected == []


def test_a_handler_that_raises_answers_500_and_is_recorded(server: ScriptedServer) -> None:
    def broken(_: Request) -> Response:
        raise RuntimeError("boom")

    server.route("/feed", broken)
    assert get(server, "/feed")[0] == 500
    assert [str(error) for error in server.errors] == ["boom"]


def test_requests_are_recorded_with_headers_body_and_arrival_time(server: ScriptedServer) -> None:
    server.script("/lookup", Response(200))
    before = time.monotonic()
    with connection(server) as conn:
        conn.request("POST", "/lookup?id=1,2", body=b"payload", headers={"X-Probe": "yes"})
        conn.getresponse().read()
    (request,) = server.requests
    assert (request.method, request.path, request.query) == ("POST", "/lookup", {"id": "1,2"})
    assert (request.header("x-probe"), request.body) == ("yes", b"payload")
    assert before <= request.arrived_at <= time.monotonic()


def test_only_framing_headers_are_added(server: ScriptedServer) -> None:
    server.script("/feed", Response(200, b"abc", {"ETag": '"v1"'}))
    _, headers, _ = get(server, "/feed")
    assert headers == {"Content-Length": "3", "ETag": '"v1"'}


def test_json_and_gzip_responses(server: ScriptedServer) -> None:
    server.script("/feed", Response(200, b"x" * 1000, gzip=True), Response.json({"a": 1}))
    _, headers, body = get(server, "/feed")
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == b"x" * 1000
    _, headers, body = get(server, "/feed")
    assert (headers["Content-Type"], body) == ("application/json", b'{"a": 1}')


def test_keep_alive_serves_several_requests_on_one_connection(server: ScriptedServer) -> None:
    server.route("/feed", lambda _: Response(200, b"ok"))
    with connection(server) as conn:
        for _ in range(3):
            conn.request("GET", "/feed")
            assert conn.getresponse().read() == b"ok"
    assert len(server.requests) == 3


def test_delay_and_drip_slow_the_response_down(server: ScriptedServer) -> None:
    server.script("/feed", Response(200, b"0123456789", delay=0.2, drip=(5, 0.1)))
    began = time.monotonic()
    assert get(server, "/feed")[2] == b"0123456789"
    assert time.monotonic() - began >= 0.35  # 0.2 before the head, 0.1 before each piece


def test_close_after_cuts_the_body_short(server: ScriptedServer) -> None:
    server.script("/feed", Response(200, b"0123456789", close_after=4))
    with connection(server) as conn:
        conn.request("GET", "/feed")
        with pytest.raises(http.client.IncompleteRead) as caught:
            conn.getresponse().read()
    assert caught.value.partial == b"0123"


def test_a_wrong_content_length_is_sent_as_scripted(server: ScriptedServer) -> None:
    server.script("/feed", Response(200, b"0123456789", content_length=4))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(b"GET /feed HTTP/1.1\r\nHost: test\r\n\r\n")
        received = b""
        while chunk := raw.recv(4096):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"Content-Length: 4" in head
    assert body == b"0123456789"


def test_close_interrupts_slow_responses_and_leaves_no_thread_behind() -> None:
    threads_before = threading.active_count()
    server = ScriptedServer().start()
    server.script("/late", Response(200, b"x", delay=30.0))
    server.script("/drip", Response(200, b"x" * 100, drip=(1, 1.0)))
    idle = socket.create_connection(("127.0.0.1", server.port))  # a keep-alive client
    clients = [
        threading.Thread(target=_swallow_errors, args=(server, path)) for path in ("/late", "/drip")
    ]
    for client in clients:
        client.start()
    deadline = time.monotonic() + 10
    while len(server.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    began = time.monotonic()
    server.close()
    assert time.monotonic() - began < 5.0
    for client in clients:
        client.join(timeout=10)
    idle.close()
    assert threading.active_count() == threads_before


def _swallow_errors(server: ScriptedServer, path: str) -> None:
    with contextlib.suppress(http.client.HTTPException, OSError):
        get(server, path)
