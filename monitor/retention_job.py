"""The daily retention run of the service: once a UTC day across every replica.

The scheduler asks every few minutes; from `[retention] hour` on, the first replica to claim
the day (store/jobs.py) runs retention in a worker thread while polling goes on, and the others
look again an hour later, in case the one that claimed it dies mid-run. A run stopped by a
shutdown ends between two transactions and is taken up again once its claim is stale.

With retention off, the day's run on PostgreSQL still makes the coming months' partitions:
without them every new row would go to the default partition, which retention, once on again,
could only empty row by row.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import threading
from collections.abc import Callable

from monitor.config import Settings
from monitor.errors import StoreError
from monitor.metrics import DatabaseOperation, ServiceMetrics
from monitor.store.folding import midnight
from monitor.store.repository import Repository
from monitor.store.retention import RetentionPolicy

log = logging.getLogger(__name__)

JOB = "retention"
# A claimed run not finished after this long is taken to have died with its replica.
STALE_AFTER = dt.timedelta(hours=6)
# How long a replica that found the day claimed waits before it looks again.
RECHECK_AFTER = dt.timedelta(hours=1)


def policy_of(settings: Settings) -> RetentionPolicy:
    return RetentionPolicy(
        snapshot_days=settings.retention.snapshot_days,
        fetch_log_days=settings.retention.fetch_log_days,
        poll_interval=settings.poll.interval,
    )


@dataclasses.dataclass
class RetentionJob:
    repository: Repository
    settings: Settings
    owner: str
    clock: Callable[[], dt.datetime]
    metrics: ServiceMetrics
    _next_look: dt.datetime | None = None
    _stopping: threading.Event = dataclasses.field(default_factory=threading.Event)
    _running: asyncio.Task[None] | None = None

    async def run_if_due(self) -> None:
        now = self.clock()
        retention = self.settings.retention
        if not (retention.enabled or self.repository.partitioned):
            return
        if now.hour < retention.hour or self._stopping.is_set():
            return
        if self._next_look is not None and now < self._next_look:
            return
        day = midnight(now.date())
        try:
            claimed = await asyncio.to_thread(
                self.repository.claim_job,
                JOB,
                period_start=day,
                owner=self.owner,
                now=now,
                stale_after=STALE_AFTER,
            )
        except StoreError as exc:
            self.metrics.database_error(DatabaseOperation.RETENTION)
            log.error("retention: could not claim the day's run: %s", exc)
            return
        if not claimed:
            self._next_look = now + RECHECK_AFTER
            return
        self._running = asyncio.current_task()
        try:
            await self._run(day, now)
        finally:
            self._running = None
            # Tomorrow's run, from the configured hour.
            self._next_look = day + dt.timedelta(days=1)

    async def _run(self, day: dt.datetime, now: dt.datetime) -> None:
        work = self._retain if self.settings.retention.enabled else self._make_partitions
        try:
            outcome = await work(now)
        except StoreError as exc:
            self.metrics.database_error(DatabaseOperation.RETENTION)
            self.metrics.retention_ran("failed", self.clock())
            log.error("retention failed: %s", exc)
            outcome = f"failed: {exc}"
        if outcome is None:
            return  # unfinished: taken up again once the claim is stale
        try:
            await asyncio.to_thread(
                self.repository.finish_job,
                JOB,
                period_start=day,
                owner=self.owner,
                now=self.clock(),
                outcome=outcome[:2000],
            )
        except StoreError as exc:
            self.metrics.database_error(DatabaseOperation.RETENTION)
            log.error("retention: could not record the run: %s", exc)

    async def _retain(self, now: dt.datetime) -> str | None:
        """Run retention; its summary, or None when it was interrupted."""
        log.info(
            "retention: folding snapshots older than %d days", self.settings.retention.snapshot_days
        )
        report = await asyncio.to_thread(
            self.repository.run_retention,
            policy_of(self.settings),
            now=now,
            stopping=self._stopping.is_set,
        )
        log.info("retention: %s", report.summary())
        if report.interrupted:
            self.metrics.retention_ran("interrupted", self.clock())
            return None
        self.metrics.retention_ran("failed" if report.failed_charts else "ok", self.clock())
        return report.summary()

    async def _make_partitions(self, now: dt.datetime) -> str:
        """Retention off: only the coming months' partitions (module docstring)."""
        made = await asyncio.to_thread(self.repository.make_partitions, now)
        outcome = f"off; made partitions: {', '.join(made) or 'none missing'}"
        log.info("retention %s", outcome)
        self.metrics.retention_ran("ok", self.clock())
        return outcome

    async def stop(self, *, grace: float) -> None:
        """Ask a run in progress to end at its next transaction; wait up to `grace`."""
        self._stopping.set()
        running = self._running
        if running is not None:
            await asyncio.wait({running}, timeout=grace)
