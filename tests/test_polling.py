"""Polling one chart for real: a local feed server, the one HTTP client, a migrated database.

Each test claims a chart from the schedule, lets `Poller.poll` fetch it from a ScriptedServer
(FakeAppleCharts payloads unless a test scripts a fault), and then reads what a user would
see: the stored snapshot, the fetch log, the schedule row and the app's rank history. The
helpers here (feed paths, `harness`, `apple_server`) are shared with tests/test_rounds.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import pytest
from sqlalchemy import func, select

from monitor.errors import LeaseLost
from monitor.metrics import ServiceMetrics
from monitor.model import (
    LEASE_MARGIN_SECONDS,
    LEASE_MARGIN_SHARE,
    ChartKey,
    Collection,
    Device,
    FetchOutcome,
    PollClaim,
    RankStatus,
    SourceName,
    Store,
    WatchedApp,
)
from monitor.polling import Poller, PollResult, PollSettings
from monitor.rounds import PollRounds
from monitor.sources.catalog import FeedEndpoints
from monitor.sources.http import FeedClient, HttpSettings
from monitor.store.engine import Database
from monitor.store.repository import Repository
from monitor.store.tables import charts, fetch_log, poll_tasks, snapshots
from monitor.wiring import utc_now
from tests.support.fake_apple import DEEPSEEK, FIXTURES, FakeAppleCharts
from tests.support.http_server import Request, Response, ScriptedServer

pytestmark = pytest.mark.anyio

USER_AGENT = "app-rank-monitor-tests/1.0 (+https://example.invalid/app-rank-monitor)"
DEPTH = 100
INTERVAL = dt.timedelta(hours=1)
FAILURE_RETRY = dt.timedelta(minutes=5)  # what monitor.wiring gives the poller
LEASE = dt.timedelta(minutes=5)
MAX_ATTEMPTS = 3
# Database writes and thread hops between reading the clock and the poller reading it.
SLACK = dt.timedelta(seconds=10)

US_FREE = ChartKey(Store.APPLE, "us", Collection.TOP_FREE, Device.IPHONE)
US_PAID = ChartKey(Store.APPLE, "us", Collection.TOP_PAID, Device.IPHONE)
US_GROSSING = ChartKey(Store.APPLE, "us", Collection.TOP_GROSSING, Device.IPHONE)

_V2_FEEDS = {Collection.TOP_FREE: "top-free", Collection.TOP_PAID: "top-paid"}
_LEGACY_FEEDS = {
    Collection.TOP_FREE: "topfreeapplications",
    Collection.TOP_PAID: "toppaidapplications",
    Collection.TOP_GROSSING: "topgrossingapplications",
}
DEEPSEEK_ID = str(DEEPSEEK["id"])
HTML_ERROR_PAGE = (FIXTURES / "handmade_apple_error_page.html").read_bytes()


def v2_path(chart: ChartKey) -> str:
    """Where Apple's Marketing Tools v2 feed serves an overall iPhone chart."""
    return f"/api/v2/{chart.country}/apps/{_V2_FEEDS[chart.collection]}/{DEPTH}/apps.json"


def legacy_path(chart: ChartKey) -> str:
    """Where the legacy iTunes RSS feed serves a chart."""
    return f"/{chart.country}/rss/{_LEGACY_FEEDS[chart.collection]}/limit={DEPTH}/json"


def grossing(*countries: str) -> list[ChartKey]:
    """Charts only the legacy feed serves: exactly one request path each."""
    return [ChartKey(Store.APPLE, cc, Collection.TOP_GROSSING, Device.IPHONE) for cc in countries]


class AppleFeeds:
    """FakeAppleCharts behind a lock: the server calls handlers from one thread per connection."""

    def __init__(self) -> None:
        self._charts = FakeAppleCharts()
        self._lock = threading.Lock()

    def body(self, path: str) -> bytes:
        with self._lock:
            body = self._charts.respond(path)
        assert body is not None, f"not a chart feed path: {path}"
        return body

    def serve(self, request: Request) -> Response:
        # Apple serves the legacy feed as text/javascript: parsing must go by content.
        body = self.body(request.path)
        return Response(200, body, headers=[("Content-Type", "text/javascript")], gzip=True)


@contextlib.contextmanager
def apple_server(feeds: AppleFeeds | None = None) -> Iterator[ScriptedServer]:
    """A feed server answering every chart path with FakeAppleCharts, unless scripted."""
    with ScriptedServer(fallback=(feeds or AppleFeeds()).serve) as server:
        yield server
        assert not server.errors


@pytest.fixture
def apple() -> Iterator[ScriptedServer]:
    with apple_server() as server:
        yield server


def http_settings(**overrides: Any) -> HttpSettings:
    """Fast but otherwise real client settings: no per-host spacing, three attempts."""
    values: dict[str, Any] = {
        "user_agent": USER_AGENT,
        "connect_timeout": 5.0,
        "read_timeout": 20.0,
        "deadline": 30.0,
        "max_attempts": MAX_ATTEMPTS,
        "requests_per_minute": 0.0,
    }
    return HttpSettings(**{**values, **overrides})


@dataclasses.dataclass
class Harness:
    """One worker's poll path (repository, client, poller) on one database."""

    database: Database
    repository: Repository
    client: FeedClient
    poller: Poller
    metrics: ServiceMetrics

    def claim(
        self, chart: ChartKey, *, owner: str = "test", lease: dt.timedelta = LEASE
    ) -> PollClaim:
        claims = self.repository.claim_due(
            owner=owner, now=utc_now(), lease=lease, limit=1, charts=[chart]
        )
        assert len(claims) == 1, f"{chart} could not be claimed"
        return claims[0]

    async def poll(self, chart: ChartKey) -> PollResult:
        """Poll `chart` now, due or not, as `app-rank-monitor poll-once --chart` would."""
        return await self.poller.poll(self.claim(chart))

    def rounds(self, *, owner: str = "test", concurrency: int = 4) -> PollRounds:
        return PollRounds(
            repository=self.repository,
            poller=self.poller,
            owner=owner,
            concurrency=concurrency,
            lease=LEASE,
            clock=utc_now,
            metrics=self.metrics,
        )

    def task(self, chart: ChartKey) -> Any:
        """The chart's poll_tasks row."""
        with self.database.engine.connect() as connection:
            return connection.execute(
                select(poll_tasks).where(poll_tasks.c.chart_id == _chart_id(chart))
            ).one()

    def fetches(self, chart: ChartKey) -> list[Any]:
        """The chart's fetch log, oldest first."""
        with self.database.engine.connect() as connection:
            return list(
                connection.execute(
                    select(fetch_log)
                    .where(fetch_log.c.chart_id == _chart_id(chart))
                    .order_by(fetch_log.c.started_at)
                )
            )

    def snapshot_count(self, chart: ChartKey) -> int:
        with self.database.engine.connect() as connection:
            count: int = connection.execute(
                select(func.count())
                .select_from(snapshots)
                .where(snapshots.c.chart_id == _chart_id(chart))
            ).scalar_one()
            return count

    def deepseek_history(self, chart: ChartKey) -> list[tuple[RankStatus, int | None]]:
        (app,) = self.repository.find_apps(DEEPSEEK_ID)
        return [(p.status, p.rank) for p in self.repository.history(app.id) if p.chart == chart]


def _chart_id(chart: ChartKey) -> Any:
    return (
        select(charts.c.id)
        .where(
            charts.c.store == chart.store.value,
            charts.c.country == chart.country,
            charts.c.collection == chart.collection.value,
            charts.c.device == chart.device.value,
            charts.c.genre == chart.genre,
        )
        .scalar_subquery()
    )


@contextlib.asynccontextmanager
async def harness(
    database: Database,
    server: ScriptedServer,
    *,
    chart_keys: Sequence[ChartKey],
    interval: dt.timedelta = INTERVAL,
    http: HttpSettings | None = None,
    scheduled_at: dt.datetime | None = None,
    repository: Repository | None = None,
    lease: dt.timedelta = LEASE,
    random: Callable[[], float] = lambda: 0.0,
) -> AsyncIterator[Harness]:
    """Schedule `chart_keys` (due at `scheduled_at`, default now), track DeepSeek, and wire a
    poller the way monitor.wiring does, with both feeds on `server` and `repository` (default:
    a plain one on `database`)."""
    repository = repository or Repository(database)
    repository.sync_charts(chart_keys, now=scheduled_at or utc_now())
    repository.sync_watchlist([WatchedApp(Store.APPLE, DEEPSEEK_ID, "DeepSeek")])
    # random() = 0 by default: full-jitter backoff sleeps nothing, so a retry storm costs no
    # time; random() = 1 makes every backoff its cap, for a test that times them.
    metrics = ServiceMetrics(
        poll_interval=interval,
        read_state=lambda now: repository.service_state(now=now),
        app_labels={},
        clock=utc_now,
    )
    async with FeedClient(http or http_settings(), random=random) as client:
        poller = Poller(
            client=client,
            repository=repository,
            endpoints=FeedEndpoints(
                itunes_base_url=server.url(""), apple_rss_base_url=server.url("")
            ),
            settings=PollSettings(
                depth=DEPTH,
                prefer_v2=True,
                interval=interval,
                failure_retry=min(FAILURE_RETRY, interval),
                lease=lease,
            ),
            clock=utc_now,
            metrics=metrics,
        )
        yield Harness(database, repository, client, poller, metrics)


def within(value: dt.datetime, earliest: dt.datetime, latest: dt.datetime) -> bool:
    return earliest - SLACK <= value <= latest + SLACK


def empty_legacy_feed(country: str) -> bytes:
    """A legacy feed with no `entry` at all: how Apple serves a chart of zero apps."""
    feed = {
        "feed": {
            "id": {"label": f"https://itunes.apple.com/{country}/rss/topgrossingapplications/json"},
            "updated": {"label": "2025-01-26T02:17:38-07:00"},
            "title": {"label": "iTunes Store: Top Grossing Apps"},
        }
    }
    return json.dumps(feed).encode()


# -- fallback from the v2 feed to the legacy feed -----------------------------------------


@pytest.mark.parametrize(
    ("fault", "attempts"),
    [
        pytest.param(Response(503, b"busy"), MAX_ATTEMPTS, id="503-storm"),
        pytest.param(
            Response(200, HTML_ERROR_PAGE, {"Content-Type": "text/html"}), 1, id="html-with-200"
        ),
    ],
)
async def test_v2_failure_falls_back_to_the_legacy_feed(
    database: Database, apple: ScriptedServer, fault: Response, attempts: int
) -> None:
    apple.route(v2_path(US_FREE), lambda request: fault)
    async with harness(database, apple, chart_keys=[US_FREE]) as h:
        before = utc_now()
        result = await h.poll(US_FREE)
        after = utc_now()

    assert (result.outcome, result.source, result.entries) == (
        FetchOutcome.CHANGED,
        SourceName.ITUNES_RSS,
        DEPTH,
    )
    # A 5xx is retried up to max_attempts; an HTML page is not a chart, retrying cannot help.
    assert len(apple.requests_to(v2_path(US_FREE))) == attempts
    assert len(apple.requests_to(legacy_path(US_FREE))) == 1
    view = h.repository.chart_at(US_FREE)
    assert view is not None
    assert view.source is SourceName.ITUNES_RSS
    assert view.entries[30].store_id == DEEPSEEK_ID
    # The fetch log keeps both attempts; the failed one is marked as recovered by the other.
    log = [(r.source, r.outcome, r.recovered) for r in h.fetches(US_FREE)]
    assert log == [("apple_v2", "failed", True), ("itunes_rss", "changed", False)]
    v2_attempt = h.fetches(US_FREE)[0]
    assert v2_attempt.attempts == attempts
    assert v2_attempt.url.endswith(v2_path(US_FREE))
    assert v2_attempt.error_class == (
        "HttpStatusError" if fault.status == 503 else "FeedFormatError"
    )
    # A fallback that served the chart is no gap in history.
    assert h.deepseek_history(US_FREE) == [(RankStatus.LISTED, 31)]
    # Each feed's fetch is counted under its own source.
    fetches = {
        (source, outcome): h.metrics.registry.get_sample_value(
            "apprank_fetches_total", {"source": source, "outcome": outcome}
        )
        for source in ("apple_v2", "itunes_rss")
        for outcome in ("changed", "failed")
    }
    assert fetches == {
        ("apple_v2", "changed"): 0,
        ("apple_v2", "failed"): 1,
        ("itunes_rss", "changed"): 1,
        ("itunes_rss", "failed"): 0,
    }
    task = h.task(US_FREE)
    assert (task.consecutive_failures, task.last_error, task.last_source) == (0, None, "itunes_rss")
    assert within(task.next_due_at, before + INTERVAL, after + INTERVAL)


async def test_when_both_feeds_fail_the_poll_is_one_failure_retried_after_the_failure_delay(
    database: Database, apple: ScriptedServer
) -> None:
    async with harness(database, apple, chart_keys=[US_FREE]) as h:
        await h.poll(US_FREE)  # a first snapshot, so there is history to keep
        apple.route(v2_path(US_FREE), lambda request: Response(503))
        apple.route(legacy_path(US_FREE), lambda request: Response(502))
        before = utc_now()
        result = await h.poll(US_FREE)
        after = utc_now()

    assert result.outcome is FetchOutcome.FAILED
    assert result.source is SourceName.ITUNES_RSS  # the last feed tried
    assert result.error is not None
    assert "HTTP 502" in result.error
    # The first poll was served by the v2 feed; the second tried each feed max_attempts times.
    assert len(apple.requests_to(v2_path(US_FREE))) == 1 + MAX_ATTEMPTS
    assert len(apple.requests_to(legacy_path(US_FREE))) == MAX_ATTEMPTS
    task = h.task(US_FREE)
    assert task.consecutive_failures == 1
    assert "HTTP 502" in task.last_error
    assert within(task.next_due_at, before + FAILURE_RETRY, after + FAILURE_RETRY)
    assert task.lease_owner is None
    # Both attempts are in the log, neither recovered; nothing stored before is lost.
    log = [(r.source, r.outcome, r.recovered, r.http_status) for r in h.fetches(US_FREE)]
    assert log == [
        ("apple_v2", "changed", False, 200),
        ("apple_v2", "failed", False, 503),
        ("itunes_rss", "failed", False, 502),
    ]
    assert h.snapshot_count(US_FREE) == 1
    view = h.repository.chart_at(US_FREE)
    assert view is not None
    assert view.entries[30].store_id == DEEPSEEK_ID
    history = h.deepseek_history(US_FREE)
    assert history[0] == (RankStatus.LISTED, 31)
    assert (RankStatus.FETCH_FAILED, None) in history[1:]


async def test_a_poll_that_failed_on_both_feeds_is_one_gap_in_history(
    sqlite_database: Database, apple: ScriptedServer
) -> None:
    async with harness(sqlite_database, apple, chart_keys=[US_FREE]) as h:
        await h.poll(US_FREE)
        apple.route(v2_path(US_FREE), lambda request: Response(503))
        apple.route(legacy_path(US_FREE), lambda request: Response(503))
        await h.poll(US_FREE)

    assert h.deepseek_history(US_FREE) == [
        (RankStatus.LISTED, 31),
        (RankStatus.FETCH_FAILED, None),
    ]


async def test_a_grossing_chart_only_ever_hits_the_legacy_feed(
    sqlite_database: Database, apple: ScriptedServer
) -> None:
    async with harness(sqlite_database, apple, chart_keys=[US_GROSSING]) as h:
        served = await h.poll(US_GROSSING)
        apple.route(legacy_path(US_GROSSING), lambda request: Response(503))
        failed = await h.poll(US_GROSSING)

    assert (served.outcome, served.source) == (FetchOutcome.CHANGED, SourceName.ITUNES_RSS)
    # Failing, it has no other feed to fall back to: v2 has no grossing chart.
    assert failed.outcome is FetchOutcome.FAILED
    assert {request.path for request in apple.requests} == {legacy_path(US_GROSSING)}
    assert [r.source for r in h.fetches(US_GROSSING)] == ["itunes_rss", "itunes_rss"]


# -- unchanged content --------------------------------------------------------------------


async def test_an_identical_body_writes_no_new_snapshot(
    database: Database, apple: ScriptedServer
) -> None:
    body = AppleFeeds().body(v2_path(US_FREE))
    apple.route(v2_path(US_FREE), lambda request: Response(200, body))
    async with harness(database, apple, chart_keys=[US_FREE]) as h:
        first = await h.poll(US_FREE)
        second = await h.poll(US_FREE)
        view = h.repository.chart_at(US_FREE)

    assert (first.outcome, second.outcome) == (FetchOutcome.CHANGED, FetchOutcome.UNCHANGED)
    assert second.source is SourceName.APPLE_V2
    assert h.snapshot_count(US_FREE) == 1
    assert view is not None
    assert view.confirmed_at > view.fetched_at  # the one snapshot is confirmed, not copied
    assert [r.outcome for r in h.fetches(US_FREE)] == ["changed", "unchanged"]
    assert h.deepseek_history(US_FREE) == [(RankStatus.LISTED, 31)]
    assert h.task(US_FREE).consecutive_failures == 0


async def test_a_304_writes_no_snapshot_and_the_validators_are_sent_every_time(
    database: Database, apple: ScriptedServer
) -> None:
    body = AppleFeeds().body(v2_path(US_FREE))
    etag, modified = '"chart-v1"', "Sun, 26 Jan 2025 10:00:00 GMT"

    def conditional(request: Request) -> Response:
        validators = [("ETag", etag), ("Last-Modified", modified)]
        if request.header("If-None-Match") == etag:
            return Response(304, headers=validators)
        return Response(200, body, validators)

    apple.route(v2_path(US_FREE), conditional)
    async with harness(database, apple, chart_keys=[US_FREE]) as h:
        outcomes = [(await h.poll(US_FREE)).outcome for _ in range(3)]

    assert outcomes == [FetchOutcome.CHANGED, FetchOutcome.NOT_MODIFIED, FetchOutcome.NOT_MODIFIED]
    sent = [
        (r.header("If-None-Match"), r.header("If-Modified-Since"))
        for r in apple.requests_to(v2_path(US_FREE))
    ]
    assert sent == [(None, None), (etag, modified), (etag, modified)]
    assert h.snapshot_count(US_FREE) == 1
    assert [r.outcome for r in h.fetches(US_FREE)] == ["changed", "not_modified", "not_modified"]
    task = h.task(US_FREE)
    assert (task.etag, task.last_modified, task.consecutive_failures) == (etag, modified, 0)


# -- Retry-After and parse failures -------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "retry_after"),
    [
        pytest.param(INTERVAL, 600, id="longer-than-the-failure-delay"),
        pytest.param(dt.timedelta(minutes=10), 900, id="longer-than-the-interval"),
    ],
)
async def test_host_backoff_defers_the_chart_by_the_retry_after(
    sqlite_database: Database, apple: ScriptedServer, interval: dt.timedelta, retry_after: int
) -> None:
    apple.route(
        legacy_path(US_GROSSING),
        lambda request: Response(503, headers={"Retry-After": str(retry_after)}),
    )
    # The retry would have to wait longer than max_host_wait: the client gives up at once.
    settings = http_settings(max_host_wait=60.0)
    async with harness(
        sqlite_database, apple, chart_keys=[US_GROSSING], interval=interval, http=settings
    ) as h:
        before = utc_now()
        result = await h.poll(US_GROSSING)
        after = utc_now()

    assert result.outcome is FetchOutcome.FAILED
    assert len(apple.requests) == 1  # no retry was sent into the Retry-After
    (attempt,) = h.fetches(US_GROSSING)
    assert (attempt.outcome, attempt.error_class) == ("failed", "HostBackoff")
    wait = dt.timedelta(seconds=retry_after)
    task = h.task(US_GROSSING)
    assert within(task.next_due_at, before + wait, after + wait), task.next_due_at - before


async def test_parse_failures_are_recorded_failures_and_the_round_polls_the_other_charts(
    database: Database, apple: ScriptedServer
) -> None:
    apple.route(legacy_path(US_GROSSING), lambda request: Response(200, empty_legacy_feed("us")))
    html = Response(200, HTML_ERROR_PAGE, {"Content-Type": "text/html"})
    apple.route(v2_path(US_PAID), lambda request: html)
    apple.route(legacy_path(US_PAID), lambda request: html)
    async with harness(database, apple, chart_keys=[US_FREE, US_PAID, US_GROSSING]) as h:
        summary = await h.rounds(concurrency=1).run_round()

    outcomes = {result.chart: result.outcome for result in summary.results}
    assert outcomes == {
        US_FREE: FetchOutcome.CHANGED,
        US_PAID: FetchOutcome.FAILED,
        US_GROSSING: FetchOutcome.FAILED,
    }
    assert (summary.errors, summary.failed, summary.changed) == (0, 2, 1)
    assert [r.error_class for r in h.fetches(US_GROSSING)] == ["EmptyChart"]
    assert [r.error_class for r in h.fetches(US_PAID)] == ["FeedFormatError", "FeedFormatError"]
    # The body arrived but was no chart: the log keeps what the server answered, for debugging.
    assert [(r.http_status, r.body_bytes) for r in h.fetches(US_PAID)] == [
        (200, len(HTML_ERROR_PAGE))
    ] * 2
    for chart in (US_PAID, US_GROSSING):
        task = h.task(chart)
        assert task.consecutive_failures == 1
        assert task.lease_owner is None
        assert h.snapshot_count(chart) == 0
    assert h.snapshot_count(US_FREE) == 1


# -- leases -------------------------------------------------------------------------------


async def test_a_fetch_gives_up_before_the_lease_runs_out_and_records_the_failure(
    sqlite_database: Database,
) -> None:
    left = 1.5  # seconds of the lease the fetch may use
    lease = dt.timedelta(seconds=LEASE_MARGIN_SECONDS + left)
    with ScriptedServer(fallback=lambda request: Response(200, b"{}", delay=60)) as stuck:
        async with harness(sqlite_database, stuck, chart_keys=[US_GROSSING]) as h:
            claim = h.claim(US_GROSSING, lease=lease)
            started = time.monotonic()
            result = await h.poller.poll(claim)
            took = time.monotonic() - started

    # The client's own deadline (30 s) is far off: the lease is what bounded the fetch, with
    # time left to record the failure under the lease still held.
    assert result.outcome is FetchOutcome.FAILED
    assert left - 0.5 < took < left + 5.0
    (attempt,) = h.fetches(US_GROSSING)
    assert attempt.error_class == "FetchTimeout"
    assert "lease" in attempt.error_message
    task = h.task(US_GROSSING)
    assert (task.consecutive_failures, task.lease_owner) == (1, None)


async def test_a_lease_shorter_than_the_margin_keeps_most_of_itself_for_the_fetch(
    sqlite_database: Database,
) -> None:
    # A 3 s lease for 2 s fetches is a valid configuration: the margin kept to record the
    # outcome shrinks with the lease instead of eating all of it.
    lease = dt.timedelta(seconds=3)
    with ScriptedServer(fallback=lambda request: Response(200, b"{}", delay=60)) as stuck:
        async with harness(sqlite_database, stuck, chart_keys=[US_GROSSING], lease=lease) as h:
            claim = h.claim(US_GROSSING, lease=lease)
            started = time.monotonic()
            await h.poller.poll(claim)
            took = time.monotonic() - started

    (attempt,) = h.fetches(US_GROSSING)
    assert attempt.error_class == "FetchTimeout"
    assert len(stuck.requests) == 1
    assert 3 * (1 - LEASE_MARGIN_SHARE) - 0.5 < took < 3


async def test_a_poll_whose_lease_was_taken_over_writes_nothing(
    database: Database, apple: ScriptedServer
) -> None:
    async with harness(database, apple, chart_keys=[US_FREE]) as h:
        stale = h.claim(US_FREE, owner="paused")
        # The paused worker's lease ran out and another worker claimed the chart.
        (successor,) = h.repository.claim_due(
            owner="successor", now=utc_now() + LEASE, lease=LEASE, limit=1, charts=[US_FREE]
        )
        with pytest.raises(LeaseLost):
            await h.poller.poll(stale)

    assert successor.token > stale.token
    assert h.snapshot_count(US_FREE) == 0
    assert h.fetches(US_FREE) == []
    task = h.task(US_FREE)
    assert (task.lease_owner, task.fencing_token) == ("successor", successor.token)
