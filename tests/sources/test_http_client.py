"""FeedClient against a real HTTP server on 127.0.0.1 (tests/support/http_server.py).

Waits that the client decides (backoff, Retry-After, host budget) run on VirtualTime, so
they are asserted exactly and cost nothing; the deadline and a few end-to-end spacing checks
use real time with generous bounds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import email.utils
import hashlib
import itertools
import socket
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

from monitor.errors import (
    BodyTooLarge,
    FetchConnectError,
    FetchError,
    FetchTimeout,
    HostBackoff,
    HttpStatusError,
)
from monitor.model import Validators
from monitor.sources.host_budget import parse_retry_after
from monitor.sources.http import FeedClient, HttpSettings
from tests.support.http_server import Handler, Request, Response, ScriptedServer

pytestmark = pytest.mark.anyio

USER_AGENT = "app-rank-monitor-tests/1.0 (+https://example.invalid/app-rank-monitor)"
OK = Response(200, b'{"feed": {}}', {"Content-Type": "application/json"})


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as server:
        yield server
        assert not server.errors


class VirtualTime:
    """Clock and sleep for the client: sleeping moves the clock instead of waiting.

    The clock moves only when a sleeper resumes, so concurrent tasks that reserve host slots
    before anyone sleeps all see the same "now", as they would in real time.
    """

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.gate: asyncio.Event | None = None  # when set, sleepers wait for it to open

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        wake_at = self.now + seconds
        await (self.gate.wait() if self.gate else asyncio.sleep(0))
        self.now = max(self.now, wake_at)


@pytest.fixture
def vt() -> VirtualTime:
    return VirtualTime()


def settings(**overrides: Any) -> HttpSettings:
    values: dict[str, Any] = {
        "user_agent": USER_AGENT,
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
        "deadline": 10.0,
        "requests_per_minute": 0.0,
    }
    return HttpSettings(**(values | overrides))


def virtual_client(vt: VirtualTime, **overrides: Any) -> FeedClient:
    return FeedClient(settings(**overrides), clock=vt.clock, sleep=vt.sleep, random=lambda: 0.5)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# -- retries ---------------------------------------------------------------------------------


async def test_a_503_is_retried_and_the_second_answer_returned(
    server: ScriptedServer, vt: VirtualTime
) -> None:
    server.script("/feed", Response(503), OK)
    async with virtual_client(vt) as client:
        result = await client.fetch(server.url("/feed"))
    assert (result.status, result.body, result.attempts) == (200, OK.body, 2)
    assert len(server.requests_to("/feed")) == 2


async def test_a_500_storm_gives_up_after_max_attempts_with_the_attempts_counted(
    server: ScriptedServer, vt: VirtualTime
) -> None:
    server.route("/feed", lambda _: Response(500))
    async with virtual_client(vt, max_attempts=3) as client:
        with pytest.raises(HttpStatusError) as caught:
            await client.fetch(server.url("/feed"))
    assert (caught.value.status, caught.value.attempts, caught.value.permanent) == (500, 3, False)
    assert server.url("/feed") in str(caught.value)
    assert len(server.requests_to("/feed")) == 3


async def test_a_404_is_permanent_and_not_retried(server: ScriptedServer, vt: VirtualTime) -> None:
    server.script("/feed", Response(404), OK)
    async with virtual_client(vt) as client:
        with pytest.raises(HttpStatusError) as caught:
            await client.fetch(server.url("/feed"))
    assert (caught.value.status, caught.value.attempts, caught.value.permanent) == (404, 1, True)
    assert server.pending("/feed") == 1
    assert vt.sleeps == []


@pytest.mark.parametrize("status", [408, 429])
async def test_request_timeout_and_too_many_requests_are_retried(
    server: ScriptedServer, vt: VirtualTime, status: int
) -> None:
    server.script("/feed", Response(status), OK)
    async with virtual_client(vt) as client:
        result = await client.fetch(server.url("/feed"))
    assert (result.status, result.attempts) == (200, 2)


async def test_a_refused_connection_is_retried_then_raises_connect_error(vt: VirtualTime) -> None:
    url = f"http://127.0.0.1:{closed_port()}/feed"
    async with virtual_client(vt, max_attempts=3) as client:
        with pytest.raises(FetchConnectError) as caught:
            await client.fetch(url)
    assert caught.value.attempts == 3
    assert url in str(caught.value)
    assert len(vt.sleeps) == 2


async def test_backoff_is_full_jitter_doubling_up_to_its_cap(
    server: ScriptedServer, vt: VirtualTime
) -> None:
    server.route("/feed", lambda _: Response(502))
    async with virtual_client(vt, max_attempts=5, backoff_base=1.0, backoff_max=3.0) as client:
        with pytest.raises(HttpStatusError):
            await client.fetch(server.url("/feed"))
    # random() is 0.5: half of 1, 2, 4 -> capped at 3, 3
    assert vt.sleeps == [0.5, 1.0, 1.5, 1.5]


@pytest.mark.parametrize(
    "fault",
    [Response(200, b"x" * 100, close_after=10), Response(200, b"x" * 10, content_length=100)],
    ids=["closed-mid-body", "short-of-content-length"],
)
async def test_a_body_cut_short_is_retried(
    server: ScriptedServer, vt: VirtualTime, fault: Response
) -> None:
    server.script("/feed", fault, OK)
    async with virtual_client(vt) as client:
        result = await client.fetch(server.url("/feed"))
    assert (result.body, result.attempts) == (OK.body, 2)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/feed", "http://", "not a url"])
async def test_an_unusable_url_fails_permanently_as_a_fetch_error(
    vt: VirtualTime, url: str
) -> None:
    async with virtual_client(vt) as client:
        with pytest.raises(FetchError) as caught:
            await client.fetch(url)
    assert caught.value.permanent
    assert caught.value.attempts == 1


# -- Retry-After -----------------------------------------------------------------------------


def arrival_clock(vt: VirtualTime, arrivals: list[float], answer: Response) -> Handler:
    """A handler that notes the virtual time each request arrives at."""

    def respond(_: Request) -> Response:
        arrivals.append(vt.now)
        return answer

    return respond


async def test_retry_after_seconds_holds_the_retry(server: ScriptedServer, vt: VirtualTime) -> None:
    arrivals: list[float] = []
    server.script("/a", Response(503, headers={"Retry-After": "30"}))
    server.route("/a", arrival_clock(vt, arrivals, OK))
    start = vt.now
    async with virtual_client(vt) as client:
        result = await client.fetch(server.url("/a"))
    assert result.attempts == 2
    assert arrivals[0] >= start + 30
    assert sum(vt.sleeps) == pytest.approx(30.0)  # the backoff counts towards it


async def test_retry_after_seconds_holds_every_url_of_the_host(
    server: ScriptedServer, vt: VirtualTime
) -> None:
    arrivals: list[float] = []
    server.script("/a", Response(503, headers={"Retry-After": "30"}))
    server.route("/b", arrival_clock(vt, arrivals, OK))
    start = vt.now
    async with virtual_client(vt, max_attempts=1) as client:
        with pytest.raises(HttpStatusError):
            await client.fetch(server.url("/a"))
        await client.fetch(server.url("/b"))
    assert arrivals[0] >= start + 30
    assert vt.sleeps == [30.0]


async def test_retry_after_stops_requests_already_waiting_for_a_budget_slot(
    server: ScriptedServer, vt: VirtualTime
) -> None:
    arrivals: list[float] = []
    server.script("/a", Response(503, headers={"Retry-After": "30"}))
    server.route("/b", arrival_clock(vt, arrivals, OK))
    vt.gate = asyncio.Event()
    start = vt.now
    async with virtual_client(vt, requests_per_minute=60.0, max_attempts=1) as client:
        first = asyncio.create_task(client.fetch(server.url("/a")))
        queued = asyncio.create_task(client.fetch(server.url("/b")))
        with pytest.raises(HttpStatusError):
            await first
        vt.gate.set()  # only now does /b wake up from its slot 1 s after /a
        await queued
    assert arrivals[0] >= start + 30
    assert vt.sleeps == [1.0, 29.0]


async def test_retry_after_http_date_counts_from_the_server_date(
    server: ScriptedServer, vt: VirtualTime
) -> None:
    served_at = dt.datetime(2025, 1, 26, 12, 0, tzinfo=dt.UTC)
    retry_at = served_at + dt.timedelta(seconds=45)
    headers = {
        "Date": email.utils.format_datetime(served_at, usegmt=True),
        "Retry-After": email.utils.format_datetime(retry_at, usegmt=True),
    }
    server.script("/a", Response(503, headers=headers))
    server.script("/b", OK)
    async with virtual_client(vt, max_attempts=1) as client:
        with pytest.raises(HttpStatusError):
            await client.fetch(server.url("/a"))
        await client.fetch(server.url("/b"))
    assert vt.sleeps == [45.0]


async def test_retry_after_http_date_without_a_server_date_counts_from_our_clock(
    server: ScriptedServer, vt: VirtualTime
) -> None:
    retry_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)
    retry_after = {"Retry-After": email.utils.format_datetime(retry_at)}
    server.script("/a", Response(429, headers=retry_after))
    server.script("/b", OK)
    async with virtual_client(vt, max_attempts=1) as client:
        with pytest.raises(HttpStatusError):
            await client.fetch(server.url("/a"))
        await client.fetch(server.url("/b"))
    assert len(vt.sleeps) == 1
    assert 50 < vt.sleeps[0] <= 60


@pytest.mark.parametrize("value", ["soon", "-5", "", "1e3", "Wed, 99 Foo 2025 25:00:00 GMT"])
async def test_an_invalid_retry_after_is_ignored(
    server: ScriptedServer, vt: VirtualTime, value: str
) -> None:
    server.script("/a", Response(503, headers={"Retry-After": value}))
    server.script("/b", OK)
    async with virtual_client(vt, max_attempts=1) as client:
        with pytest.raises(HttpStatusError):
            await client.fetch(server.url("/a"))
        await client.fetch(server.url("/b"))
    assert vt.sleeps == []


async def test_retry_after_is_clamped_and_honoured_on_any_error_status(
    server: ScriptedServer, vt: VirtualTime
) -> None:
    server.script("/a", Response(403, headers={"Retry-After": "100000"}))
    server.script("/b", OK)
    async with virtual_client(vt, retry_after_max=50.0) as client:
        with pytest.raises(HttpStatusError):
            await client.fetch(server.url("/a"))
        await client.fetch(server.url("/b"))
    assert vt.sleeps == [50.0]


async def test_retry_after_beyond_max_host_wait_raises_host_backoff_without_sleeping(
    server: ScriptedServer, vt: VirtualTime
) -> None:
    server.script("/a", Response(429, headers={"Retry-After": "600"}))
    async with virtual_client(vt, max_host_wait=120.0) as client:
        with pytest.raises(HostBackoff) as on_retry:
            await client.fetch(server.url("/a"))
        with pytest.raises(HostBackoff) as on_other_url:
            await client.fetch(server.url("/b"))
    assert (on_retry.value.retry_after_seconds, on_retry.value.attempts) == (600.0, 1)
    assert (on_other_url.value.retry_after_seconds, on_other_url.value.attempts) == (600.0, 0)
    assert not on_retry.value.permanent
    assert vt.sleeps == []
    assert [r.path for r in server.requests] == ["/a"]


async def test_retry_after_does_not_hold_another_host(
    server: ScriptedServer, vt: VirtualTime
) -> None:
    server.script("/a", Response(503, headers={"Retry-After": "600"}))
    server.script("/b", OK)
    async with virtual_client(vt, max_attempts=1) as client:
        with pytest.raises(HttpStatusError):
            await client.fetch(server.url("/a"))
        result = await client.fetch(server.url("/b", host="localhost"))
    assert result.status == 200
    assert vt.sleeps == []


async def test_retry_after_delays_the_next_request_in_real_time(server: ScriptedServer) -> None:
    server.script("/a", Response(503, headers={"Retry-After": "1"}))
    server.script("/b", OK)
    async with FeedClient(settings(max_attempts=1)) as client:
        with pytest.raises(HttpStatusError):
            await client.fetch(server.url("/a"))
        await client.fetch(server.url("/b"))
    first, second = server.requests
    assert second.arrived_at - first.arrived_at >= 0.95


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Sun, 26 Jan 2025 12:01:00 GMT", 60.0),
        ("Sunday, 26-Jan-25 11:59:00 GMT", -60.0),
        ("Sun Jan 26 12:00:30 2025", 30.0),
        ("in a minute", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, server_date="Sun, 26 Jan 2025 12:00:00 GMT") == expected


# -- deadline and size cap -------------------------------------------------------------------


@pytest.mark.parametrize(
    "slow",
    [Response(200, b"x" * 100, drip=(1, 0.1)), Response(200, b"x", delay=20.0)],
    ids=["dripping-body", "late-headers"],
)
async def test_the_deadline_stops_a_slow_response(server: ScriptedServer, slow: Response) -> None:
    server.route("/feed", lambda _: slow)
    began = time.monotonic()
    quick = settings(deadline=0.5, read_timeout=30.0, max_attempts=2, backoff_base=0.01)
    async with FeedClient(quick) as client:
        with pytest.raises(FetchTimeout) as caught:
            await client.fetch(server.url("/feed"))
    assert caught.value.attempts == 2
    assert "deadline" in str(caught.value)
    assert time.monotonic() - began < 5.0  # the body alone would take 10 s to drip


async def test_a_declared_body_over_the_cap_is_refused_and_not_retried(
    server: ScriptedServer, vt: VirtualTime
) -> None:
    server.script("/feed", Response(200, b"x" * 300_000), OK)
    async with virtual_client(vt, max_body_bytes=100_000) as client:
        with pytest.raises(BodyTooLarge) as caught:
            await client.fetch(server.url("/feed"))
    assert (caught.value.attempts, caught.value.permanent) == (1, True)


async def test_a_body_without_honest_length_is_stopped_at_the_cap(
    server: ScriptedServer, vt: VirtualTime
) -> None:
    # gzip hides the inflated size: only counting while streaming can catch it.
    server.script("/feed", Response(200, bytes(300_000), gzip=True))
    async with virtual_client(vt, max_body_bytes=100_000) as client:
        with pytest.raises(BodyTooLarge):
            await client.fetch(server.url("/feed"))


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """64 MiB of zeros in about 64 KiB of gzip."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    zeros = bytes(1024 * 1024)
    return b"".join(compressor.compress(zeros) for _ in range(64)) + compressor.flush()


async def test_a_gzip_bomb_is_abandoned_at_the_cap_without_being_inflated(
    server: ScriptedServer, vt: VirtualTime, gzip_bomb: bytes
) -> None:
    server.script("/feed", Response(200, gzip_bomb, {"Content-Encoding": "gzip"}))
    async with virtual_client(vt, max_body_bytes=1024 * 1024) as client:
        tracemalloc.start()
        try:
            with pytest.raises(BodyTooLarge):
                await client.fetch(server.url("/feed"))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 8 * 1024 * 1024


async def test_a_gzip_body_is_returned_decompressed(
    server: ScriptedServer, vt: VirtualTime
) -> None:
    server.script("/feed", dataclasses.replace(OK, gzip=True))
    async with virtual_client(vt) as client:
        result = await client.fetch(server.url("/feed"))
    assert result.body == OK.body
    assert result.content_hash == hashlib.sha256(OK.body).hexdigest()


# -- host budget -----------------------------------------------------------------------------


async def test_concurrent_fetches_to_one_host_start_evenly_spaced(
    server: ScriptedServer, vt: VirtualTime
) -> None:
    server.route("/feed", lambda _: OK)
    async with virtual_client(vt, requests_per_minute=600.0) as client:
        await asyncio.gather(*(client.fetch(server.url("/feed")) for _ in range(5)))
    assert sorted(vt.sleeps) == pytest.approx([0.1, 0.2, 0.3, 0.4])


async def test_budget_spacing_holds_in_real_time(server: ScriptedServer) -> None:
    server.route("/feed", lambda _: OK)
    async with FeedClient(settings(requests_per_minute=300.0)) as client:
        await asyncio.gather(*(client.fetch(server.url("/feed")) for _ in range(4)))
    arrivals = sorted(request.arrived_at for request in server.requests)
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert min(gaps) >= 0.1  # 0.2 s apart at the client; loopback latency varies a little
    assert arrivals[-1] - arrivals[0] >= 0.5


async def test_the_budget_paces_retries_too(server: ScriptedServer, vt: VirtualTime) -> None:
    server.script("/feed", Response(503), OK)
    client = FeedClient(
        settings(requests_per_minute=60.0), clock=vt.clock, sleep=vt.sleep, random=lambda: 0.0
    )
    async with client:
        result = await client.fetch(server.url("/feed"))
    assert result.attempts == 2
    assert vt.sleeps == [1.0]


async def test_a_zero_budget_lets_requests_start_at_once(
    server: ScriptedServer, vt: VirtualTime
) -> None:
    server.route("/feed", lambda _: OK)
    async with virtual_client(vt, requests_per_minute=0.0) as client:
        await asyncio.gather(*(client.fetch(server.url("/feed")) for _ in range(5)))
    assert vt.sleeps == []


async def test_hosts_have_independent_budgets(server: ScriptedServer, vt: VirtualTime) -> None:
    server.route("/feed", lambda _: OK)
    async with virtual_client(vt, requests_per_minute=60.0) as client:
        await asyncio.gather(
            client.fetch(server.url("/feed")), client.fetch(server.url("/feed", host="localhost"))
        )
        assert vt.sleeps == []
        await client.fetch(server.url("/feed"))
    assert vt.sleeps == [1.0]


async def test_a_budget_queue_longer_than_max_host_wait_raises_host_backoff(
    server: ScriptedServer, vt: VirtualTime
) -> None:
    server.route("/feed", lambda _: OK)
    async with virtual_client(vt, requests_per_minute=1.0, max_host_wait=30.0) as client:
        await client.fetch(server.url("/feed"))
        with pytest.raises(HostBackoff) as caught:
            await client.fetch(server.url("/feed"))
    assert (caught.value.retry_after_seconds, caught.value.attempts) == (60.0, 0)
    assert len(server.requests) == 1
    assert vt.sleeps == []


# -- conditional requests, hashing, redirects, headers ---------------------------------------


async def test_validators_are_sent_back_and_a_304_is_not_modified(
    server: ScriptedServer, vt: VirtualTime
) -> None:
    modified = "Sun, 26 Jan 2025 08:00:00 GMT"
    server.script(
        "/feed",
        Response(200, OK.body, {"ETag": '"v1"', "Last-Modified": modified}),
        Response(304),
    )
    async with virtual_client(vt) as client:
        fresh = await client.fetch(server.url("/feed"))
        again = await client.fetch(server.url("/feed"), fresh.validators)
    assert fresh.validators == Validators(etag='"v1"', last_modified=modified)
    conditional = server.requests[1]
    assert conditional.header("If-None-Match") == '"v1"'
    assert conditional.header("If-Modified-Since") == modified
    assert server.requests[0].header("If-None-Match") is None
    assert again.not_modified
    assert not fresh.not_modified
    assert (again.body, again.content_hash) == (b"", None)
    assert again.validators == fresh.validators


async def test_a_304_with_a_new_etag_replaces_the_one_sent(
    server: ScriptedServer, vt: VirtualTime
) -> None:
    server.script("/feed", Response(304, headers={"ETag": '"v2"'}))
    sent = Validators(etag='"v1"', last_modified="Sun, 26 Jan 2025 08:00:00 GMT")
    async with virtual_client(vt) as client:
        result = await client.fetch(server.url("/feed"), sent)
    assert result.validators == Validators(etag='"v2"', last_modified=sent.last_modified)


async def test_identical_bodies_have_identical_content_hashes(
    server: ScriptedServer, vt: VirtualTime
) -> None:
    server.script("/feed", OK, dataclasses.replace(OK, gzip=True), Response(200, b"{}"))
    async with virtual_client(vt) as client:
        hashes = [(await client.fetch(server.url("/feed"))).content_hash for _ in range(3)]
    assert hashes[0] == hashes[1] == hashlib.sha256(OK.body).hexdigest()
    assert hashes[2] != hashes[0]


@pytest.mark.parametrize(("new_host", "waits"), [("localhost", []), ("127.0.0.1", [1.0])])
async def test_a_redirect_is_followed_and_each_hop_waits_for_its_own_host(
    server: ScriptedServer, vt: VirtualTime, new_host: str, waits: list[float]
) -> None:
    server.script("/old", Response(301, headers={"Location": server.url("/new", host=new_host)}))
    server.script("/new", OK)
    async with virtual_client(vt, requests_per_minute=60.0) as client:
        result = await client.fetch(server.url("/old"))
    assert result.url == server.url("/new", host=new_host)
    assert (result.body, result.attempts) == (OK.body, 1)
    assert vt.sleeps == waits


async def test_a_redirect_loop_fails_permanently(server: ScriptedServer, vt: VirtualTime) -> None:
    server.route("/loop", lambda _: Response(302, headers={"Location": "/loop"}))
    async with virtual_client(vt) as client:
        with pytest.raises(FetchError) as caught:
            await client.fetch(server.url("/loop"))
    assert caught.value.permanent
    assert "redirects" in str(caught.value)
    assert len(server.requests) == 6


async def test_requests_say_who_we_are_and_what_we_accept(
    server: ScriptedServer, vt: VirtualTime
) -> None:
    server.script("/feed", OK)
    async with virtual_client(vt) as client:
        await client.fetch(server.url("/feed"))
    (request,) = server.requests
    assert request.header("User-Agent") == USER_AGENT
    assert request.header("Accept") == "application/json"
    assert request.header("Accept-Encoding") == "gzip"


def test_settings_report_every_problem_at_once() -> None:
    with pytest.raises(ValueError, match="deadline must be positive") as caught:
        HttpSettings(user_agent=" ", deadline=0, max_attempts=0, requests_per_minute=-1)
    message = str(caught.value)
    assert "user_agent" in message
    assert "max_attempts" in message
    assert "requests_per_minute" in message
