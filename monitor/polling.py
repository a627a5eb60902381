"""Polling one claimed chart: fetch (with fallback to the other feed), parse, store.

A chart's poll ends in exactly one schedule update, fenced by the claim's token: a snapshot,
an "unchanged" confirmation, or a failure. The fetch log gets a row for every feed tried, so
a fallback from the v2 feed to the legacy one stays visible.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable

from monitor.errors import (
    FeedError,
    FetchError,
    FetchTimeout,
    HostBackoff,
    HttpStatusError,
    MonitorError,
)
from monitor.metrics import ServiceMetrics
from monitor.model import (
    ChartKey,
    ChartSnapshot,
    FetchOutcome,
    FetchRecord,
    PollClaim,
    SourceName,
    Validators,
    lease_margin_seconds,
)
from monitor.sources.catalog import FeedEndpoints, FeedRequest, feed_requests
from monitor.sources.http import FeedClient, FetchResult
from monitor.sources.parsers import PARSERS
from monitor.store.repository import Repository
from monitor.store.results import AlertsWritten

log = logging.getLogger(__name__)

ERROR_MESSAGE_LIMIT = 500
# How much of a body that arrived but was no chart the fetch log keeps. Its head is what tells
# an HTML error page, a captive portal or a changed JSON shape apart (the parser's message
# gives where the rest went wrong, body_bytes its length); 2 KiB holds an error page's title
# and the first entry of a feed, and keeps a chart failing every 5 minutes on both feeds
# under 1.2 MB of log a day.
BODY_SAMPLE_BYTES = 2048


@dataclasses.dataclass(frozen=True)
class PollSettings:
    depth: int
    prefer_v2: bool
    interval: dt.timedelta
    failure_retry: dt.timedelta
    lease: dt.timedelta


@dataclasses.dataclass(frozen=True)
class PollResult:
    chart: ChartKey
    outcome: FetchOutcome
    source: SourceName | None
    entries: int | None
    seconds: float
    error: str | None = None


class Poller:
    def __init__(
        self,
        *,
        client: FeedClient,
        repository: Repository,
        endpoints: FeedEndpoints,
        settings: PollSettings,
        clock: Callable[[], dt.datetime],
        metrics: ServiceMetrics,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._repository = repository
        self._endpoints = endpoints
        self._settings = settings
        self._clock = clock

    async def poll(
        self, claim: PollClaim, *, fetched: Callable[[], None] = lambda: None
    ) -> PollResult:
        """Poll one chart; never raises for feed problems (they become a recorded failure).

        `fetched` is called once the network part is over (the chart parsed, or every feed
        failed), before the outcome is written: from then on the poll needs no fetch slot.
        """
        started = time.monotonic()
        failures: list[FetchRecord] = []
        retry_in = min(self._settings.interval, self._settings.failure_retry)
        requests = feed_requests(
            claim.chart,
            depth=self._settings.depth,
            endpoints=self._endpoints,
            prefer_v2=self._settings.prefer_v2,
        )
        for request in requests:
            attempt_started = self._clock()
            attempt_clock = time.monotonic()
            response: FetchResult | None = None
            try:
                validators = claim.validators if request.source == claim.last_source else None
                response = await self._fetch_within_lease(claim, request, validators)
                snapshot = await asyncio.to_thread(
                    self._parse, claim, request, response, attempt_started=attempt_started
                )
            except (FetchError, FeedError) as exc:
                if isinstance(exc, HostBackoff):
                    # Not capped by the interval: due before the host takes requests again,
                    # the chart could only fail again, without even a request.
                    retry_in = max(retry_in, dt.timedelta(seconds=exc.retry_after_seconds))
                failures.append(
                    self._failure_record(
                        claim.chart,
                        request,
                        exc,
                        fetched=response,
                        attempt_started=attempt_started,
                        attempt_clock=attempt_clock,
                    )
                )
                log.warning(
                    "poll failed: %s via %s: %s: %s",
                    claim.chart,
                    request.source,
                    type(exc).__name__,
                    exc,
                    extra={
                        "chart": claim.chart.slug,
                        "source": request.source.value,
                        "error_class": type(exc).__name__,
                    },
                )
                continue
            fetched()
            return await asyncio.to_thread(
                self._record,
                claim,
                request,
                response,
                snapshot,
                attempt_started=attempt_started,
                failures=failures,
                started=started,
            )
        fetched()
        if not failures:
            raise MonitorError(f"{claim.chart}: no feed serves this chart")
        self._count(failures)
        now = self._clock()
        await asyncio.to_thread(
            self._repository.record_failure,
            claim,
            fetches=failures,
            next_due_at=now + retry_in,
        )
        last = failures[-1]
        return PollResult(
            claim.chart,
            FetchOutcome.FAILED,
            last.source,
            None,
            time.monotonic() - started,
            f"{last.error_class}: {last.error_message}",
        )

    async def _fetch_within_lease(
        self, claim: PollClaim, request: FeedRequest, validators: Validators | None
    ) -> FetchResult:
        """Fetch, giving up before the lease runs out: past it another worker may own the chart."""
        left = (claim.lease_expires_at - self._clock()).total_seconds()
        left -= lease_margin_seconds(self._settings.lease)
        try:
            async with asyncio.timeout(max(left, 0.0)):
                return await self._client.fetch(request.url, validators)
        except TimeoutError:
            raise FetchTimeout(
                f"{request.url}: gave up before the poll lease of {claim.chart} expired",
                url=request.url,
            ) from None

    def _parse(
        self,
        claim: PollClaim,
        request: FeedRequest,
        fetched: FetchResult,
        *,
        attempt_started: dt.datetime,
    ) -> ChartSnapshot | None:
        """The chart in `fetched` (in a worker thread: parsing is CPU-bound), or None when
        the feed served what the chart's latest snapshot already holds."""
        if fetched.not_modified or (
            fetched.content_hash == claim.last_hash and request.source == claim.last_source
        ):
            return None
        snapshot = PARSERS[request.source](
            fetched.body,
            chart=claim.chart,
            requested_depth=self._settings.depth,
            fetched_at=attempt_started,
        )
        for notice in snapshot.notices:
            log.info("%s: %s", claim.chart, notice, extra={"chart": claim.chart.slug})
        return snapshot

    def _record(
        self,
        claim: PollClaim,
        request: FeedRequest,
        fetched: FetchResult,
        snapshot: ChartSnapshot | None,
        *,
        attempt_started: dt.datetime,
        failures: list[FetchRecord],
        started: float,
    ) -> PollResult:
        """Write the outcome, in a worker thread (blocking database I/O); `snapshot` is None
        when the chart is unchanged."""
        next_due_at = self._clock() + self._settings.interval
        record = FetchRecord(
            chart=claim.chart,
            started_at=attempt_started,
            duration_seconds=fetched.elapsed,
            outcome=FetchOutcome.NOT_MODIFIED if fetched.not_modified else FetchOutcome.CHANGED,
            source=request.source,
            url=fetched.url,
            http_status=fetched.status,
            attempts=fetched.attempts,
            body_bytes=len(fetched.body),
        )
        if snapshot is None:
            if not fetched.not_modified:
                record = dataclasses.replace(record, outcome=FetchOutcome.UNCHANGED)
            self._count([*failures, record])
            self._repository.record_unchanged(
                claim,
                validators=fetched.validators,
                fetches=[*failures, record],
                next_due_at=next_due_at,
            )
            return PollResult(
                claim.chart, record.outcome, request.source, None, time.monotonic() - started
            )
        assert fetched.content_hash is not None
        self._count([*failures, record])
        written = self._repository.record_snapshot(
            claim,
            snapshot,
            content_hash=fetched.content_hash,
            validators=fetched.validators,
            fetches=[*failures, record],
            next_due_at=next_due_at,
        )
        self._report_alerts(claim.chart, written.alerts)
        outcome = FetchOutcome.CHANGED if written.stored else FetchOutcome.UNCHANGED
        return PollResult(
            claim.chart,
            outcome,
            request.source,
            len(snapshot.entries),
            time.monotonic() - started,
        )

    def _report_alerts(self, chart: ChartKey, written: AlertsWritten) -> None:
        self._metrics.alerts_written(written)
        if written.held is not None:
            log.warning(
                "%s: new snapshot held back from alerting, it looks like a feed glitch: %s",
                chart,
                written.held,
                extra={"chart": chart.slug},
            )
        for event in written.events:
            log.info(
                "alert %s: %s",
                event.state,
                event.summary,
                extra={"chart": chart.slug, "rule": event.rule, "app": event.app.name},
            )

    def _count(self, fetches: list[FetchRecord]) -> None:
        for record in fetches:
            self._metrics.fetched(record)

    def _failure_record(
        self,
        chart: ChartKey,
        request: FeedRequest,
        exc: MonitorError,
        *,
        fetched: FetchResult | None,
        attempt_started: dt.datetime,
        attempt_clock: float,
    ) -> FetchRecord:
        """The failed attempt; when the body arrived but did not parse, its HTTP facts and
        the head of the body too."""
        record = FetchRecord(
            chart=chart,
            started_at=attempt_started,
            duration_seconds=time.monotonic() - attempt_clock,
            outcome=FetchOutcome.FAILED,
            source=request.source,
            url=request.url,
            http_status=exc.status if isinstance(exc, HttpStatusError) else None,
            attempts=exc.attempts if isinstance(exc, FetchError) else 1,
            error_class=type(exc).__name__,
            error_message=str(exc)[:ERROR_MESSAGE_LIMIT],
        )
        if fetched is None:
            return record
        return dataclasses.replace(
            record,
            url=fetched.url,
            http_status=fetched.status,
            attempts=fetched.attempts,
            body_bytes=len(fetched.body),
            body_sample=fetched.body[:BODY_SAMPLE_BYTES],
        )
