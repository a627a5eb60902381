"""The TCP fault proxy itself, against a loopback echo server: each fault, heal, clean close."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.fault_proxy import FaultProxy
from tests.support.processes import wait_for


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


class _EchoServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True


@pytest.fixture
def echo_port() -> Iterator[int]:
    with _EchoServer(("127.0.0.1", 0), _Echo) as server:
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()
            thread.join()


@pytest.fixture
def proxy(echo_port: int) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo_port) as proxy:
        yield proxy


@contextlib.contextmanager
def client(proxy: FaultProxy, timeout: float = 5) -> Iterator[socket.socket]:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout) as sock:
        yield sock


def receive(sock: socket.socket, size: int) -> bytes:
    """Up to `size` bytes, fewer only when the other end closed."""
    received = b""
    while len(received) < size:
        chunk = sock.recv(size - len(received))
        if not chunk:
            break
        received += chunk
    return received


def exchange(proxy: FaultProxy, data: bytes) -> bytes:
    """Send `data` on a new connection and read its echo. A reset surfaces during connect or
    on the first read, depending on who is quicker: either raises ConnectionResetError."""
    with client(proxy) as sock:
        sock.sendall(data)
        return receive(sock, len(data))


def test_bytes_pass_through_both_ways_and_the_connection_is_counted(proxy: FaultProxy) -> None:
    with client(proxy) as sock:
        sock.sendall(b"hello")
        assert receive(sock, 5) == b"hello"
        assert proxy.open_connections == 1
    wait_for(lambda: proxy.open_connections == 0, "the closed connection to be forgotten", 5)


def test_latency_delays_each_chunk_and_heal_removes_it(proxy: FaultProxy) -> None:
    with client(proxy) as sock:
        proxy.set_latency(0.3)
        started = time.monotonic()
        sock.sendall(b"slow")
        assert receive(sock, 4) == b"slow"
        # Delayed on the way in and on the way back.
        assert time.monotonic() - started >= 0.6

        proxy.heal()
        started = time.monotonic()
        sock.sendall(b"fast")
        assert receive(sock, 4) == b"fast"
        assert time.monotonic() - started < 0.3


def test_a_black_hole_keeps_connections_open_and_silent_until_healed(proxy: FaultProxy) -> None:
    with client(proxy) as before:
        before.sendall(b"warm")
        assert receive(before, 4) == b"warm"
        proxy.blackhole()
        before.settimeout(0.3)
        before.sendall(b"lost?")
        with pytest.raises(TimeoutError):
            before.recv(16)
        # A new connection is accepted, and hears nothing either.
        with client(proxy, timeout=0.3) as during:
            during.sendall(b"anyone?")
            with pytest.raises(TimeoutError):
                during.recv(16)
            assert proxy.open_connections == 2

            proxy.heal()
            during.settimeout(5)
            before.settimeout(5)
            # Nothing was dropped: what waited in the hole flows on.
            assert receive(during, 7) == b"anyone?"
            assert receive(before, 5) == b"lost?"


def test_refused_connections_are_reset_at_once_and_heal_lets_them_in(proxy: FaultProxy) -> None:
    proxy.refuse()
    with pytest.raises(ConnectionResetError):
        exchange(proxy, b"x")
    assert proxy.open_connections == 0

    proxy.heal()
    with client(proxy) as sock:
        sock.sendall(b"in")
        assert receive(sock, 2) == b"in"


def test_reset_all_resets_every_open_connection(proxy: FaultProxy) -> None:
    with client(proxy) as first, client(proxy) as second:
        for sock in (first, second):
            sock.sendall(b"up")
            assert receive(sock, 2) == b"up"

        proxy.reset_all()

        assert proxy.open_connections == 0
        for sock in (first, second):
            with pytest.raises(ConnectionResetError):
                sock.recv(16)
        # The proxy itself goes on accepting.
        with client(proxy) as third:
            third.sendall(b"again")
            assert receive(third, 5) == b"again"


def test_cut_after_closes_new_connections_after_that_many_bytes_from_the_server(
    proxy: FaultProxy,
) -> None:
    with client(proxy) as before:
        before.sendall(b"up")
        assert receive(before, 2) == b"up"  # accepted by the proxy before the cut is set
        proxy.cut_after(5)
        with client(proxy) as cut:
            cut.sendall(b"0123456789")
            assert receive(cut, 10) == b"01234"  # then the end of the stream
        # Connections opened before the cut are not affected.
        before.sendall(b"0123456789")
        assert receive(before, 10) == b"0123456789"


def test_close_ends_every_connection_and_thread_and_frees_the_port(echo_port: int) -> None:
    proxy = FaultProxy("127.0.0.1", echo_port).start()
    port = proxy.port
    with client(proxy) as sock:
        proxy.set_latency(5)  # a connection thread is waiting out its latency
        sock.sendall(b"x")
        wait_for(lambda: proxy.open_connections == 1, "the connection", 5)
        started = time.monotonic()
        proxy.close()
        assert time.monotonic() - started < 2
        assert receive(sock, 1) == b""
    assert not [t for t in threading.enumerate() if t.name.startswith("fault-proxy")]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_a_target_that_refuses_makes_the_proxy_reset_the_client() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead_port = unused.getsockname()[1]
    with FaultProxy("127.0.0.1", dead_port) as proxy:
        with pytest.raises(ConnectionResetError):
            exchange(proxy, b"x")
        assert proxy.open_connections == 0
