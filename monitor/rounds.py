"""Poll rounds: claim due charts from the schedule and poll them with bounded concurrency.

Charts are claimed a few at a time as slots free up, never all at once, so each lease only
has to cover one chart's fetch, whatever the per-host budget makes the whole round last.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence

from monitor.errors import LeaseLost, MonitorError
from monitor.model import ChartKey, FetchOutcome, PollClaim
from monitor.polling import Poller, PollResult
from monitor.progress import Progress
from monitor.store.repository import Repository

log = logging.getLogger(__name__)

# A round with at least this many charts due logs its progress (a first full poll, a catch-up).
PROGRESS_THRESHOLD = 50


@dataclasses.dataclass(frozen=True)
class RoundSummary:
    results: tuple[PollResult, ...]
    errors: int
    seconds: float

    @property
    def failed(self) -> int:
        return self.errors + sum(1 for r in self.results if r.outcome is FetchOutcome.FAILED)

    @property
    def changed(self) -> int:
        return sum(1 for r in self.results if r.outcome is FetchOutcome.CHANGED)


class PollRounds:
    def __init__(
        self,
        *,
        repository: Repository,
        poller: Poller,
        owner: str,
        concurrency: int,
        lease: dt.timedelta,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self._repository = repository
        self._poller = poller
        self._owner = owner
        self._concurrency = concurrency
        self._lease = lease
        self._clock = clock
        self._stopping = False
        self._current: asyncio.Task[RoundSummary] | None = None
        self._in_flight: dict[asyncio.Task[PollResult], PollClaim] = {}

    @property
    def running(self) -> bool:
        return self._current is not None and not self._current.done()

    async def tick(self) -> None:
        """Start a round unless one is still running (a long round simply continues)."""
        if self._stopping or self.running:
            return
        self._current = asyncio.create_task(self.run_round())
        self._current.add_done_callback(_log_round_failure)

    async def run_round(self, charts: Sequence[ChartKey] | None = None) -> RoundSummary:
        """Poll every due chart (or exactly `charts`, due or not) once."""
        started = time.monotonic()
        status = await asyncio.to_thread(self._repository.schedule_status, now=self._clock())
        total = len(charts) if charts is not None else status.due_now
        progress = Progress("poll round", log) if total >= PROGRESS_THRESHOLD else None
        results: list[PollResult] = []
        errors = 0
        unclaimed = list(charts) if charts is not None else None  # named, not claimed yet
        more_to_claim = total > 0
        while not self._stopping:
            free = self._concurrency - len(self._in_flight)
            if more_to_claim and free > 0:
                claims = await asyncio.to_thread(
                    self._repository.claim_due,
                    owner=self._owner,
                    now=self._clock(),
                    lease=self._lease,
                    limit=free,
                    charts=unclaimed[:free] if unclaimed is not None else None,
                )
                if unclaimed is not None:
                    del unclaimed[:free]
                    more_to_claim = bool(unclaimed)
                else:
                    more_to_claim = len(claims) == free
                if self._stopping:
                    # stop() came during the claim and cannot see these: give them back.
                    for claim in claims:
                        await asyncio.to_thread(self._repository.release, claim)
                    break
                for claim in claims:
                    self._in_flight[asyncio.create_task(self._poller.poll(claim))] = claim
            if not self._in_flight:
                break
            done, _ = await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                claim = self._in_flight.pop(task)
                try:
                    results.append(task.result())
                except asyncio.CancelledError:
                    continue  # abandoned by stop(); its lease is released there
                except LeaseLost as exc:
                    # Expected when replicas share a database: another one owns the chart now.
                    errors += 1
                    log.warning("%s", exc, extra={"chart": claim.chart.slug})
                except Exception:
                    errors += 1
                    log.exception(
                        "poll of %s crashed", claim.chart, extra={"chart": claim.chart.slug}
                    )
            if progress is not None:
                progress(len(results) + errors, max(total, len(results) + errors))
        summary = RoundSummary(tuple(results), errors, time.monotonic() - started)
        if results or errors:
            log.info(
                "poll round: %d charts polled, %d changed, %d failed in %.1fs",
                len(results) + errors,
                summary.changed,
                summary.failed,
                summary.seconds,
                extra={
                    "polled": len(results) + errors,
                    "changed": summary.changed,
                    "failed": summary.failed,
                    "duration_seconds": round(summary.seconds, 3),
                },
            )
        return summary

    async def stop(self, grace: float) -> None:
        """Stop claiming; give in-flight polls `grace` seconds, then abandon and release them."""
        self._stopping = True
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=grace)
        abandoned = [claim for task, claim in self._in_flight.items() if not task.done()]
        for task in self._in_flight:
            task.cancel()
        if self._in_flight:
            await asyncio.wait(self._in_flight)
        if self._current is not None:
            await asyncio.wait([self._current])
        for claim in abandoned:
            await asyncio.to_thread(self._repository.release, claim)
        if abandoned:
            log.info("abandoned %d in-flight polls; their charts stay due", len(abandoned))


def _log_round_failure(task: asyncio.Task[RoundSummary]) -> None:
    """A round started by tick() has no one awaiting it: its failure is logged here (and so
    retrieved), and the next tick starts a new round."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        # A MonitorError (the database is down) says all there is to say in its message.
        traceback = None if isinstance(exc, MonitorError) else exc
        log.error("poll round failed: %s: %s", type(exc).__name__, exc, exc_info=traceback)
