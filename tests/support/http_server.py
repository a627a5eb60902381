"""A scripted HTTP/1.1 server on 127.0.0.1, for tests that need real sockets and real faults.

    with ScriptedServer() as server:
        server.script("/feed.json", Response(503, headers={"Retry-After": "1"}), Response(200))
        server.route("/lookup", lambda request: Response.json({"id": request.query["id"]}))
        url = server.url("/feed.json")          # or server.url("/x", host="localhost")
        ...
        assert [r.path for r in server.requests] == ["/feed.json", "/feed.json"]
        assert not server.unexpected

Which response a request gets, looked up by path (the query string is not part of the key):
  1. the next one queued by `script(path, ...)`, each served once, in order;
  2. else the handler installed by `route(path, handler)`, called for every request;
  3. else the server-wide `fallback` handler (constructor argument), if any;
  4. else a 404, and the request is kept in `unexpected` so a test can assert nothing strayed.
A handler is a function `(Request) -> Response`; it runs on the connection's thread, outside
the server's lock. One that raises answers 500 and its exception is kept in `errors`.

Each `Response` can inject faults: `delay` before the status line, `drip` the body a few bytes
at a time, `close_after` some body bytes, lie in `content_length`. Only framing headers are
added for you (Content-Length, and Content-Encoding with `gzip=True`): no Date, no Server.

Every request is recorded before its response starts, with `time.monotonic()` arrival time, so
once a client has any response the request behind it is in `requests`. `close()` (or leaving
the `with` block) interrupts delays and drips, shuts every open connection and joins every
thread: nothing is left running and no socket is left open.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import http
import http.server
import json
import socket
import socketserver
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Self
from urllib.parse import parse_qsl, urlsplit

HeaderItems = Mapping[str, str] | Sequence[tuple[str, str]]


@dataclasses.dataclass(frozen=True)
class Request:
    """One request as the server read it."""

    method: str
    target: str  # as sent: path and query string
    headers: Mapping[str, str]  # names lower-cased; repeated headers joined with ", "
    body: bytes
    arrived_at: float  # time.monotonic() once the request head was read

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.target).query, keep_blank_values=True))

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclasses.dataclass(frozen=True)
class Response:
    """What to answer, and how badly.

    `drip=(n, seconds)` sends the body n bytes at a time with a pause before each piece.
    `close_after=n` closes the connection after n body bytes (Content-Length still says the
    whole body). `content_length` replaces the true Content-Length; the connection is closed
    after such a response so the lie cannot spill into the next exchange.
    """

    status: int = 200
    body: bytes = b""
    headers: HeaderItems = ()
    gzip: bool = False
    delay: float = 0.0
    drip: tuple[int, float] | None = None
    close_after: int | None = None
    content_length: int | None = None

    @classmethod
    def json(cls, payload: object, *, status: int = 200, headers: HeaderItems = ()) -> Response:
        """A JSON body; add faults with `dataclasses.replace(Response.json(...), drip=...)`."""
        body = json.dumps(payload).encode()
        return cls(status, body, [("Content-Type", "application/json"), *_items(headers)])

    def header_items(self) -> list[tuple[str, str]]:
        return _items(self.headers)


Handler = Callable[[Request], Response]


def _items(headers: HeaderItems) -> list[tuple[str, str]]:
    return list(headers.items()) if isinstance(headers, Mapping) else list(headers)


class ScriptedServer:
    """See the module docstring. Usable once: start (or enter), then close (or exit)."""

    def __init__(self, *, fallback: Handler | None = None) -> None:
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._fallback = fallback
        self._queues: dict[str, deque[Response | Handler]] = {}
        self._routes: dict[str, Handler] = {}
        self._requests: list[Request] = []
        self._unexpected: list[Request] = []
        self._errors: list[BaseException] = []
        self._connections: set[socket.socket] = set()
        self._httpd = _ThreadingServer(self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._closed = False

    def start(self) -> Self:
        self._thread.start()
        return self

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join()
        with self._lock:
            for connection in self._connections:
                _shut(connection)
        self._httpd.server_close()  # also joins the connection threads

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def port(self) -> int:
        port: int = self._httpd.server_address[1]
        return port

    def url(self, path: str = "/", *, host: str = "127.0.0.1") -> str:
        """A URL of this server; `host="localhost"` reaches it under a second host name."""
        return f"http://{host}:{self.port}/{path.lstrip('/')}"

    def script(self, path: str, *responses: Response | Handler) -> None:
        """Queue responses (or one-shot handlers) for `path`, served once each, in order."""
        with self._lock:
            self._queues.setdefault(path, deque()).extend(responses)

    def route(self, path: str, handler: Handler) -> None:
        """Answer every request to `path` (once its queue is empty) with `handler`."""
        with self._lock:
            self._routes[path] = handler

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, path: str) -> list[Request]:
        return [request for request in self.requests if request.path == path]

    @property
    def unexpected(self) -> list[Request]:
        with self._lock:
            return list(self._unexpected)

    @property
    def errors(self) -> list[BaseException]:
        with self._lock:
            return list(self._errors)

    def pending(self, path: str) -> int:
        """How many scripted responses for `path` have not been served yet."""
        with self._lock:
            return len(self._queues.get(path, ()))

    # -- used by the connection threads ---------------------------------------------------

    def _respond(self, request: Request) -> Response:
        with self._lock:
            self._requests.append(request)
            queue = self._queues.get(request.path)
            fallback = self._routes.get(request.path, self._fallback)
            answer: Response | Handler | None = queue.popleft() if queue else fallback
            if answer is None:
                self._unexpected.append(request)
                message = f"nothing scripted for {request.method} {request.target}"
                return Response(404, message.encode(), {"Content-Type": "text/plain"})
        if isinstance(answer, Response):
            return answer
        try:
            return answer(request)
        except Exception as exc:
            self._record_error(exc)
            return Response(500, f"handler raised {exc!r}".encode())

    def _record_error(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)

    def _opened(self, connection: socket.socket) -> None:
        with self._lock:
            if self._stopping.is_set():
                _shut(connection)
            else:
                self._connections.add(connection)

    def _finished(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)


def _shut(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already shut by the peer
        connection.shutdown(socket.SHUT_RDWR)


class _ThreadingServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    # Non-daemon threads, joined by server_close(): a test never leaves one running.
    daemon_threads = False
    block_on_close = True

    def __init__(self, owner: ScriptedServer) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _ConnectionHandler)

    def handle_error(self, request: object, client_address: object) -> None:
        exc = sys.exc_info()[1]
        if exc is not None and not isinstance(exc, ConnectionError):
            self.owner._record_error(exc)


class _ConnectionHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The head and the body go out in separate writes; Nagle would hold the body back until
    # the client's delayed ACK, adding ~40 ms to every exchange.
    disable_nagle_algorithm = True
    server: _ThreadingServer

    def setup(self) -> None:
        super().setup()
        self.server.owner._opened(self.connection)

    def finish(self) -> None:
        self.server.owner._finished(self.connection)
        super().finish()

    def log_message(self, format: str, *args: object) -> None:
        pass  # the requests are recorded; stderr noise would hide test output

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        arrived_at = time.monotonic()
        request = Request(self.command, self.path, headers, body, arrived_at)
        response = self.server.owner._respond(request)
        try:
            self._send(response)
        except ConnectionError:
            self.close_connection = True  # the client gave up; that is what some tests want

    def _send(self, response: Response) -> None:
        stopping = self.server.owner._stopping
        if response.delay and stopping.wait(response.delay):
            self.close_connection = True
            return
        body = gzip.compress(response.body, mtime=0) if response.gzip else response.body
        length = len(body) if response.content_length is None else response.content_length
        try:
            reason = http.HTTPStatus(response.status).phrase
        except ValueError:
            reason = "Scripted"
        head = [f"HTTP/1.1 {response.status} {reason}", f"Content-Length: {length}"]
        if response.gzip:
            head.append("Content-Encoding: gzip")
        head += [f"{name}: {value}" for name, value in response.header_items()]
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if self.command == "HEAD":
            return
        if response.close_after is not None:
            body = body[: response.close_after]
        step, pause = response.drip or (len(body) or 1, 0.0)
        for offset in range(0, len(body), step):
            if pause and stopping.wait(pause):
                break
            self.wfile.write(body[offset : offset + step])
        if response.close_after is not None or response.content_length is not None:
            self.close_connection = True
