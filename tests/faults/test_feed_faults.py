"""Feed faults, end to end: fetch -> parse -> store -> alerts -> metrics and the fetch log.

In process, the real pipeline: PollRounds and Poller with the one FeedClient against a
ScriptedServer on 127.0.0.1 that serves each fault as bytes on the wire (tests/support/
feed_faults.py), a migrated database (SQLite and PostgreSQL where the write paths differ),
and the alert rules of the default configuration. Grossing charts are used where one chart
must be one request path: only the legacy feed serves them. What is about the running
process (its memory, a live round) runs `app-rank-monitor run` itself.

The unit behaviour of the client (each timeout, the cap, Retry-After parsing) is in
tests/sources/test_http_client.py; here each fault is followed to what a user sees.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from monitor.alerts.policy import AlertPolicy
from monitor.config import load_settings
from monitor.model import ChartKey, FetchOutcome, RankStatus, SourceName, Store, WatchedApp
from monitor.polling import BODY_SAMPLE_BYTES
from monitor.store.engine import Database
from monitor.store.repository import Repository
from monitor.store.tables import alert_events
from monitor.wiring import utc_now
from tests.support.fake_apple import DEEPSEEK, FakeAppleCharts
from tests.support.feed_faults import (
    always,
    content_length_lie,
    cut_short,
    dripping,
    gzip_bomb,
    html_error_page,
    no_answer,
    oversized,
    redirect_to_closed_port,
    too_many_requests,
    too_many_requests_until,
    truncated,
    wrong_schema,
)
from tests.support.http_server import Request, Response, ScriptedServer
from tests.support.processes import memory_bytes, wait_for
from tests.support.service import ServiceProcess, serve_charts, write_config
from tests.test_polling import (
    FAILURE_RETRY,
    INTERVAL,
    US_FREE,
    US_PAID,
    AppleFeeds,
    Harness,
    apple_server,
    empty_legacy_feed,
    grossing,
    harness,
    http_settings,
    legacy_path,
    v2_path,
    within,
)

pytestmark = pytest.mark.anyio

MB = 1024 * 1024
# Short enough for a test, long enough that a healthy fetch on a loaded machine is never cut.
READ_TIMEOUT = 0.5
DEADLINE = 1.5
ATTEMPTS = 2
MAX_BODY = 1 * MB


def sample_apps() -> list[dict[str, Any]]:
    """Every app of the fake feeds, in one chart's order (DeepSeek aside)."""
    return FakeAppleCharts().chart("xx", "topgrossingapplications", 0)


def watched(apps: Iterable[dict[str, Any]]) -> list[WatchedApp]:
    return [WatchedApp(Store.APPLE, str(app["id"]), str(app["name"])) for app in apps]


def default_rules(apps: Sequence[WatchedApp], config: Path | None = None) -> AlertPolicy:
    """The alert policy of the default configuration (or of `config`), for `apps`."""
    return load_settings(config, environ={}).alerts.policy(apps)


def track(h: Harness, apps: Sequence[WatchedApp]) -> None:
    h.repository.sync_watchlist([WatchedApp(Store.APPLE, str(DEEPSEEK["id"]), "DeepSeek"), *apps])


def alert_rows(database: Database) -> list[Any]:
    with database.engine.connect() as connection:
        return list(connection.execute(select(alert_events).order_by(alert_events.c.id)))


def errors_counted(h: Harness, source: SourceName, error: str) -> float | None:
    return h.metrics.registry.get_sample_value(
        "apprank_fetch_errors_total", {"source": source.value, "error": error}
    )


# -- every fault at once, in one round --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Fault:
    """What a chart's feed serves (given the chart's healthy body) and how the poll must
    end: the error class, the attempts made, the HTTP status logged, and whether the fetch
    log keeps the head of the body."""

    serve: Callable[[bytes], Response]
    error_class: str
    attempts: int
    http_status: int | None = None
    sampled: bool = False
    message: str = ""


FAULTS = {
    "us": Fault(lambda body: redirect_to_closed_port(), "FetchConnectError", ATTEMPTS),
    "gb": Fault(lambda body: no_answer(), "FetchTimeout", ATTEMPTS, message="read timeout"),
    "de": Fault(dripping, "FetchTimeout", ATTEMPTS, message=f"{DEADLINE:g}s deadline"),
    "fr": Fault(cut_short, "FetchProtocolError", ATTEMPTS),
    "jp": Fault(content_length_lie, "FetchProtocolError", ATTEMPTS),
    "ca": Fault(lambda body: Response(200, html_error_page()), "FeedFormatError", 1, 200, True),
    "au": Fault(lambda body: Response(200, truncated(body)), "FeedFormatError", 1, 200, True),
    "kr": Fault(lambda body: Response(200, wrong_schema()), "FeedFormatError", 1, 200, True),
    "br": Fault(lambda body: Response(200, empty_legacy_feed("br")), "EmptyChart", 1, 200, True),
    "in": Fault(lambda body: oversized(50 * MB), "BodyTooLarge", 1, message="cap"),
    "cn": Fault(lambda body: gzip_bomb(50 * MB), "BodyTooLarge", 1, message="cap"),
}
HEALTHY = ("es", "it")


@pytest.mark.slow
async def test_every_feed_fault_is_a_logged_failure_retried_sooner_that_spares_the_other_charts(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    faulty = {chart: FAULTS[chart.country] for chart in grossing(*FAULTS)}
    healthy = grossing(*HEALTHY)
    feeds = AppleFeeds()
    served: dict[ChartKey, Response] = {}
    apps = watched(sample_apps())
    settings = http_settings(
        read_timeout=READ_TIMEOUT, deadline=DEADLINE, max_attempts=ATTEMPTS, max_body_bytes=MAX_BODY
    )
    repository = Repository(database, alerts=default_rules(apps), clock=utc_now)
    with apple_server(feeds) as apple:
        async with harness(
            database, apple, chart_keys=[*faulty, *healthy], http=settings, repository=repository
        ) as h:
            track(h, apps)
            first = await h.rounds(concurrency=len(faulty) + 2).run_round([*faulty, *healthy])
            for chart, fault in faulty.items():
                served[chart] = fault.serve(feeds.body(legacy_path(chart)))
                apple.route(legacy_path(chart), always(served[chart]))
            before = utc_now()
            summary = await h.rounds(concurrency=len(faulty) + 2).run_round([*faulty, *healthy])
            after = utc_now()

    assert {r.outcome for r in first.results} == {FetchOutcome.CHANGED}
    results = {result.chart: result for result in summary.results}
    assert summary.errors == 0
    assert {chart: results[chart].outcome for chart in [*faulty, *healthy]} == {
        **dict.fromkeys(faulty, FetchOutcome.FAILED),
        **dict.fromkeys(healthy, FetchOutcome.CHANGED),
    }
    # The healthy charts were done while the slow faults still held their own slots.
    slowest = max(results[chart].seconds for chart in faulty)
    assert slowest >= ATTEMPTS * DEADLINE
    assert all(results[chart].seconds < slowest / 2 for chart in healthy), summary.results
    for chart, fault in faulty.items():
        (_, logged) = h.fetches(chart)
        expected_sample = served[chart].body[:BODY_SAMPLE_BYTES] if fault.sampled else None
        assert (
            logged.outcome,
            logged.error_class,
            logged.attempts,
            logged.http_status,
            logged.recovered,
            logged.body_sample,
        ) == ("failed", fault.error_class, fault.attempts, fault.http_status, False,
              expected_sample), chart  # fmt: skip
        assert fault.message in logged.error_message, (chart, logged.error_message)
        assert urlsplit(logged.url).path == legacy_path(chart)
        # Nothing stored over the snapshot of the first round; retried after the failure delay.
        assert h.snapshot_count(chart) == 1, chart
        task = h.task(chart)
        assert (task.consecutive_failures, task.lease_owner) == (1, None), chart
        assert within(task.next_due_at, before + FAILURE_RETRY, after + FAILURE_RETRY), chart
    for chart in healthy:
        assert h.snapshot_count(chart) == 2
        assert h.task(chart).consecutive_failures == 0
    # One log line per failed fetch, naming the chart, the feed and the error class.
    logged_failures = [
        (record.chart, record.source, record.error_class)  # type: ignore[attr-defined]
        for record in caplog.records
        if record.levelname == "WARNING" and hasattr(record, "error_class")
    ]
    assert sorted(logged_failures) == sorted(
        (chart.slug, SourceName.ITUNES_RSS.value, fault.error_class)
        for chart, fault in faulty.items()
    )
    counted = {
        fault.error_class: errors_counted(h, SourceName.ITUNES_RSS, fault.error_class)
        for fault in FAULTS.values()
    }
    assert counted == {
        "FetchConnectError": 1,
        "FetchTimeout": 2,
        "FetchProtocolError": 2,
        "FeedFormatError": 3,
        "EmptyChart": 1,
        "BodyTooLarge": 2,
    }
    # Alerts come from new snapshots only: the healthy charts' swap of two neighbours is news
    # (one passed the other); a failed fetch is a gap and tells nothing.
    alerted = {record.event.chart for record in h.repository.recent_alerts(limit=500, app_names={})}
    assert alerted == set(healthy)


# -- Retry-After, and a 503 storm ---------------------------------------------------------------


class FirstRequestRefused:
    """Answers the first request to arrive with `refusal` (sent `REFUSAL_DELAY` late, so the
    other polls' first requests are already in flight), every other one with the chart
    after `HEALTHY_DELAY` (so polls started later meet the host already held)."""

    REFUSAL_DELAY = 0.3
    HEALTHY_DELAY = 0.5

    def __init__(self, refusal: Response, feeds: AppleFeeds) -> None:
        self._refusal = refusal
        self._feeds = feeds
        self._lock = threading.Lock()
        self.refused: Request | None = None

    def serve(self, request: Request) -> Response:
        with self._lock:
            first = self.refused is None
            if first:
                self.refused = request
        if first:
            return dataclasses.replace(self._refusal, delay=self.REFUSAL_DELAY)
        return dataclasses.replace(self._feeds.serve(request), delay=self.HEALTHY_DELAY)


RETRY_AFTER = 2


@pytest.mark.slow
@pytest.mark.parametrize(
    "refusal",
    [
        pytest.param(lambda: too_many_requests(seconds=RETRY_AFTER), id="seconds"),
        pytest.param(lambda: too_many_requests_until(seconds=RETRY_AFTER), id="http-date"),
    ],
)
async def test_a_429_retry_after_holds_every_request_to_the_host_until_it_has_passed(
    sqlite_database: Database, refusal: Callable[[], Response]
) -> None:
    charts = grossing("us", "gb", "de")
    door = FirstRequestRefused(refusal(), AppleFeeds())
    with ScriptedServer(fallback=door.serve) as apple:
        async with harness(sqlite_database, apple, chart_keys=charts) as h:
            summary = await h.rounds(concurrency=2).run_round(charts)

    assert door.refused is not None
    answered_at = door.refused.arrived_at + FirstRequestRefused.REFUSAL_DELAY
    # Requests sent once the 429 was in: the refused chart's retry, and the chart that
    # started after one of the first two ended. None reached the host before the time.
    later = [r for r in apple.requests if r.arrived_at > answered_at]
    assert {r.path for r in later} - {door.refused.path}, "no other chart met the held host"
    waits = [r.arrived_at - answered_at for r in later]
    assert min(waits) >= RETRY_AFTER - 0.05, waits
    # The client waited instead of failing: every chart was served.
    assert {r.outcome for r in summary.results} == {FetchOutcome.CHANGED}
    refused = next(c for c in charts if legacy_path(c) == door.refused.path)
    assert [(r.outcome, r.attempts) for r in h.fetches(refused)] == [("changed", 2)]


async def test_a_503_storm_is_retried_with_backoff_a_bounded_number_of_times_until_it_recovers(
    sqlite_database: Database,
) -> None:
    (chart,) = grossing("us")
    base = 0.1
    # random() = 1: each full-jitter backoff is its whole cap, base * 2 ** (attempt - 1).
    settings = http_settings(max_attempts=3, backoff_base=base, backoff_max=10.0)
    with apple_server() as apple:
        apple.script(legacy_path(chart), *[Response(503, b"busy")] * 5)
        async with harness(
            sqlite_database, apple, chart_keys=[chart], http=settings, random=lambda: 1.0
        ) as h:
            failed_at = utc_now()
            failed = await h.poll(chart)
            after_failure = h.task(chart)
            recovered_at = utc_now()
            recovered = await h.poll(chart)
            after_recovery = h.task(chart)

    arrivals = [r.arrived_at for r in apple.requests_to(legacy_path(chart))]
    assert len(arrivals) == 6  # three attempts per poll, no more
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # Within each poll: base, then twice that; between the polls, whatever the test took.
    backoffs = {0: base, 1: 2 * base, 3: base, 4: 2 * base}
    for index, backoff in backoffs.items():
        assert backoff <= gaps[index] < backoff + 1.0, gaps
    assert (failed.outcome, recovered.outcome) == (FetchOutcome.FAILED, FetchOutcome.CHANGED)
    assert [(r.outcome, r.attempts, r.http_status, r.error_class) for r in h.fetches(chart)] == [
        ("failed", 3, 503, "HttpStatusError"),
        ("changed", 3, 200, None),
    ]
    assert within(
        after_failure.next_due_at, failed_at + FAILURE_RETRY, recovered_at + FAILURE_RETRY
    )
    assert after_failure.consecutive_failures == 1
    assert (after_recovery.consecutive_failures, after_recovery.last_error) == (0, None)
    assert within(after_recovery.next_due_at, recovered_at + INTERVAL, utc_now() + INTERVAL)
    assert h.snapshot_count(chart) == 1


# -- bodies that are no chart --------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(html_error_page(), id="html"),
        pytest.param(truncated(AppleFeeds().body(v2_path(US_FREE))), id="truncated-json"),
        pytest.param(wrong_schema(), id="wrong-schema"),
    ],
)
async def test_a_body_that_is_no_chart_keeps_its_head_in_the_fetch_log_beside_the_fallback(
    database: Database, body: bytes
) -> None:
    with apple_server() as apple:
        apple.route(v2_path(US_FREE), lambda request: Response(200, body))
        async with harness(database, apple, chart_keys=[US_FREE]) as h:
            result = await h.poll(US_FREE)
            (logged,) = h.repository.recent_fetches(limit=10, chart=US_FREE, failed_only=True)

    # The legacy feed served the chart; the v2 body is kept, capped, for whoever wonders why.
    assert (result.outcome, result.source) == (FetchOutcome.CHANGED, SourceName.ITUNES_RSS)
    assert len(body) > BODY_SAMPLE_BYTES
    fetch = logged.fetch
    assert (fetch.source, fetch.error_class, fetch.http_status, fetch.body_bytes) == (
        SourceName.APPLE_V2,
        "FeedFormatError",
        200,
        len(body),
    )
    assert fetch.body_sample == body[:BODY_SAMPLE_BYTES]
    assert logged.recovered
    success = h.fetches(US_FREE)[-1]
    assert (success.source, success.outcome, success.body_sample) == ("itunes_rss", "changed", None)
    assert h.deepseek_history(US_FREE) == [(RankStatus.LISTED, 31)]


# -- short charts never make a wave of "dropped out" -------------------------------------------

SHORT_CHART_RULES = """
[[alerts.rules]]
name = "dropped-out"
kind = "dropped_out"

[[alerts.rules]]
name = "left-top-50"
kind = "left_top"
top = 50

[[alerts.rules]]
name = "big-move"
kind = "moved"
places_up = 10
places_down = 10

[[alerts.rules]]
name = "top"
kind = "entered_top"
top = [1, 10]

[[alerts.rules]]
name = "passed"
kind = "rival_passed"
"""


def swapped(apps: Sequence[dict[str, Any]], a: int, b: int) -> list[dict[str, Any]]:
    """`apps` with ranks `a` and `b` exchanged: another body, no news for tracked apps."""
    changed = list(apps)
    changed[a - 1], changed[b - 1] = changed[b - 1], changed[a - 1]
    return changed


@dataclasses.dataclass
class ChartStory:
    """US top free served as `bodies` (step name -> apps in rank order) one poll each, with
    the rules of SHORT_CHART_RULES on the `tracked` apps; what each poll alerted."""

    events: dict[str, list[str]]
    held: float | None
    snapshots: int


def short_chart_rules(directory: Path) -> Path:
    config = directory / "rules.toml"
    config.write_text(SHORT_CHART_RULES, encoding="utf-8")
    return config


async def tell(
    database: Database,
    rules: Path,
    bodies: dict[str, list[dict[str, Any]]],
    tracked: Iterable[dict[str, Any]],
) -> ChartStory:
    fake = FakeAppleCharts()
    watchlist = watched(tracked)
    repository = Repository(database, alerts=default_rules(watchlist, rules), clock=utc_now)
    events: dict[str, list[str]] = {}
    with apple_server() as apple:
        apple.script(
            v2_path(US_FREE),
            *(Response(200, fake.v2_payload("us", "top-free", chart)) for chart in bodies.values()),
        )
        async with harness(database, apple, chart_keys=[US_FREE], repository=repository) as h:
            track(h, watchlist)
            for step in bodies:
                seen = len(alert_rows(database))
                result = await h.poll(US_FREE)
                assert (result.outcome, result.source) == (
                    FetchOutcome.CHANGED,
                    SourceName.APPLE_V2,
                )
                events[step] = [row.summary for row in alert_rows(database)[seen:]]
    held = h.metrics.registry.get_sample_value("apprank_snapshots_held_total")
    return ChartStory(events, held, h.snapshot_count(US_FREE))


# 101 apps: DeepSeek at 31 pushed the last one out of the 100.
APPS = FakeAppleCharts().chart("us", "top-free", 0)
FULL = APPS[:100]


async def test_a_chart_served_short_twice_is_no_wave_of_drop_outs_and_a_deep_one_tells_again(
    database: Database, tmp_path: Path
) -> None:
    tracked = {rank: FULL[rank - 1] for rank in (50, 60, 70, 80, 90)}
    short = FULL[:37]
    bodies = {
        "full": FULL,
        "short, held as a likely glitch": short,
        "short again: the glitch confirmed": swapped(short, 1, 2),
        "short a third time": short,
        "full again, without #80": [app for app in APPS if app is not tracked[80]],
    }

    story = await tell(database, short_chart_rules(tmp_path), bodies, tracked.values())

    assert story.events == {
        "full": [],
        "short, held as a likely glitch": [],
        # The tracked apps were at 50-90: a chart 37 deep does not say where they went.
        "short again: the glitch confirmed": [],
        "short a third time": [],
        # A chart deep enough does: the one app gone from it dropped out, compared with where
        # it was last seen; the app at 90 moved up one place, which is no news.
        "full again, without #80": [
            f"{tracked[80]['name']} dropped out of US Top Free iPhone (below #100, was #80)"
        ],
    }, story.events
    assert (story.held, story.snapshots) == (1, len(bodies))


async def test_an_app_known_gone_before_a_short_chart_is_not_moved_from_its_old_place(
    database: Database, tmp_path: Path
) -> None:
    app = FULL[79]
    without = [other for other in APPS if other is not app]
    back_at_60 = [*without[:59], app, *without[59:99]]
    short = without[:37]
    bodies = {
        "full": FULL,
        "full, without it": without,
        "short, held": short,
        "short again, confirmed": swapped(short, 1, 2),
        "full, with it back at #60": back_at_60,
    }

    story = await tell(database, short_chart_rules(tmp_path), bodies, [app])

    # Its last place, #80, was seen empty of it since: back at #60 after a short chart is no
    # move up of 20 places.
    name = app["name"]
    assert story.events == {
        "full": [],
        "full, without it": [f"{name} dropped out of US Top Free iPhone (below #100, was #80)"],
        "short, held": [],
        "short again, confirmed": [],
        "full, with it back at #60": [f"{name} back in US Top Free iPhone at #60"],
    }, story.events
    assert story.held == 1


# -- nothing new: duplicates, 304, identical bodies --------------------------------------------


async def test_duplicates_keep_the_first_place_and_304s_and_identical_bodies_write_nothing_new(
    database: Database,
) -> None:
    fake = FakeAppleCharts()
    full = fake.chart("us", "top-free", 0)[:100]
    # The app at #5 listed again at #40: kept at #5; were the later place kept, it would
    # have moved 35 places and left the top 10, which alerts.
    twice = [*full[:39], full[4], *full[39:99]]
    body = fake.v2_payload("us", "top-free", twice)
    etag = '"chart-v2"'
    tracked = watched([full[4]])
    repository = Repository(database, alerts=default_rules(tracked), clock=utc_now)
    with apple_server() as apple:
        apple.script(
            v2_path(US_FREE),
            Response(200, fake.v2_payload("us", "top-free", full)),
            Response(200, body, headers={"ETag": etag}),
            Response(304, headers={"ETag": etag}),
            Response(200, body),  # the same body without validators: unchanged by its hash
        )
        async with harness(database, apple, chart_keys=[US_FREE], repository=repository) as h:
            track(h, tracked)
            outcomes = [(await h.poll(US_FREE)).outcome for _ in range(4)]
            view = h.repository.chart_at(US_FREE)

    assert outcomes == [
        FetchOutcome.CHANGED,
        FetchOutcome.CHANGED,
        FetchOutcome.NOT_MODIFIED,
        FetchOutcome.UNCHANGED,
    ]
    assert [r.header("If-None-Match") for r in apple.requests] == [None, None, etag, etag]
    assert view is not None
    ranks = {entry.store_id: entry.rank for entry in view.entries}
    assert ranks[str(full[4]["id"])] == 5
    assert 40 not in {entry.rank for entry in view.entries}  # the repeat leaves a gap
    assert view.visible_depth == 100
    # The last two polls only confirmed the snapshot and logged themselves.
    assert h.snapshot_count(US_FREE) == 2
    assert view.confirmed_at > view.fetched_at
    assert [r.outcome for r in h.fetches(US_FREE)] == [
        "changed",
        "changed",
        "not_modified",
        "unchanged",
    ]
    assert alert_rows(database) == []


# -- the running process ------------------------------------------------------------------------

GB_FREE = dataclasses.replace(US_FREE, country="gb")
SERVICE_CAP = 2 * MB


def chart_labels(chart: ChartKey) -> dict[str, str]:
    return {
        "country": chart.country,
        "collection": chart.collection.value,
        "device": chart.device.value,
    }


def succeeded(service: ServiceProcess, charts: Sequence[ChartKey]) -> bool:
    return all(
        service.metric("apprank_last_success_timestamp_seconds", **chart_labels(chart)) is not None
        for chart in charts
    )


def service_charts() -> list[ChartKey]:
    """The charts tests.support.service.write_config polls."""
    return [
        dataclasses.replace(chart, country=country)
        for country in ("us", "gb")
        for chart in (US_FREE, US_PAID)
    ]


@pytest.mark.slow
def test_the_service_stays_within_bounded_memory_through_oversized_bodies_and_gzip_bombs(
    tmp_path: Path, sqlite_url: str
) -> None:
    bomb, huge = gzip_bomb(50 * MB), oversized(50 * MB)
    with serve_charts(FakeAppleCharts()) as feeds:
        config = write_config(tmp_path, database_url=sqlite_url, feeds=feeds)
        env = {"MONITOR_FETCH_MAX_BODY_BYTES": str(SERVICE_CAP)}
        with ServiceProcess(config, extra_env=env) as service:
            service.wait_ready()
            wait_for(lambda: succeeded(service, service_charts()), "a first healthy round")
            healthy_peak = memory_bytes(service.pid, "VmHWM")
            # Each feed of two charts now serves 50 MB: inflated from a gzip bomb or declared.
            feeds.route(v2_path(US_FREE), always(bomb))
            feeds.route(legacy_path(US_FREE), always(huge))
            feeds.route(v2_path(GB_FREE), always(huge))
            feeds.route(legacy_path(GB_FREE), always(bomb))

            def too_large(source: SourceName) -> float:
                value = service.metric(
                    "apprank_fetch_errors_total", source=source.value, error="BodyTooLarge"
                )
                return value or 0.0

            wait_for(
                lambda: min(too_large(SourceName.APPLE_V2), too_large(SourceName.ITUNES_RSS)) >= 2,
                "a round of oversized bodies and bombs on both feeds",
            )
            peak = memory_bytes(service.pid, "VmHWM")
            failures = service.metric("apprank_chart_consecutive_failures", **chart_labels(US_FREE))
            assert failures is not None
            assert failures >= 1

    # Reading one of those bodies whole would take 50 MB; the cap keeps a fetch under 2 MB
    # (plus one inflate step), whatever the feed serves.
    assert peak - healthy_peak < 16 * MB, (healthy_peak, peak)


@pytest.mark.slow
def test_a_chart_whose_feed_never_answers_holds_up_no_other_chart_of_the_live_service(
    tmp_path: Path, sqlite_url: str
) -> None:
    with serve_charts(FakeAppleCharts()) as feeds:
        feeds.route(v2_path(US_FREE), always(no_answer()))
        feeds.route(legacy_path(US_FREE), always(no_answer()))
        config = write_config(tmp_path, database_url=sqlite_url, feeds=feeds)
        others = [chart for chart in service_charts() if chart != US_FREE]

        def polled_twice() -> bool:
            return all(len(feeds.requests_to(v2_path(chart))) >= 2 for chart in others)

        with ServiceProcess(config) as service:
            service.wait_ready()
            # Every 3 s, while the silent feed holds its own poll (a 30 s read timeout): the
            # round it started in takes on the charts that come due again.
            wait_for(polled_twice, "the other charts' second poll", 15)
            assert succeeded(service, others)
            assert len(feeds.requests_to(v2_path(US_FREE))) == 1
            assert feeds.requests_to(legacy_path(US_FREE)) == []
            assert not succeeded(service, [US_FREE])
            assert service.metric("apprank_fetch_errors_total") is None
            failures = service.metric("apprank_chart_consecutive_failures", **chart_labels(US_FREE))
            assert failures == 0
            service.kill()  # not stopped: SIGTERM would give the silent poll its grace first
