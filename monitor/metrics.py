"""Prometheus metrics: in-process instruments, and the stored state read once per scrape.

Two kinds of series (README, "Metrics reference"):
- counters, histograms and gauges of this process (fetches, the scheduler, errors), updated
  as things happen, per replica;
- the service state (tracked apps' current ranks, chart health, the schedule), read from the
  database in one snapshot per scrape: every replica reports the same, as of the last
  completed poll. A scrape never fetches from a store.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import logging
import platform
import threading
from collections.abc import Callable, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from monitor import __version__
from monitor.alerts.model import EventState
from monitor.errors import MonitorError
from monitor.metrics_state import PREFIX, database_down, state_text
from monitor.model import FetchOutcome, FetchRecord, SourceName, Store
from monitor.store.results import AlertsWritten, ServiceState

log = logging.getLogger(__name__)

# A source is reported down after this many fetches from it failed in a row: one chart's
# failure (a genre a storefront lacks) must not flip it.
SOURCE_DOWN_AFTER_FAILURES = 3
# The classic text format, which every Prometheus 2.x and 3.x reads; metrics_state.py writes
# it, and prometheus_client's generate_latest too (whose "latest" content type says 1.0.0).
EXPOSITION_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RETENTION_OUTCOMES = ("ok", "failed", "interrupted")
FETCH_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclasses.dataclass(frozen=True)
class SourceStatus:
    """What this process saw of one feed format since it started."""

    source: SourceName
    up: bool | None  # None before the first fetch
    fetches: Mapping[FetchOutcome, int]
    failures_in_a_row: int


class DatabaseOperation(enum.StrEnum):
    """Values of the `operation` label of apprank_database_errors_total."""

    POLL = "poll"
    ROUND = "round"
    SCRAPE = "scrape"
    OUTBOX = "outbox"
    RETENTION = "retention"


class ServiceMetrics:
    """This process's instruments and the stored state, in a registry of their own."""

    def __init__(
        self,
        *,
        poll_interval: dt.timedelta,
        read_state: Callable[[dt.datetime], ServiceState],
        app_labels: Mapping[tuple[Store, str], str],
        clock: Callable[[], dt.datetime],
    ) -> None:
        def name(suffix: str) -> str:
            return f"{PREFIX}_{suffix}"

        self.registry = registry = CollectorRegistry()
        self._read_state = read_state
        self._app_labels = app_labels
        self._clock = clock
        Gauge(
            name("build_info"),
            "The running version (value 1).",
            ["version", "python"],
            registry=registry,
        ).labels(__version__, platform.python_version()).set(1)
        Gauge(
            name("poll_interval_seconds"),
            "Configured interval between polls of a chart.",
            registry=registry,
        ).set(poll_interval.total_seconds())
        self._fetches = Counter(
            name("fetches"),
            "Feed fetches, by feed format and result.",
            ["source", "outcome"],
            registry=registry,
        )
        self._fetch_errors = Counter(
            name("fetch_errors"),
            "Failed feed fetches, by error class.",
            ["source", "error"],
            registry=registry,
        )
        self._fetch_duration = Histogram(
            name("fetch_duration_seconds"),
            "Duration of one fetch, all its HTTP attempts.",
            ["source"],
            buckets=FETCH_DURATION_BUCKETS,
            registry=registry,
        )
        self._source_up = Gauge(
            name("source_up"),
            f"0 after {SOURCE_DOWN_AFTER_FAILURES} failed fetches in a row from the source, "
            "1 after a successful one.",
            ["source"],
            registry=registry,
        )
        self._scheduler_missed = Counter(
            name("scheduler_missed_runs"),
            "Scheduler ticks that ran too late and were skipped.",
            registry=registry,
        )
        self._scheduler_errored = Counter(
            name("scheduler_errored_runs"),
            "Ticks or poll rounds that failed with an error.",
            registry=registry,
        )
        self._database_errors = Counter(
            name("database_errors"),
            "Database operations that failed.",
            ["operation"],
            registry=registry,
        )
        self._leases_lost = Counter(
            name("leases_lost"),
            "Polls whose chart another replica took over before their outcome was written.",
            registry=registry,
        )
        self._alerts = Counter(
            name("alerts"), "Rank alerts fired, by rule.", ["rule"], registry=registry
        )
        self._snapshots_held = Counter(
            name("snapshots_held"),
            "New snapshots held back from alerting: they looked like a feed glitch.",
            registry=registry,
        )
        self._notifications = Counter(
            name("notifications"),
            "Notification attempts, by channel and result.",
            ["channel", "result"],
            registry=registry,
        )
        self._retention_runs = Counter(
            name("retention_runs"),
            "Daily retention runs of this replica, by outcome (ok, failed, interrupted).",
            ["outcome"],
            registry=registry,
        )
        self._retention_last_run = Gauge(
            name("retention_last_run_timestamp_seconds"),
            "When this replica's last retention run ended, by outcome.",
            ["outcome"],
            registry=registry,
        )
        for outcome in RETENTION_OUTCOMES:
            self._retention_runs.labels(outcome)
        for source in SourceName:
            for outcome in FetchOutcome:
                self._fetches.labels(source.value, outcome.value)
        for operation in DatabaseOperation:
            self._database_errors.labels(operation.value)
        self._failures_in_a_row: dict[SourceName, int] = {}
        self._fetch_counts: dict[SourceName, dict[FetchOutcome, int]] = {
            source: dict.fromkeys(FetchOutcome, 0) for source in SourceName
        }
        self._lock = threading.Lock()

    def fetched(self, record: FetchRecord) -> None:
        """Count one fetch (called from worker threads)."""
        if record.source is None:
            return
        source = record.source.value
        self._fetches.labels(source, record.outcome.value).inc()
        self._fetch_duration.labels(source).observe(record.duration_seconds)
        failed = record.outcome is FetchOutcome.FAILED
        if failed:
            self._fetch_errors.labels(source, record.error_class or "unknown").inc()
        with self._lock:
            self._fetch_counts[record.source][record.outcome] += 1
            in_a_row = self._failures_in_a_row.get(record.source, 0) + 1 if failed else 0
            self._failures_in_a_row[record.source] = in_a_row
            self._source_up.labels(source).set(0 if in_a_row >= SOURCE_DOWN_AFTER_FAILURES else 1)

    def sources(self) -> list[SourceStatus]:
        with self._lock:
            return [
                SourceStatus(
                    source=source,
                    up=(
                        None
                        if source not in self._failures_in_a_row
                        else self._failures_in_a_row[source] < SOURCE_DOWN_AFTER_FAILURES
                    ),
                    fetches=dict(self._fetch_counts[source]),
                    failures_in_a_row=self._failures_in_a_row.get(source, 0),
                )
                for source in SourceName
            ]

    def exposition(self) -> bytes:
        """Every series in the text format (blocking: reads the database once). When the read
        fails, apprank_database_up is 0 and the state series are left out (stale in
        Prometheus)."""
        now = self._clock()
        try:
            state = state_text(self._read_state(now), now, self._app_labels)
        except MonitorError as exc:
            log.warning("metrics: could not read the service state: %s", exc)
            # Counted before the counters are written: this scrape shows it.
            self.database_error(DatabaseOperation.SCRAPE)
            state = database_down()
        return state.encode() + generate_latest(self.registry)

    def alerts_written(self, written: AlertsWritten) -> None:
        """Count what a new snapshot did to alerting."""
        for event in written.events:
            if event.state is EventState.FIRING:
                self._alerts.labels(event.rule).inc()
        if written.held is not None:
            self._snapshots_held.inc()

    def notified(self, channel: str, result: str) -> None:
        self._notifications.labels(channel, result).inc()

    def scheduler_missed(self) -> None:
        self._scheduler_missed.inc()

    def scheduler_errored(self) -> None:
        self._scheduler_errored.inc()

    def database_error(self, operation: DatabaseOperation) -> None:
        self._database_errors.labels(operation.value).inc()

    def retention_ran(self, outcome: str, at: dt.datetime) -> None:
        self._retention_runs.labels(outcome).inc()
        self._retention_last_run.labels(outcome).set(at.timestamp())

    def lease_lost(self) -> None:
        self._leases_lost.inc()
