"""A TCP fault proxy on 127.0.0.1, between the service and PostgreSQL or an SMTP server.

    with FaultProxy("127.0.0.1", 5432) as proxy:     # the service connects to proxy.port
        proxy.set_latency(0.5)      # each forwarded chunk waits half a second
        proxy.blackhole()           # connections stay open, nothing flows either way
        proxy.refuse()              # new connections are reset at once
        proxy.reset_all()           # RST on every open connection (SO_LINGER 0)
        proxy.cut_after(100)        # new connections close after 100 bytes from the server
        proxy.heal()                # plain pass-through again
        proxy.open_connections      # connections being proxied now

Faults apply at once to open connections (latency, black hole) or to the next ones (refusal,
cut). A black hole reads nothing: what was sent meanwhile waits in the kernel's buffers and
flows on heal(), as after a network partition that ends. `close()` (or leaving the `with`
block) closes every connection and joins every thread: nothing is left running.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from types import TracebackType
from typing import Self

_CHUNK = 65536
# How often an idle connection thread looks at the fault settings again.
_POLL_SECONDS = 0.02


class FaultProxy:
    """See the module docstring. Usable once: start (or enter), then close (or exit)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._latency = 0.0
        self._blackholed = False
        self._refusing = False
        self._cut_after: int | None = None
        self._connections: set[_Connection] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._acceptor = threading.Thread(target=self._accept_loop, name="fault-proxy-accept")
        self._started = False
        self._closed = False

    @property
    def port(self) -> int:
        port: int = self._listener.getsockname()[1]
        return port

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._connections)

    def start(self) -> Self:
        self._started = True
        self._acceptor.start()
        return self

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        if self._started:
            self._acceptor.join()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join()
        self._listener.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- faults ------------------------------------------------------------------------------

    def set_latency(self, seconds: float) -> None:
        """Delay each forwarded chunk, both ways, on open and new connections."""
        with self._lock:
            self._latency = seconds

    def blackhole(self, on: bool = True) -> None:
        """Forward nothing either way; new connections are accepted and stay silent."""
        with self._lock:
            self._blackholed = on

    def refuse(self, on: bool = True) -> None:
        """Reset new connections as soon as they are accepted."""
        with self._lock:
            self._refusing = on

    def cut_after(self, nbytes: int | None) -> None:
        """Close each new connection once `nbytes` came from the server (None: never)."""
        with self._lock:
            self._cut_after = nbytes

    def reset_all(self) -> None:
        """Reset every open connection (RST to both ends), and wait until they are gone."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.reset.set()
        for connection in connections:
            connection.closed.wait()

    def heal(self) -> None:
        """Plain pass-through again, for open and new connections."""
        with self._lock:
            self._latency = 0.0
            self._blackholed = False
            self._refusing = False
            self._cut_after = None

    # -- threads -----------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            while not self._stopping.is_set():
                if not selector.select(_POLL_SECONDS):
                    continue
                client, _ = self._listener.accept()
                with self._lock:
                    refusing, cut_after = self._refusing, self._cut_after
                if refusing:
                    _reset(client)
                    continue
                try:
                    server = socket.create_connection(self._target, timeout=5)
                except OSError:
                    _reset(client)  # as the target itself would answer a refused connect
                    continue
                connection = _Connection(client, server, cut_after)
                thread = threading.Thread(
                    target=self._forward, args=(connection,), name="fault-proxy-connection"
                )
                with self._lock:
                    self._connections.add(connection)
                    self._threads = [t for t in self._threads if t.is_alive()]
                    self._threads.append(thread)
                thread.start()

    def _forward(self, connection: _Connection) -> None:
        """Both directions of one connection, in one thread: a chunk at a time, in order."""
        peers = {connection.client: connection.server, connection.server: connection.client}
        try:
            with selectors.DefaultSelector() as selector:
                for sock in peers:
                    sock.setblocking(False)
                    selector.register(sock, selectors.EVENT_READ)
                while not (self._stopping.is_set() or connection.reset.is_set()):
                    with self._lock:
                        blackholed = self._blackholed
                    if blackholed:
                        connection.reset.wait(_POLL_SECONDS)
                        continue
                    for key, _ in selector.select(_POLL_SECONDS):
                        source: socket.socket = key.fileobj  # type: ignore[assignment]
                        if not self._pass_on(connection, source, peers[source]):
                            return
        except OSError:
            pass  # either end went away: the connection ends
        finally:
            with self._lock:
                self._connections.discard(connection)
            connection.close()

    def _pass_on(
        self, connection: _Connection, source: socket.socket, target: socket.socket
    ) -> bool:
        """Forward one chunk from `source`; False when the connection is to end."""
        with self._lock:
            latency, blackholed = self._latency, self._blackholed
        if blackholed:  # turned on while this thread waited for data: leave it unread
            return True
        data = source.recv(_CHUNK)
        if not data:
            return False
        if latency and (self._stopping.wait(latency) or connection.reset.is_set()):
            return False
        cut = False
        if source is connection.server and connection.cut_after is not None:
            allowed = connection.cut_after - connection.from_server
            cut = len(data) >= allowed
            data = data[:allowed]
            connection.from_server += len(data)
        target.setblocking(True)
        target.sendall(data)
        target.setblocking(False)
        return not cut


class _Connection:
    def __init__(self, client: socket.socket, server: socket.socket, cut_after: int | None):
        self.client = client
        self.server = server
        self.cut_after = cut_after
        self.from_server = 0
        self.reset = threading.Event()
        self.closed = threading.Event()

    def close(self) -> None:
        for sock in (self.client, self.server):
            if self.reset.is_set():
                _reset(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self.closed.set()


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a RST, not a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
