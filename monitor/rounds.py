"""Poll rounds: claim due charts from the schedule and poll them with bounded concurrency.

Up to `concurrency` polls fetch at once. A poll gives its fetch slot back once its chart is
parsed: while it writes to the database the next chart is already being fetched (up to as many
again write). Charts are claimed a few at a time, never all at once, and ahead of need: up to
`concurrency` claimed charts wait for a slot, so that no slot waits for a claim's database
round trip. A lease thus covers one chart's wait for a slot and its fetch, whatever the
per-host budget makes the whole round last; a chart that waited long renews its lease first.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence

from monitor.errors import LeaseLost, MonitorError, StoreError
from monitor.metrics import DatabaseOperation, ServiceMetrics
from monitor.model import ChartKey, FetchOutcome, PollClaim
from monitor.polling import Poller, PollResult
from monitor.progress import Progress
from monitor.store.repository import Repository

log = logging.getLogger(__name__)

# A round with at least this many charts due logs its progress (a first full poll, a catch-up).
PROGRESS_THRESHOLD = 50
# A chart claimed ahead that waited longer than this part of its lease for a fetch slot (slow
# fetches) renews the lease before it is polled: its fetch is never cut short by the wait.
RENEW_AFTER_WAITING = 0.1


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
        metrics: ServiceMetrics,
    ) -> None:
        self._repository = repository
        self._metrics = metrics
        self._poller = poller
        self._owner = owner
        self._concurrency = concurrency
        self._lease = lease
        self._clock = clock
        self._stopping = False
        self._current: asyncio.Task[RoundSummary] | None = None
        self._in_flight: dict[asyncio.Task[PollResult], PollClaim] = {}
        self._fetching: set[int] = set()  # chart ids of the in-flight polls still fetching
        self._progressed = asyncio.Event()  # a poll ended or gave its fetch slot back
        # A tick came while a round ran: charts may have come due since it last claimed.
        self._ticked = False

    @property
    def running(self) -> bool:
        return self._current is not None and not self._current.done()

    async def tick(self) -> None:
        """Start a round unless one is still running: a long round simply continues, and
        claims the charts that came due meanwhile (one slow chart holds up no other)."""
        if self._stopping:
            return
        if self.running:
            self._ticked = True
            self._progressed.set()
            return
        self._current = asyncio.create_task(self.run_round())
        self._current.add_done_callback(self._round_ended)

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
        ready: collections.deque[PollClaim] = collections.deque()  # claimed, not started
        claiming: asyncio.Task[list[PollClaim]] | None = None
        requested = 0
        while not self._stopping:
            self._progressed.clear()
            while (
                ready
                and len(self._fetching) < self._concurrency
                and len(self._in_flight) < 2 * self._concurrency
            ):
                self._start_poll(ready.popleft())
            # Claimed ahead, a few at a time, while the fetches go on: a claim is a database
            # round trip that no fetch slot should wait for.
            wanted = self._concurrency - len(ready)
            if more_to_claim and claiming is None and wanted > self._concurrency // 2:
                batch = unclaimed[:wanted] if unclaimed is not None else None
                if unclaimed is not None:
                    del unclaimed[:wanted]
                claiming = asyncio.create_task(self._claim(wanted, batch))
                claiming.add_done_callback(lambda _: self._progressed.set())
                requested = wanted
            if not (self._in_flight or ready or claiming):
                break
            await self._progressed.wait()
            if self._ticked and charts is None:
                self._ticked = False
                more_to_claim = True
            if claiming is not None and claiming.done():
                claims = self._claimed(claiming)
                claiming = None
                ready.extend(claims)
                # Fewer due charts than asked for: every due chart is claimed now.
                more_to_claim = (
                    bool(unclaimed) if unclaimed is not None else len(claims) == requested
                )
            finished, failed = self._collect_finished()
            results.extend(finished)
            errors += failed
            if progress is not None:
                progress(len(results) + errors, max(total, len(results) + errors))
        if claiming is not None:
            ready.extend(await claiming)
        for claim in ready:  # stopped before they started: give them back
            await asyncio.to_thread(self._repository.release, claim)
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

    def _collect_finished(self) -> tuple[list[PollResult], int]:
        """Results of the polls that ended since the last call, and how many crashed."""
        results = []
        errors = 0
        for task in [task for task in self._in_flight if task.done()]:
            claim = self._in_flight.pop(task)
            try:
                results.append(task.result())
            except asyncio.CancelledError:
                continue  # abandoned by stop(); its lease is released there
            except LeaseLost as exc:
                # Expected when replicas share a database: another one owns the chart now.
                errors += 1
                self._metrics.lease_lost()
                log.warning("%s", exc, extra={"chart": claim.chart.slug})
            except StoreError as exc:
                errors += 1
                self._metrics.database_error(DatabaseOperation.POLL)
                log.error(
                    "poll of %s failed: %s", claim.chart, exc, extra={"chart": claim.chart.slug}
                )
            except Exception:
                errors += 1
                log.exception("poll of %s crashed", claim.chart, extra={"chart": claim.chart.slug})
        return results, errors

    def _claimed(self, claiming: asyncio.Task[list[PollClaim]]) -> list[PollClaim]:
        """The charts a finished claim leased; none when the database failed it. The round
        goes on without claiming more: the polls in flight finish, and their outcomes are
        collected and reported (failing ones too, if the database is down); a later round
        claims what this one could not."""
        try:
            return claiming.result()
        except StoreError as exc:
            self._metrics.database_error(DatabaseOperation.ROUND)
            log.error("poll round: could not claim charts: %s", exc)
            return []

    async def _claim(self, limit: int, charts: Sequence[ChartKey] | None) -> list[PollClaim]:
        return await asyncio.to_thread(
            self._repository.claim_due,
            owner=self._owner,
            now=self._clock(),
            lease=self._lease,
            limit=limit,
            charts=charts,
        )

    def _start_poll(self, claim: PollClaim) -> None:
        def fetch_slot_free() -> None:
            self._fetching.discard(claim.chart_id)
            self._progressed.set()

        self._fetching.add(claim.chart_id)
        task = asyncio.create_task(self._poll(claim, fetched=fetch_slot_free))
        task.add_done_callback(lambda _: fetch_slot_free())
        self._in_flight[task] = claim

    async def _poll(self, claim: PollClaim, *, fetched: Callable[[], None]) -> PollResult:
        now = self._clock()
        waited = self._lease - (claim.lease_expires_at - now)
        if waited > self._lease * RENEW_AFTER_WAITING:
            claim = await asyncio.to_thread(
                self._repository.renew, claim, now=now, lease=self._lease
            )
        return await self._poller.poll(claim, fetched=fetched)

    async def stop(self, grace: float) -> None:
        """Stop claiming; give in-flight polls `grace` seconds, then abandon and release them."""
        self._stopping = True
        self._progressed.set()  # a round waiting for its claims or polls sees it at once
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

    def _round_ended(self, task: asyncio.Task[RoundSummary]) -> None:
        """A round started by tick() has no one awaiting it: its failure is logged and counted
        here (and so retrieved), and the next tick starts a new round."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        self._metrics.scheduler_errored()
        if isinstance(exc, StoreError):
            self._metrics.database_error(DatabaseOperation.ROUND)
        # A MonitorError (the database is down) says all there is to say in its message.
        traceback = None if isinstance(exc, MonitorError) else exc
        log.error("poll round failed: %s: %s", type(exc).__name__, exc, exc_info=traceback)
