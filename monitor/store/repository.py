"""The storage API used by the worker and the CLI. Synchronous: the worker calls it in threads.

Each method is one transaction (the watchlist backfill and the rebuild are batches of them),
takes and returns monitor.model types or the small dataclasses of monitor.store.results, and
raises StoreError (or its LeaseLost / DatabaseLocked) for anything the database refused.
All datetimes are timezone-aware UTC.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TypeVar

from sqlalchemy import Connection

from monitor.alerts.model import RankSeries
from monitor.alerts.policy import AlertPolicy, Silence
from monitor.crash_points import CrashPoint, crash_point
from monitor.model import (
    ChartKey,
    ChartSnapshot,
    FetchRecord,
    PollClaim,
    RankPoint,
    RankStatus,
    Store,
    Validators,
    WatchedApp,
)
from monitor.store import (
    alert_queries,
    derived,
    exports,
    fetch_queries,
    jobs,
    outbox,
    partitions,
    queries,
    retention,
    schedule,
    snapshots,
)
from monitor.store import history as rank_history
from monitor.store import movers as rank_movers
from monitor.store import silences as stored_silences
from monitor.store.alert_queries import AlertRecord
from monitor.store.apps import AppCache, GrowthAnalyzer
from monitor.store.engine import Database
from monitor.store.movers import Mover
from monitor.store.results import (
    AppInfo,
    ChartHealth,
    ChartSync,
    ChartView,
    ChartViewEntry,
    CurrentRank,
    ScheduleStatus,
    ServiceState,
    SnapshotWrite,
    TrackedAppStatus,
    TrackedRankChange,
    WatchlistSync,
)
from monitor.store.retention import RetentionPolicy, RetentionReport
from monitor.store.silences import StoredSilence
from monitor.store.sql import in_autocommit, in_transaction, reading

__all__ = [
    "AlertRecord",
    "AppInfo",
    "ChartHealth",
    "ChartSync",
    "ChartView",
    "ChartViewEntry",
    "CurrentRank",
    "Mover",
    "Repository",
    "ScheduleStatus",
    "ServiceState",
    "SnapshotWrite",
    "StoredSilence",
    "TrackedAppStatus",
    "TrackedRankChange",
    "WatchlistSync",
]

Progress = Callable[[int, int], None]
T = TypeVar("T")
# How soon a silence that another process (`silence add`) stored applies to the alerts this
# one writes: reading them in every snapshot's transaction that has alerts cost more.
SILENCES_MAX_AGE_SECONDS = 10.0


class Repository:
    """`alerts`: the rules evaluated on each new snapshot (default: none); `clock` stamps the
    notifications they queue; a silence stored by another process applies to them at most
    `silences_max_age_seconds` later."""

    def __init__(
        self,
        database: Database,
        *,
        alerts: AlertPolicy | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        silences_max_age_seconds: float = SILENCES_MAX_AGE_SECONDS,
    ) -> None:
        self._alerts = alerts or AlertPolicy()
        self._clock = clock
        self._engine = database.engine
        self._dialect = database.dialect
        self._charts = schedule.ChartCatalog()
        self._apps = AppCache()
        self._latest = snapshots.LatestSnapshots()
        self._added_silences = stored_silences.SilenceCache(silences_max_age_seconds)
        self._analyzer = GrowthAnalyzer(self._dialect)
        # SQLite has one writer at a time; threads of this process queue here instead of in
        # SQLite's busy handler, which sleeps in growing steps and wastes most of the wait.
        self._write_turn: contextlib.AbstractContextManager[object] = (
            threading.Lock() if self._dialect == "sqlite" else contextlib.nullcontext()
        )

    def _transaction(self, work: Callable[[Connection], T]) -> T:
        with self._write_turn:
            return in_transaction(self._engine, work)

    def _one_statement(self, work: Callable[[Connection], T]) -> T:
        """For `work` that writes with a single statement (a claim, a release): no transaction
        around it on PostgreSQL, where the worker's event loop waits on each claim."""
        if self._dialect == "postgresql":
            return in_autocommit(self._engine, work)
        return self._transaction(work)

    # -- poll schedule -------------------------------------------------------------------

    def sync_charts(self, charts: Sequence[ChartKey], *, now: dt.datetime) -> ChartSync:
        """Schedule exactly `charts`: new ones due now, others disabled (history kept)."""
        return self._transaction(lambda c: schedule.sync_charts(c, self._dialect, charts, now=now))

    def claim_due(
        self,
        *,
        owner: str,
        now: dt.datetime,
        lease: dt.timedelta,
        limit: int,
        charts: Sequence[ChartKey] | None = None,
        include_disabled: bool = False,
    ) -> list[PollClaim]:
        """Lease up to `limit` due charts, oldest due first; with `charts`, lease those (if
        enabled, or `include_disabled`, and not leased) whether due or not."""
        return self._one_statement(
            lambda c: schedule.claim_due(
                c,
                self._dialect,
                self._charts,
                owner=owner,
                now=now,
                lease=lease,
                limit=limit,
                charts_wanted=charts,
                include_disabled=include_disabled,
            ),
        )

    def add_disabled_charts(self, charts: Sequence[ChartKey], *, now: dt.datetime) -> int:
        """Schedule the charts of `charts` not in the schedule yet, disabled: their history
        can be written (under a claim with `include_disabled`), but nothing polls them.
        Returns how many were added."""
        return self._transaction(lambda c: schedule.add_disabled(c, self._dialect, charts, now=now))

    def record_snapshot(
        self,
        claim: PollClaim,
        snapshot: ChartSnapshot,
        *,
        content_hash: str,
        validators: Validators,
        fetches: Sequence[FetchRecord],
        next_due_at: dt.datetime,
    ) -> SnapshotWrite:
        """Store a fetched chart, its derived ranks, the fetch log and the schedule advance in
        one transaction. Raises LeaseLost (writing nothing) if the claim was superseded."""
        now = self._clock()
        # Read before the write transaction, at most every few seconds: not in each one.
        added_silences = (
            self._added_silences.active(
                lambda: reading(self._engine, lambda c: stored_silences.stored(c, active_at=now)),
                at=now,
            )
            if self._alerts.rules
            else []
        )
        written = self._transaction(
            lambda c: snapshots.write_snapshot(
                c,
                self._dialect,
                self._apps,
                claim,
                snapshot,
                known_latest=self._latest.get(claim),
                content_hash=content_hash,
                validators=validators,
                fetches=fetches,
                next_due_at=next_due_at,
                alert_policy=self._alerts,
                now=now,
                added_silences=added_silences,
            ),
        )
        crash_point(CrashPoint.SNAPSHOT_COMMITTED)
        self._apps.update(claim.chart.store, written.apps)
        self._latest.put(claim, written.latest)
        self._analyzer.grew(self._engine, written.result.new_apps)
        return written.result

    def record_unchanged(
        self,
        claim: PollClaim,
        *,
        validators: Validators,
        fetches: Sequence[FetchRecord],
        next_due_at: dt.datetime,
    ) -> None:
        """The feed served the content of the latest snapshot again (or HTTP 304)."""
        latest = self._transaction(
            lambda c: snapshots.write_unchanged(
                c,
                self._dialect,
                claim,
                known_latest=self._latest.get(claim),
                validators=validators,
                fetches=fetches,
                next_due_at=next_due_at,
            ),
        )
        self._latest.put(claim, latest)

    def record_failure(
        self, claim: PollClaim, *, fetches: Sequence[FetchRecord], next_due_at: dt.datetime
    ) -> None:
        """Every attempt of the poll failed: log them, count the failure, retry later."""
        self._transaction(
            lambda c: snapshots.write_failure(
                c, self._dialect, claim, fetches=fetches, next_due_at=next_due_at
            ),
        )
        # No snapshot was written: what was known of the latest one stays true.
        self._latest.put(claim, self._latest.get(claim))

    def renew(self, claim: PollClaim, *, now: dt.datetime, lease: dt.timedelta) -> PollClaim:
        """The claim with a lease of `lease` from `now`; raises LeaseLost if it was taken
        over meanwhile."""
        return self._one_statement(lambda c: schedule.renew(c, claim, now + lease))

    def release(self, claim: PollClaim) -> None:
        """Give a lease back unpolled (shutdown); a no-op if it was lost meanwhile."""
        self._one_statement(lambda c: schedule.release(c, claim))

    def schedule_status(self, *, now: dt.datetime) -> ScheduleStatus:
        return reading(self._engine, lambda c: schedule.status(c, now=now))

    # -- watchlist and derived ranks -----------------------------------------------------

    def sync_watchlist(
        self, apps: Sequence[WatchedApp], *, progress: Progress | None = None
    ) -> WatchlistSync:
        """Track exactly `apps`; backfill the rank history of newly tracked ones from the
        stored snapshots (`progress(snapshots_done, snapshots_total)`)."""
        return derived.sync_watchlist(self._engine, self._dialect, apps, progress)

    def rebuild_derived(self, *, progress: Progress | None = None) -> int:
        """Recompute `app_ranks` from the snapshots; returns the rows written."""
        return derived.rebuild(self._engine, self._dialect, progress)

    # -- retention -------------------------------------------------------------------------

    def run_retention(
        self,
        policy: RetentionPolicy,
        *,
        now: dt.datetime,
        progress: Progress | None = None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> RetentionReport:
        """Fold and remove what `policy` no longer keeps (store/retention.py)."""
        return retention.run_retention(
            self._engine, self._dialect, policy, now=now, progress=progress, stopping=stopping
        )

    @property
    def partitioned(self) -> bool:
        """Whether the tables that grow with every poll are partitioned by month (PostgreSQL),
        so that their coming months must be made ahead of need (make_partitions)."""
        return self._dialect == "postgresql"

    def make_partitions(self, now: dt.datetime) -> list[str]:
        """Make the partitions of this month and the next ones that are missing, as retention
        does (store/partitions.py); returns their names."""
        if not self.partitioned:
            return []
        return partitions.make_months_ahead(self._engine, now)

    def folded_before(self, chart: ChartKey) -> dt.datetime | None:
        """Where retention folded `chart` up to: no snapshot before it is read any more."""
        return reading(self._engine, lambda c: retention.folded_before(c, self._charts, chart))

    def claim_job(
        self,
        job: str,
        *,
        period_start: dt.datetime,
        owner: str,
        now: dt.datetime,
        stale_after: dt.timedelta,
    ) -> bool:
        """Whether `owner` is to run `job` for the period (store/jobs.py)."""
        return in_transaction(
            self._engine,
            lambda c: jobs.claim(
                c,
                self._dialect,
                job=job,
                period_start=period_start,
                owner=owner,
                now=now,
                stale_after=stale_after,
            ),
        )

    def finish_job(
        self, job: str, *, period_start: dt.datetime, owner: str, now: dt.datetime, outcome: str
    ) -> None:
        in_transaction(
            self._engine,
            lambda c: jobs.finish(
                c, job=job, period_start=period_start, owner=owner, now=now, outcome=outcome
            ),
        )

    # -- queries -------------------------------------------------------------------------

    def find_apps(self, ref: str, *, limit: int = 50) -> list[AppInfo]:
        """Apps by store id or bundle id (exact, first) or by name (any case, substring)."""
        return reading(self._engine, lambda c: queries.find_apps(c, ref, limit=limit))

    def history(
        self,
        app_id: int,
        *,
        country: str | None = None,
        collection: str | None = None,
        device: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        only: Collection[ChartKey] | None = None,
    ) -> list[RankPoint]:
        """The app's rank points, sorted by (chart, time), on every chart matching the filters
        (and among `only`, if given) that has listed it at least once: LISTED, BELOW_DEPTH (a
        snapshot without it) or FETCH_FAILED (a poll that got no chart at all)."""
        return reading(
            self._engine,
            lambda c: rank_history.history(
                c,
                self._dialect,
                self._charts,
                app_id,
                country=country,
                collection=collection,
                device=device,
                since=since,
                until=until,
                only=only,
            ),
        )

    def first_poll_at(
        self,
        *,
        country: str | None = None,
        collection: str | None = None,
        device: str | None = None,
    ) -> dt.datetime | None:
        """When the first chart matching the filters was first polled: where history begins."""
        return reading(
            self._engine,
            lambda c: queries.first_poll_at(
                c, country=country, collection=collection, device=device
            ),
        )

    def chart_at(self, chart: ChartKey, at: dt.datetime | None = None) -> ChartView | None:
        """The latest snapshot of `chart` fetched at or before `at` (default: the latest)."""
        return reading(self._engine, lambda c: queries.chart_at(c, self._charts, chart, at))

    def count_snapshots(self, *, since: dt.datetime | None, until: dt.datetime | None) -> int:
        return reading(self._engine, lambda c: exports.count_snapshots(c, since=since, until=until))

    def snapshot_page(
        self,
        *,
        since: dt.datetime | None,
        until: dt.datetime | None,
        after: exports.PagePosition | None,
        limit: int,
    ) -> tuple[list[ChartView], exports.PagePosition | None]:
        """Stored snapshots with their entries, chart by chart and oldest first, a page at a
        time: pass the position a page ended at to get the next (None: it was the last)."""
        return reading(
            self._engine,
            lambda c: exports.snapshot_page(
                c, self._charts, since=since, until=until, after=after, limit=limit
            ),
        )

    def tracked_apps(self) -> list[TrackedAppStatus]:
        return reading(self._engine, lambda c: queries.tracked_apps(c, self._charts))

    def movers(
        self,
        *,
        now: dt.datetime,
        window: dt.timedelta,
        country: str | None = None,
        collection: str | None = None,
        device: str | None = None,
        genre: str | None = None,
    ) -> list[Mover]:
        """Tracked apps that moved, entered or left a matching chart within `window` before
        `now`, the biggest move first."""
        return reading(
            self._engine,
            lambda c: rank_movers.movers(
                c,
                self._charts,
                now=now,
                window=window,
                country=country,
                collection=collection,
                device=device,
                genre=genre,
            ),
        )

    def service_state(self, *, now: dt.datetime) -> ServiceState:
        """Tracked apps' current ranks, chart health and the schedule, as of one moment."""

        def read(connection: Connection) -> ServiceState:
            return ServiceState(
                tracked=tuple(queries.tracked_apps(connection, self._charts)),
                charts=tuple(schedule.chart_health(connection, self._charts)),
                schedule=schedule.status(connection, now=now),
                outbox=outbox.status(connection),
            )

        return reading(self._engine, read)

    # -- alert outbox ----------------------------------------------------------------------

    def claim_message(
        self, *, owner: str, now: dt.datetime, lease: dt.timedelta, domain: str
    ) -> outbox.OutboxMessage | None:
        """Claim the oldest due message of the outbox (its notifications, under a lease)."""
        return self._transaction(
            lambda c: outbox.claim_message(
                c,
                self._dialect,
                self._charts,
                owner=owner,
                now=now,
                lease=lease,
                domain=domain,
                app_names=self._alerts.app_names,
            )
        )

    def finish_message(
        self,
        message: outbox.OutboxMessage,
        *,
        outcome: str,
        now: dt.datetime,
        error: str | None = None,
        retry_at: dt.datetime | None = None,
    ) -> None:
        self._transaction(
            lambda c: outbox.finish_message(
                c, message, outcome=outcome, now=now, error=error, retry_at=retry_at
            )
        )

    def recent_alerts(
        self,
        *,
        limit: int,
        since: dt.datetime | None = None,
        of_apps: Collection[tuple[Store, str]] | None = None,
        app_names: Mapping[tuple[Store, str], str],
    ) -> list[AlertRecord]:
        """The latest `limit` alert events, newest first, with their deliveries; those at or
        after `since` and of the apps `of_apps` ((store, store id) pairs) if given.
        `app_names` names the apps (the watchlist's names)."""
        return reading(
            self._engine,
            lambda c: alert_queries.recent_alerts(
                c,
                self._dialect,
                self._charts,
                limit=limit,
                since=since,
                of_apps=of_apps,
                app_names=app_names,
            ),
        )

    def recent_fetches(
        self,
        *,
        limit: int,
        chart: ChartKey | None = None,
        failed_only: bool = False,
        since: dt.datetime | None = None,
    ) -> list[fetch_queries.LoggedFetch]:
        """The latest `limit` fetch log rows, newest first; of `chart`, failed ones only, at
        or after `since`, as asked."""
        return reading(
            self._engine,
            lambda c: fetch_queries.recent_fetches(
                c, self._charts, limit=limit, chart=chart, failed_only=failed_only, since=since
            ),
        )

    # -- silences added at run time ------------------------------------------------------

    def add_silence(self, silence: Silence, *, now: dt.datetime) -> int:
        """Store a silence, active from now on for the events written; returns its id."""
        silence_id = self._transaction(lambda c: stored_silences.add(c, silence, now=now))
        self._added_silences.forget()
        return silence_id

    def silences(self, *, active_at: dt.datetime | None) -> list[StoredSilence]:
        """The stored silences active at `active_at`, or all of them when None."""
        return reading(self._engine, lambda c: stored_silences.stored(c, active_at=active_at))

    def expire_silence(self, silence_id: int, *, now: dt.datetime) -> bool:
        """End a silence now; False when no silence of that id is active now."""
        expired = self._transaction(lambda c: stored_silences.expire(c, silence_id, now=now))
        self._added_silences.forget()
        return expired

    def rank_series(
        self, app_id: int, charts: Collection[ChartKey], *, since: dt.datetime, until: dt.datetime
    ) -> list[RankSeries]:
        """The app's rank on each of `charts` from `since`, for the picture in a message."""
        points = self.history(app_id, since=since, until=until, only=charts)
        series: dict[ChartKey, list[RankPoint]] = {}
        for point in points:
            if point.status is not RankStatus.FETCH_FAILED:
                series.setdefault(point.chart, []).append(point)
        return [
            RankSeries(
                chart=chart,
                points=tuple((point.at, point.rank) for point in chart_points),
                depth=max((point.depth or 0) for point in chart_points),
            )
            for chart, chart_points in series.items()
        ]
