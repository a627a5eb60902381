"""Poll rounds: which charts a round polls, how many at once, and how it stops.

Real components throughout: a migrated database, the feed client against a ScriptedServer on
127.0.0.1, and FakeAppleCharts payloads. Grossing charts are used where counting matters:
only the legacy feed serves them, so one chart polled is exactly one request to one path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from sqlalchemy import select

from monitor import rounds as rounds_module
from monitor.model import ChartKey, FetchOutcome, PollClaim
from monitor.rounds import PollRounds
from monitor.store.engine import Database
from monitor.store.repository import Repository
from monitor.store.tables import fetch_log, poll_tasks, snapshots
from monitor.wiring import utc_now
from tests.conftest import migrated
from tests.support.http_server import Request, Response, ScriptedServer
from tests.test_polling import (
    INTERVAL,
    LEASE,
    SLACK,
    AppleFeeds,
    Harness,
    apple_server,
    grossing,
    harness,
    legacy_path,
)

pytestmark = pytest.mark.anyio

COUNTRIES = ("us", "gb", "de", "fr", "jp", "ca")
CHARTS = grossing(*COUNTRIES)


class SlowFeeds:
    """Serves FakeAppleCharts after `delay` seconds and records how many requests overlap."""

    def __init__(self, delay: float) -> None:
        self._feeds = AppleFeeds()
        self._delay = delay
        self._lock = threading.Lock()
        self._active = 0
        self.peak = 0

    def serve(self, request: Request) -> Response:
        with self._lock:
            self._active += 1
            self.peak = max(self.peak, self._active)
        try:
            time.sleep(self._delay)  # the request is in flight at the server meanwhile
            return self._feeds.serve(request)
        finally:
            with self._lock:
                self._active -= 1


@pytest.fixture
def slow_feeds() -> SlowFeeds:
    return SlowFeeds(delay=0.2)


@pytest.fixture
def slow_apple(slow_feeds: SlowFeeds) -> Iterator[ScriptedServer]:
    with ScriptedServer(fallback=slow_feeds.serve) as server:
        yield server
        assert not server.errors


def requests_per_chart(server: ScriptedServer, chart_keys: Sequence[ChartKey]) -> dict[str, int]:
    counts = Counter(request.path for request in server.requests)
    return {chart.country: counts[legacy_path(chart)] for chart in chart_keys} | {
        "other paths": len(server.requests) - sum(counts[legacy_path(c)] for c in chart_keys)
    }


def exactly(times: int, chart_keys: Sequence[ChartKey]) -> dict[str, int]:
    return {chart.country: times for chart in chart_keys} | {"other paths": 0}


def due_times(database: Database) -> list[dt.datetime]:
    with database.engine.connect() as connection:
        return list(connection.scalars(select(poll_tasks.c.next_due_at)))


def rows(database: Database, table: Any) -> int:
    with database.engine.connect() as connection:
        return len(connection.execute(select(table)).all())


async def wait_until(condition: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        await asyncio.sleep(0.02)


# -- what a round polls --------------------------------------------------------------------


async def test_a_round_never_has_more_than_concurrency_fetches_in_flight(
    sqlite_database: Database, slow_apple: ScriptedServer, slow_feeds: SlowFeeds
) -> None:
    async with harness(sqlite_database, slow_apple, chart_keys=CHARTS) as h:
        summary = await h.rounds(concurrency=2).run_round()

    assert slow_feeds.peak == 2  # the limit is kept, and used
    assert requests_per_chart(slow_apple, CHARTS) == exactly(1, CHARTS)
    assert [r.outcome for r in summary.results] == [FetchOutcome.CHANGED] * len(CHARTS)
    assert summary.errors == 0


class WriteHeldUntilNextFetch(Repository):
    """The first snapshot write waits (up to 10 s) for the feed server to get one more request:
    it can only come if the writing poll gave its fetch slot back."""

    def __init__(self, database: Database, server: ScriptedServer) -> None:
        super().__init__(database)
        self._server = server
        self._first = threading.Lock()
        self.next_fetch_during_first_write = False

    def record_snapshot(self, claim: PollClaim, *args: Any, **kwargs: Any) -> Any:
        if self._first.acquire(blocking=False):
            seen = len(self._server.requests)
            deadline = time.monotonic() + 10
            while len(self._server.requests) == seen and time.monotonic() < deadline:
                time.sleep(0.01)
            self.next_fetch_during_first_write = len(self._server.requests) > seen
        return super().record_snapshot(claim, *args, **kwargs)


async def test_a_poll_writing_its_snapshot_no_longer_holds_a_fetch_slot(
    sqlite_database: Database, slow_apple: ScriptedServer, slow_feeds: SlowFeeds
) -> None:
    repository = WriteHeldUntilNextFetch(sqlite_database, slow_apple)
    async with harness(sqlite_database, slow_apple, chart_keys=CHARTS, repository=repository) as h:
        summary = await h.rounds(concurrency=1).run_round()

    assert repository.next_fetch_during_first_write
    assert slow_feeds.peak == 1
    assert [r.outcome for r in summary.results] == [FetchOutcome.CHANGED] * len(CHARTS)
    assert requests_per_chart(slow_apple, CHARTS) == exactly(1, CHARTS)


async def test_a_chart_that_waited_long_for_a_fetch_slot_is_fetched_on_a_renewed_lease(
    sqlite_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rounds_module, "RENEW_AFTER_WAITING", 0.0005)  # 150 ms of 5 minutes
    chart_keys = grossing("us", "gb", "de")
    feeds = AppleFeeds()
    lease_left_at_fetch: dict[str, dt.timedelta] = {}
    holder: list[Harness] = []

    def serve(request: Request) -> Response:
        chart = next(c for c in chart_keys if legacy_path(c) == request.path)
        lease_left_at_fetch[chart.country] = holder[0].task(chart).lease_expires_at - utc_now()
        time.sleep(0.4)  # the next chart, claimed ahead, waits this long for the one slot
        return feeds.serve(request)

    with ScriptedServer(fallback=serve) as apple:
        async with harness(sqlite_database, apple, chart_keys=chart_keys) as h:
            holder.append(h)
            summary = await h.rounds(concurrency=1).run_round()

    assert [r.outcome for r in summary.results] == [FetchOutcome.CHANGED] * 3
    # Each chart's fetch started with (nearly) a whole lease ahead of it, waiting or not.
    assert all(left > LEASE - dt.timedelta(seconds=0.2) for left in lease_left_at_fetch.values())
    assert len(lease_left_at_fetch) == 3


async def test_a_round_polls_every_due_chart_exactly_once(
    database: Database, slow_apple: ScriptedServer
) -> None:
    async with harness(database, slow_apple, chart_keys=CHARTS) as h:
        rounds = h.rounds(concurrency=3)
        before = utc_now()
        first = await rounds.run_round()
        after = utc_now()
        second = await rounds.run_round()  # nothing is due any more

    assert sorted(result.chart for result in first.results) == sorted(CHARTS)
    assert second.results == ()
    assert requests_per_chart(slow_apple, CHARTS) == exactly(1, CHARTS)
    assert all(
        before + INTERVAL - SLACK <= due <= after + INTERVAL + SLACK for due in due_times(database)
    )


async def test_a_round_given_charts_polls_exactly_those_even_if_not_due(
    sqlite_database: Database, slow_apple: ScriptedServer
) -> None:
    chosen = [CHARTS[1], CHARTS[4]]
    async with harness(sqlite_database, slow_apple, chart_keys=CHARTS) as h:
        rounds = h.rounds(concurrency=4)
        await rounds.run_round()  # every chart polled: none is due now
        summary = await rounds.run_round(charts=chosen)

    assert sorted(result.chart for result in summary.results) == sorted(chosen)
    counts = requests_per_chart(slow_apple, CHARTS)
    assert counts == {c.country: 2 if c in chosen else 1 for c in CHARTS} | {"other paths": 0}


async def test_a_round_given_charts_keeps_to_the_concurrency_limit(
    sqlite_database: Database, slow_apple: ScriptedServer, slow_feeds: SlowFeeds
) -> None:
    async with harness(sqlite_database, slow_apple, chart_keys=CHARTS) as h:
        summary = await h.rounds(concurrency=2).run_round(charts=CHARTS)

    assert slow_feeds.peak <= 2
    assert len(summary.results) == len(CHARTS)
    assert requests_per_chart(slow_apple, CHARTS) == exactly(1, CHARTS)


async def test_a_tick_while_a_round_runs_starts_no_second_round(
    sqlite_database: Database, slow_apple: ScriptedServer, slow_feeds: SlowFeeds
) -> None:
    async with harness(sqlite_database, slow_apple, chart_keys=CHARTS) as h:
        rounds = h.rounds(concurrency=2)
        await rounds.tick()
        assert rounds.running
        for _ in range(3):
            await rounds.tick()  # the ticker fires again while the round is still going
            await asyncio.sleep(0.1)
        await wait_until(lambda: not rounds.running, "the round to end")

    # A second round would have claimed the next due charts beside the first one's.
    assert slow_feeds.peak == 2
    assert requests_per_chart(slow_apple, CHARTS) == exactly(1, CHARTS)


async def test_after_downtime_one_round_catches_up_with_one_poll_per_chart(
    database: Database,
) -> None:
    down_since = utc_now() - dt.timedelta(days=30)  # 720 missed intervals
    with apple_server() as apple:
        async with harness(database, apple, chart_keys=CHARTS, scheduled_at=down_since) as h:
            assert h.repository.schedule_status(now=utc_now()).due_now == len(CHARTS)
            rounds = h.rounds(concurrency=3)
            before = utc_now()
            summary = await rounds.run_round()
            after = utc_now()
            again = await rounds.run_round()
            status = h.repository.schedule_status(now=utc_now())

    assert len(summary.results) == len(CHARTS)
    assert again.results == ()
    assert requests_per_chart(apple, CHARTS) == exactly(1, CHARTS)
    assert rows(database, snapshots) == len(CHARTS)
    # Back on the interval from now, not from where the schedule left off.
    assert all(
        before + INTERVAL - SLACK <= due <= after + INTERVAL + SLACK for due in due_times(database)
    )
    assert (status.due_now, status.oldest_due_at) == (0, None)


# -- stopping ------------------------------------------------------------------------------


def claimable_now(repository: Repository) -> list[ChartKey]:
    claims = repository.claim_due(owner="successor", now=utc_now(), lease=LEASE, limit=100)
    return sorted(claim.chart for claim in claims)


async def test_stop_abandons_slow_polls_after_the_grace_and_releases_their_leases(
    sqlite_database: Database,
) -> None:
    grace = 0.5
    with ScriptedServer(fallback=lambda request: Response(200, b"{}", delay=60)) as stuck:
        async with harness(sqlite_database, stuck, chart_keys=CHARTS) as h:
            rounds = h.rounds(concurrency=2)
            await rounds.tick()
            await wait_until(lambda: len(stuck.requests) == 2, "two fetches in flight")
            started = time.monotonic()
            await rounds.stop(grace=grace)
            stopped_in = time.monotonic() - started
            await rounds.tick()  # a stopped PollRounds starts nothing
            await asyncio.sleep(0.2)
            assert not rounds.running

        # Nothing was recorded for the abandoned polls, and every chart is due right away,
        # the two abandoned ones included: a shutdown is not a failed fetch.
        assert grace <= stopped_in < grace + 3.0
        assert len(stuck.requests) == 2
        assert rows(sqlite_database, fetch_log) == 0
        assert claimable_now(h.repository) == sorted(CHARTS)


@dataclasses.dataclass
class ClaimGate:
    """Holds `claim_due` in its thread until opened, to stop a round in the middle of it."""

    entered: threading.Event = dataclasses.field(default_factory=threading.Event)
    opened: threading.Event = dataclasses.field(default_factory=threading.Event)


class GatedRepository(Repository):
    def __init__(self, database: Database, gate: ClaimGate) -> None:
        super().__init__(database)
        self._gate = gate

    def claim_due(self, **kwargs: Any) -> list[PollClaim]:
        self._gate.entered.set()
        assert self._gate.opened.wait(10), "the test never opened the claim gate"
        return super().claim_due(**kwargs)


async def test_stop_while_a_claim_is_in_progress_starts_no_poll_and_releases_the_claims(
    sqlite_database: Database,
) -> None:
    gate = ClaimGate()
    with ScriptedServer(fallback=lambda request: Response(200, b"{}", delay=60)) as stuck:
        async with harness(sqlite_database, stuck, chart_keys=CHARTS) as h:
            rounds = gated_rounds(h, gate, concurrency=2)
            await rounds.tick()
            assert await asyncio.to_thread(gate.entered.wait, 10)
            stopping = asyncio.create_task(rounds.stop(grace=0.5))
            await asyncio.sleep(0.1)  # stop() is now waiting for the round
            gate.opened.set()
            started = time.monotonic()
            async with asyncio.timeout(10):
                await stopping
            stopped_in = time.monotonic() - started

        assert stopped_in < 3.0
        assert claimable_now(h.repository) == sorted(CHARTS)
        assert rows(sqlite_database, fetch_log) == 0


def gated_rounds(h: Harness, gate: ClaimGate, *, concurrency: int) -> PollRounds:
    return PollRounds(
        repository=GatedRepository(h.database, gate),
        poller=h.poller,
        owner="gated",
        concurrency=concurrency,
        lease=LEASE,
        clock=utc_now,
        metrics=h.metrics,
    )


# -- two workers on one PostgreSQL database ------------------------------------------------


@pytest.mark.postgres
async def test_two_workers_on_one_postgres_database_poll_each_chart_exactly_once(
    postgres_url: str,
) -> None:
    chart_keys = grossing("us", "gb", "de", "fr", "jp", "ca", "au", "br", "in", "kr", "cn", "it")
    feeds = SlowFeeds(delay=0.05)
    with (
        ScriptedServer(fallback=feeds.serve) as apple,
        migrated(postgres_url) as first_db,
        migrated(postgres_url) as second_db,  # a second process's engine and pool
    ):
        async with (
            harness(first_db, apple, chart_keys=chart_keys) as first,
            harness(second_db, apple, chart_keys=chart_keys) as second,
        ):
            a, b = await asyncio.gather(
                first.rounds(owner="worker-a", concurrency=3).run_round(),
                second.rounds(owner="worker-b", concurrency=3).run_round(),
            )
        assert not apple.errors
        stored = rows(first_db, snapshots)

    polled_by_a = {result.chart for result in a.results}
    polled_by_b = {result.chart for result in b.results}
    assert polled_by_a.isdisjoint(polled_by_b)
    assert polled_by_a | polled_by_b == set(chart_keys)
    assert (a.errors, b.errors, a.failed, b.failed) == (0, 0, 0, 0)
    assert requests_per_chart(apple, chart_keys) == exactly(1, chart_keys)
    assert stored == len(chart_keys)
