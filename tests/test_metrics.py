"""The metrics on their own: in-process instruments, and the stored state as series.

The state comes from ServiceState values built here; reading it from a real database is
tests/store/test_service_state.py, and the whole path (a running service scraped by promtool
and a real Prometheus) is tests/test_metrics_live.py.
"""

from __future__ import annotations

import datetime as dt

from prometheus_client.parser import text_string_to_metric_families

from monitor.errors import StoreError
from monitor.metrics import ServiceMetrics
from monitor.metrics_state import unique_app_labels
from monitor.model import ChartKey, Collection, Device, FetchOutcome, FetchRecord, SourceName, Store
from monitor.store.results import (
    AppInfo,
    ChartHealth,
    CurrentRank,
    OutboxStatus,
    ScheduleStatus,
    ServiceState,
    TrackedAppStatus,
)

NOW = dt.datetime(2025, 1, 26, 12, 0, tzinfo=dt.UTC)
US_FREE = ChartKey(Store.APPLE, "us", Collection.TOP_FREE, Device.IPHONE)
JP_FREE = ChartKey(Store.APPLE, "jp", Collection.TOP_FREE, Device.IPHONE)
US_FREE_LABELS = {
    "store": "apple",
    "country": "us",
    "collection": "top_free",
    "device": "iphone",
    "genre": "all",
}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def app(app_id: int, store_id: str, name: str) -> AppInfo:
    return AppInfo(
        id=app_id,
        store=Store.APPLE,
        store_id=store_id,
        name=name,
        developer=None,
        bundle_id=None,
        genre_name=None,
        tracked=True,
        first_seen_at=None,
        last_seen_at=None,
    )


DEEPSEEK = app(1, "6737597349", "DeepSeek - AI Assistant")
CHATGPT = app(2, "6448311069", "ChatGPT")


def current(chart: ChartKey, rank: int | None, depth: int = 100) -> CurrentRank:
    return CurrentRank(chart=chart, rank=rank, depth=depth, fetched_at=NOW, confirmed_at=NOW)


def state(*tracked: TrackedAppStatus, oldest_due_at: dt.datetime | None = None) -> ServiceState:
    return ServiceState(
        tracked=tracked,
        charts=(
            ChartHealth(US_FREE, NOW - dt.timedelta(minutes=5), 0, None),
            ChartHealth(JP_FREE, None, 4, "HttpStatusError: HTTP 503"),
        ),
        schedule=ScheduleStatus(
            enabled=2, due_now=1, leased=0, failing=1, oldest_due_at=oldest_due_at
        ),
        outbox=OutboxStatus(pending=3, oldest_pending_at=NOW - dt.timedelta(minutes=2)),
    )


def scrape(metrics: ServiceMetrics) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for sample in family.samples
    }


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def service(read_state: object, *, watchlist: dict[str, str] | None = None) -> ServiceMetrics:
    def read(now: dt.datetime) -> ServiceState:
        assert now == NOW
        if isinstance(read_state, Exception):
            raise read_state
        assert isinstance(read_state, ServiceState)
        return read_state

    return ServiceMetrics(
        poll_interval=dt.timedelta(hours=1),
        read_state=read,
        app_labels={(Store.APPLE, store_id): name for store_id, name in (watchlist or {}).items()},
        clock=lambda: NOW,
    )


def test_rank_series_name_apps_by_their_watchlist_name_and_listed_is_always_present() -> None:
    metrics = service(
        state(
            TrackedAppStatus(DEEPSEEK, (current(US_FREE, 1), current(JP_FREE, None, depth=37))),
            TrackedAppStatus(CHATGPT, (current(US_FREE, 2),)),
        ),
        watchlist={DEEPSEEK.store_id: "DeepSeek"},
    )

    samples = scrape(metrics)

    assert value(samples, "apprank_rank", app="DeepSeek", **US_FREE_LABELS) == 1
    assert value(samples, "apprank_rank", app="ChatGPT", **US_FREE_LABELS) == 2
    jp = {**US_FREE_LABELS, "country": "jp"}
    assert value(samples, "apprank_rank", app="DeepSeek", **jp) is None
    assert value(samples, "apprank_listed", app="DeepSeek", **jp) == 0
    assert value(samples, "apprank_listed", app="DeepSeek", **US_FREE_LABELS) == 1
    assert value(samples, "apprank_chart_depth", **jp) == 37
    assert value(samples, "apprank_chart_depth", **US_FREE_LABELS) == 100
    assert (
        value(
            samples,
            "apprank_app_info",
            app="DeepSeek",
            store="apple",
            store_id=DEEPSEEK.store_id,
            name="DeepSeek - AI Assistant",
        )
        == 1
    )
    assert value(samples, "apprank_database_up") == 1


def test_chart_health_schedule_and_lag_come_from_the_same_read() -> None:
    metrics = service(state(oldest_due_at=NOW - dt.timedelta(seconds=95)))

    samples = scrape(metrics)

    assert value(samples, "apprank_poll_lag_seconds") == 95
    assert value(samples, "apprank_charts", state="failing") == 1
    assert value(samples, "apprank_charts", state="enabled") == 2
    assert (
        value(samples, "apprank_last_success_timestamp_seconds", **US_FREE_LABELS)
        == (NOW - dt.timedelta(minutes=5)).timestamp()
    )
    jp = {**US_FREE_LABELS, "country": "jp"}
    assert value(samples, "apprank_last_success_timestamp_seconds", **jp) is None
    assert value(samples, "apprank_chart_consecutive_failures", **jp) == 4
    assert value(samples, "apprank_poll_interval_seconds") == 3600
    assert value(samples, "apprank_outbox_pending") == 3
    assert value(samples, "apprank_outbox_oldest_pending_age_seconds") == 120


def test_no_chart_due_means_no_lag() -> None:
    assert value(scrape(service(state())), "apprank_poll_lag_seconds") == 0


def test_a_failed_state_read_reports_the_database_down_and_keeps_the_process_series() -> None:
    metrics = service(StoreError("database error: connection refused"))

    samples = scrape(metrics)

    assert value(samples, "apprank_database_up") == 0
    assert value(samples, "apprank_database_errors_total", operation="scrape") == 1
    assert not {"apprank_rank", "apprank_listed", "apprank_poll_lag_seconds"} & names(samples)
    assert value(samples, "apprank_fetches_total", source="apple_v2", outcome="failed") == 0


def fetch(source: SourceName, outcome: FetchOutcome, error_class: str | None = None) -> FetchRecord:
    return FetchRecord(
        chart=US_FREE,
        started_at=NOW,
        duration_seconds=0.3,
        outcome=outcome,
        source=source,
        url="https://feeds.example/us",
        http_status=503 if error_class else 200,
        attempts=1,
        error_class=error_class,
    )


def test_fetches_are_counted_by_source_outcome_and_error_class_and_timed() -> None:
    metrics = service(state())

    metrics.fetched(fetch(SourceName.APPLE_V2, FetchOutcome.CHANGED))
    metrics.fetched(fetch(SourceName.APPLE_V2, FetchOutcome.FAILED, "HttpStatusError"))
    metrics.fetched(fetch(SourceName.ITUNES_RSS, FetchOutcome.NOT_MODIFIED))
    samples = scrape(metrics)

    v2 = {"source": "apple_v2"}
    assert value(samples, "apprank_fetches_total", outcome="changed", **v2) == 1
    assert value(samples, "apprank_fetches_total", outcome="failed", **v2) == 1
    assert value(samples, "apprank_fetches_total", outcome="unchanged", **v2) == 0
    assert value(samples, "apprank_fetch_errors_total", error="HttpStatusError", **v2) == 1
    assert value(samples, "apprank_fetch_duration_seconds_count", **v2) == 2
    assert value(samples, "apprank_fetch_duration_seconds_bucket", le="0.5", **v2) == 2
    assert value(samples, "apprank_fetch_duration_seconds_bucket", le="0.25", **v2) == 0


def test_a_source_is_down_after_three_failures_in_a_row_and_up_after_a_success() -> None:
    metrics = service(state())

    def up() -> float | None:
        return value(scrape(metrics), "apprank_source_up", source="apple_v2")

    assert up() is None  # nothing known before the first fetch
    seen = []
    for outcome in [FetchOutcome.FAILED] * 3 + [FetchOutcome.UNCHANGED, FetchOutcome.FAILED]:
        metrics.fetched(fetch(SourceName.APPLE_V2, outcome, "FetchTimeout"))
        seen.append(up())

    assert seen == [1, 1, 0, 1, 1]
    status = {s.source: s for s in metrics.sources()}
    assert status[SourceName.APPLE_V2].up is True
    assert status[SourceName.APPLE_V2].failures_in_a_row == 1
    assert status[SourceName.APPLE_V2].fetches[FetchOutcome.FAILED] == 4
    assert status[SourceName.ITUNES_RSS].up is None


def test_alert_and_notification_counters_are_exposed_before_their_first_sample() -> None:
    text = service(state()).exposition().decode()

    assert "# TYPE apprank_alerts_total counter" in text
    assert "# TYPE apprank_notifications_total counter" in text
    assert "# TYPE apprank_build_info gauge" in text


def test_apps_sharing_a_name_get_their_store_id_in_the_label() -> None:
    twin = app(3, "123", "ChatGPT")
    labels = unique_app_labels(
        [TrackedAppStatus(CHATGPT, ()), TrackedAppStatus(twin, ()), TrackedAppStatus(DEEPSEEK, ())],
        {(Store.APPLE, DEEPSEEK.store_id): "DeepSeek"},
    )

    assert labels == {1: "DeepSeek", 2: "ChatGPT (6448311069)", 3: "ChatGPT (123)"}


def test_store_names_with_quotes_backslashes_and_newlines_survive_the_exposition() -> None:
    odd = app(4, "42", 'Say "hi" \\ to\nme')
    metrics = service(state(TrackedAppStatus(odd, (current(US_FREE, 5),))))

    samples = scrape(metrics)

    info = value(
        samples, "apprank_app_info", app=odd.name, store="apple", store_id="42", name=odd.name
    )
    assert info == 1
    assert value(samples, "apprank_rank", app=odd.name, **US_FREE_LABELS) == 5
