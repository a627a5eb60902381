"""Completing a poll: the snapshot, derived ranks, fetch log and schedule in one transaction.

Every path starts with the fenced schedule update (schedule.complete), so a worker that lost
its lease is stopped before it writes anything. Content equal to the previous snapshot writes
no snapshot: the previous one's `confirmed_at` moves forward instead.

Statements are built once, at import: a write only binds parameters. A warm snapshot write is
the fence, then the snapshot with its derived ranks (when a tracked app is listed) and its
fetch log: one statement on PostgreSQL, where each statement is a round trip, three on SQLite.
The latest snapshot of the chart comes from LatestSnapshots when this process wrote it, and
apps seen lately are not written (apps.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    ScalarSelect,
    Select,
    SmallInteger,
    Text,
    and_,
    bindparam,
    cast,
    func,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql

from monitor.alerts.policy import AlertPolicy
from monitor.crash_points import CrashPoint, crash_point
from monitor.model import ChartSnapshot, FetchOutcome, FetchRecord, PollClaim, Validators
from monitor.store import alerting, derived, packing, schedule
from monitor.store import apps as app_writes
from monitor.store.apps import AppCache, Known
from monitor.store.results import AlertsWritten, SnapshotWrite, TrackedRankChange
from monitor.store.silences import StoredSilence
from monitor.store.sql import insert_ignoring_conflicts, json_ready, json_recordset, per_dialect
from monitor.store.tables import app_ranks, apps, fetch_log, snapshots

_ERROR_MESSAGE_CHARS = 2_000
_SMALLINT_MAX = 32_767
_INT_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True, slots=True)
class Latest:
    """The latest snapshot of a chart (by fetch time): what a write compares with."""

    snapshot_id: int
    fetched_at: dt.datetime
    content_hash: bytes
    ranked_app_ids: bytes
    # The chart's alert state after this process evaluated the snapshot; None: not known.
    alerts: alerting.ChartAlertMemory | None = None


class LatestSnapshots:
    """Chart id -> its latest snapshot, as known after this process's last completion of it.

    An entry is kept with the fencing token of that completion. Every claim bumps the token by
    one, so a claim holding that token or the next one is proof that no other worker has
    completed the chart since (a stale one is fenced out), and the entry saves reading the
    snapshot back. Any other token means the entry may be stale: it is not used.
    """

    def __init__(self) -> None:
        self._charts: dict[int, tuple[int, Latest]] = {}
        self._lock = threading.Lock()

    def get(self, claim: PollClaim) -> Latest | None:
        entry = self._charts.get(claim.chart_id)
        if entry is None or not 0 <= claim.token - entry[0] <= 1:
            return None
        return entry[1]

    def put(self, claim: PollClaim, latest: Latest | None) -> None:
        """After a committed completion under `claim`; None when the latest is not known."""
        with self._lock:
            entry = self._charts.get(claim.chart_id)
            if entry is not None and entry[0] > claim.token:
                return  # a later completion got here first: its entry is the newer one
            if latest is None:
                self._charts.pop(claim.chart_id, None)
            else:
                self._charts[claim.chart_id] = (claim.token, latest)


@dataclasses.dataclass(frozen=True)
class Written:
    result: SnapshotWrite
    apps: dict[str, Known]
    latest: Latest | None


_COMPLETE_AND_LOCK = per_dialect(lambda d: derived.holding_shared(schedule.COMPLETE, d))
_SNAPSHOT_COLUMNS = (
    snapshots.c.id,
    snapshots.c.fetched_at,
    snapshots.c.content_hash,
    snapshots.c.ranked_app_ids,
)
_LATEST = (
    select(*_SNAPSHOT_COLUMNS)
    .where(snapshots.c.chart_id == bindparam("chart_id"))
    .order_by(snapshots.c.fetched_at.desc())
    .limit(1)
)
_LATEST_UP_TO = _LATEST.where(snapshots.c.fetched_at <= bindparam("fetched_at"))
_SNAPSHOT_AT = select(snapshots.c.id).where(
    snapshots.c.chart_id == bindparam("chart_id"),
    snapshots.c.fetched_at == bindparam("fetched_at"),
)


def _tracked_apps(dialect: str) -> ScalarSelect[Any]:
    """Every tracked app as a JSON object, app id -> store id: a probe of a small partial index
    (an IN list of the snapshot's apps would be a plan over the table)."""
    if dialect == "postgresql":
        as_json: Any = cast(func.json_object_agg(apps.c.id, apps.c.store_id), Text)
    else:
        as_json = func.json_group_object(apps.c.id, apps.c.store_id)
    return select(as_json).where(apps.c.tracked).scalar_subquery()


_SNAPSHOT_FIELDS = (
    "fetched_at",
    "confirmed_at",
    "feed_updated_at",
    "chart_id",
    "requested_depth",
    "visible_depth",
    "source",
    "content_hash",
    "ranked_app_ids",
)


def _insert_snapshot_ranks_and_log() -> Select[Any]:
    """PostgreSQL: the new snapshot, its derived ranks and the fetch log in one statement, one
    round trip instead of three. Yields the snapshot's id and the tracked apps (as
    `_tracked_apps`), or no row when a snapshot of this fetch exists already (its derived
    ranks too, then: nothing is inserted but the missing fetch log rows).

    The tracked apps are read in this statement's snapshot of the database, taken after the
    fence statement took the lock that guards them (derived.py): that is why the fence cannot
    be part of it.
    """
    inserted = (
        postgresql.insert(snapshots)
        .values({name: bindparam(name, type_=snapshots.c[name].type) for name in _SNAPSHOT_FIELDS})
        .on_conflict_do_nothing()
        .returning(snapshots.c.id, snapshots.c.fetched_at)
        .cte("inserted")
    )
    # Passed as JSON, app id -> rank: psycopg dumps a list element by element in Python.
    listed = (
        func.json_each_text(bindparam("listed", type_=postgresql.JSON))
        .table_valued("key", "value")
        .render_derived(name="listed")
    )
    listed_app_id = cast(listed.c.key, Integer)
    ranked = (
        postgresql.insert(app_ranks)
        .from_select(
            ["app_id", "chart_id", "fetched_at", "rank"],
            select(
                listed_app_id,
                bindparam("chart_id", type_=Integer),
                inserted.c.fetched_at,
                cast(listed.c.value, SmallInteger),
            )
            .select_from(inserted)
            .join(listed, true())  # the one new snapshot, with each of its apps
            .join(apps, and_(apps.c.id == listed_app_id, apps.c.tracked)),
        )
        .on_conflict_do_nothing()
        .cte("ranked")
    )
    fetched = json_recordset("fetches", *fetch_log.c)
    logged = (
        postgresql.insert(fetch_log)
        .from_select([c.name for c in fetch_log.c], select(*fetched.c))
        .on_conflict_do_nothing()
        .cte("logged")
    )
    tracked = _tracked_apps("postgresql").label("tracked")
    return select(inserted.c.id, tracked).add_cte(ranked, logged)


_INSERT_SNAPSHOT_RANKS_AND_LOG = _insert_snapshot_ranks_and_log()
# SQLite, where a statement costs no round trip: the snapshot alone, with the tracked apps.
_INSERT_SNAPSHOT = insert_ignoring_conflicts(snapshots, "sqlite").returning(
    snapshots.c.id, _tracked_apps("sqlite").label("tracked")
)
_CONFIRM = (
    update(snapshots)
    .where(
        snapshots.c.id == bindparam("snapshot_id"),
        snapshots.c.confirmed_at < bindparam("at"),
    )
    .values(confirmed_at=bindparam("at"))
)
_LOG_FETCHES = per_dialect(lambda d: insert_ignoring_conflicts(fetch_log, d))


def write_snapshot(
    connection: Connection,
    dialect: str,
    cache: AppCache,
    claim: PollClaim,
    snapshot: ChartSnapshot,
    *,
    known_latest: Latest | None,
    content_hash: str,
    validators: Validators,
    fetches: Sequence[FetchRecord],
    next_due_at: dt.datetime,
    alert_policy: AlertPolicy,
    now: dt.datetime,
    added_silences: Sequence[StoredSilence],
) -> Written:
    """`known_latest` is LatestSnapshots' entry for the claim, if it has a valid one;
    `added_silences` are the silences added at run time and active now."""
    if snapshot.chart != claim.chart:
        raise ValueError(f"snapshot of {snapshot.chart} recorded under a claim on {claim.chart}")
    success = _last_success(fetches)
    # The fence also takes the lock guarding the tracked-apps read below (derived.py).
    schedule.complete(
        connection,
        claim,
        {
            **_success_values(fetches, validators, next_due_at, fallback_at=snapshot.fetched_at),
            "last_hash": content_hash,
            "last_source": snapshot.source.value,
        },
        statement=_COMPLETE_AND_LOCK[dialect],
    )
    digest = packing.hash_bytes(content_hash)
    latest = known_latest or _read(connection, _LATEST, chart_id=claim.chart_id)
    previous = latest
    if latest is not None and latest.fetched_at > snapshot.fetched_at:  # a late, older fetch
        previous = _read(
            connection, _LATEST_UP_TO, chart_id=claim.chart_id, fetched_at=snapshot.fetched_at
        )
    if previous is not None and (
        previous.fetched_at == snapshot.fetched_at or previous.content_hash == digest
    ):
        _confirm(connection, previous.snapshot_id, snapshot.fetched_at)
        _log_fetches(connection, dialect, claim, fetches, success, unchanged=True)
        return Written(SnapshotWrite(stored=False, snapshot_id=previous.snapshot_id), {}, latest)

    written_apps = app_writes.write_apps(
        connection, dialect, cache, claim.chart.store, snapshot.entries, seen_at=snapshot.fetched_at
    )
    ranking = {entry.rank: written_apps.ids[entry.store_id] for entry in snapshot.entries}
    ranked = packing.pack_ranking(ranking)
    inserted = _insert(
        connection,
        dialect,
        {
            "chart_id": claim.chart_id,
            "fetched_at": snapshot.fetched_at,
            "confirmed_at": snapshot.fetched_at,
            "feed_updated_at": snapshot.feed_updated_at,
            "source": snapshot.source.value,
            "requested_depth": min(snapshot.requested_depth, _SMALLINT_MAX),
            "visible_depth": snapshot.visible_depth,
            "content_hash": digest,
            "ranked_app_ids": ranked,
        },
        listed={app_id: rank for rank, app_id in ranking.items()},
        log_rows=_fetch_rows(claim, fetches, success, unchanged=False),
    )
    if inserted is None:
        # Raced by a writer of the same fetch that committed first: this transaction run
        # again after its connection was lost, the first run's commit having gone through.
        existing = connection.scalar(
            _SNAPSHOT_AT, {"chart_id": claim.chart_id, "fetched_at": snapshot.fetched_at}
        )
        assert existing is not None
        # That writer's completion may be newer than what this process knows: read it again.
        return Written(SnapshotWrite(stored=False, snapshot_id=existing), {}, None)

    snapshot_id, tracked = inserted
    crash_point(CrashPoint.SNAPSHOT_INSERTED)
    before = packing.ranks_of(previous.ranked_app_ids, tracked) if previous else {}
    after = packing.ranks_of(ranked, tracked)
    changes = tuple(
        TrackedRankChange(
            app_id=app_id,
            store_id=tracked[app_id],
            before=before.get(app_id),
            after=after.get(app_id),
        )
        for app_id in sorted(before.keys() | after.keys())
        if before.get(app_id) != after.get(app_id)
    )
    alerts = AlertsWritten()
    if latest is None or snapshot.fetched_at > latest.fetched_at:
        # Only the chart's newest snapshot is news: a late, older fetch alerts nobody.
        alerts, memory = alerting.evaluate_snapshot(
            connection,
            dialect,
            alert_policy,
            alerting.NewSnapshot(
                chart_id=claim.chart_id,
                chart=claim.chart,
                snapshot_id=snapshot_id,
                at=snapshot.fetched_at,
                depth=snapshot.visible_depth,
                requested_depth=snapshot.requested_depth,
                ranked=ranked,
                previous_id=previous.snapshot_id if previous else None,
                previous_ranked=previous.ranked_app_ids if previous else None,
            ),
            tracked,
            now=now,
            known=known_latest.alerts if known_latest is not None else None,
            added_silences=added_silences,
        )
        latest = Latest(snapshot_id, snapshot.fetched_at, digest, ranked, memory)
    result = SnapshotWrite(
        stored=True,
        snapshot_id=snapshot_id,
        new_apps=written_apps.new,
        changes=changes,
        alerts=alerts,
    )
    return Written(result, written_apps.cache, latest)


def _insert(
    connection: Connection,
    dialect: str,
    values: dict[str, Any],
    *,
    listed: dict[int, int],
    log_rows: list[dict[str, Any]],
) -> tuple[int, dict[int, str]] | None:
    """Insert a snapshot (`values`), the derived ranks of the tracked apps among `listed`
    (app id -> rank) and the fetch log. Returns the snapshot's id and the tracked apps (app
    id -> store id), or None when a snapshot of this fetch exists already."""
    if dialect == "postgresql":
        row = connection.execute(
            _INSERT_SNAPSHOT_RANKS_AND_LOG,
            {
                **values,
                "listed": listed,
                "fetches": [json_ready(log_row) for log_row in log_rows],
            },
        ).first()
        return None if row is None else (row.id, _tracked_by_id(row.tracked))
    row = connection.execute(_INSERT_SNAPSHOT, values).first()
    _insert_log(connection, dialect, log_rows)
    if row is None:
        return None
    tracked = _tracked_by_id(row.tracked)
    derived.insert_ranks(
        connection,
        dialect,
        [
            {
                "app_id": app_id,
                "chart_id": values["chart_id"],
                "fetched_at": values["fetched_at"],
                "rank": rank,
            }
            for app_id, rank in sorted(listed.items())
            if app_id in tracked
        ],
    )
    return row.id, tracked


def _tracked_by_id(tracked_json: str | None) -> dict[int, str]:
    return {int(app_id): store_id for app_id, store_id in json.loads(tracked_json or "{}").items()}


def write_unchanged(
    connection: Connection,
    dialect: str,
    claim: PollClaim,
    *,
    known_latest: Latest | None,
    validators: Validators,
    fetches: Sequence[FetchRecord],
    next_due_at: dt.datetime,
) -> Latest | None:
    """Returns the chart's latest snapshot as it now stands, if known."""
    success = _last_success(fetches)
    values = _success_values(fetches, validators, next_due_at, fallback_at=None)
    if success is not None and success.source is not None:
        values["last_source"] = success.source.value
    schedule.complete(connection, claim, values)
    latest = known_latest
    if success is not None:
        latest = latest or _read(connection, _LATEST, chart_id=claim.chart_id)
        if latest is not None:
            _confirm(connection, latest.snapshot_id, success.started_at)
    _log_fetches(connection, dialect, claim, fetches, success, unchanged=True)
    return latest


def write_failure(
    connection: Connection,
    dialect: str,
    claim: PollClaim,
    *,
    fetches: Sequence[FetchRecord],
    next_due_at: dt.datetime,
) -> None:
    last = fetches[-1] if fetches else None
    values: dict[str, Any] = {
        "next_due_at": next_due_at,
        "last_error": _error_text(last) if last is not None else None,
    }
    if fetches:
        values["last_attempt_at"] = max(f.started_at for f in fetches)
    schedule.complete(connection, claim, values, statement=schedule.COMPLETE_FAILED)
    _log_fetches(connection, dialect, claim, fetches, None, unchanged=False)


def _read(connection: Connection, query: Any, **parameters: Any) -> Latest | None:
    row = connection.execute(query, parameters).first()
    if row is None:
        return None
    return Latest(row.id, row.fetched_at, bytes(row.content_hash), bytes(row.ranked_app_ids))


def _last_success(fetches: Sequence[FetchRecord]) -> FetchRecord | None:
    return next((f for f in reversed(fetches) if f.outcome != FetchOutcome.FAILED), None)


def _success_values(
    fetches: Sequence[FetchRecord],
    validators: Validators,
    next_due_at: dt.datetime,
    *,
    fallback_at: dt.datetime | None,
) -> dict[str, Any]:
    success = _last_success(fetches)
    attempted = max((f.started_at for f in fetches), default=fallback_at)
    succeeded = success.started_at if success is not None else fallback_at
    return {
        "next_due_at": next_due_at,
        "etag": validators.etag[:255] if validators.etag else None,
        "last_modified": validators.last_modified[:64] if validators.last_modified else None,
        "last_attempt_at": attempted,
        "last_success_at": succeeded,
        "consecutive_failures": 0,
        "last_error": None,
    }


def _confirm(connection: Connection, snapshot_id: int, at: dt.datetime) -> None:
    connection.execute(_CONFIRM, {"snapshot_id": snapshot_id, "at": at})


def _log_fetches(
    connection: Connection,
    dialect: str,
    claim: PollClaim,
    fetches: Sequence[FetchRecord],
    success: FetchRecord | None,
    *,
    unchanged: bool,
) -> None:
    _insert_log(connection, dialect, _fetch_rows(claim, fetches, success, unchanged=unchanged))


def _insert_log(connection: Connection, dialect: str, rows: list[dict[str, Any]]) -> None:
    if rows:
        connection.execute(_LOG_FETCHES[dialect], rows)


def _fetch_rows(
    claim: PollClaim,
    fetches: Sequence[FetchRecord],
    success: FetchRecord | None,
    *,
    unchanged: bool,
) -> list[dict[str, Any]]:
    """The fetch log rows of a poll; `unchanged`: its successful fetch stored nothing new."""
    if not fetches:
        return []
    poll_started_at = min(fetch.started_at for fetch in fetches)
    rows = []
    for fetch in fetches:
        outcome = fetch.outcome
        if fetch is success and unchanged and outcome == FetchOutcome.CHANGED:
            outcome = FetchOutcome.UNCHANGED
        rows.append(
            {
                "chart_id": claim.chart_id,
                "started_at": fetch.started_at,
                "duration_ms": min(round(fetch.duration_seconds * 1000), _INT_MAX),
                "attempts": min(fetch.attempts, _SMALLINT_MAX),
                "http_status": fetch.http_status,
                "body_bytes": (
                    min(fetch.body_bytes, _INT_MAX) if fetch.body_bytes is not None else None
                ),
                "outcome": outcome.value,
                "recovered": success is not None and outcome == FetchOutcome.FAILED,
                "source": fetch.source.value if fetch.source else None,
                # Only failures keep their URL: a success's is implied by chart and source, and
                # at ~80 bytes a row it would be a third of the log.
                "url": fetch.url if outcome == FetchOutcome.FAILED else None,
                "error_class": fetch.error_class[:64] if fetch.error_class else None,
                "error_message": (fetch.error_message or "")[:_ERROR_MESSAGE_CHARS] or None,
                "poll_started_at": (
                    poll_started_at if fetch.started_at != poll_started_at else None
                ),
                "body_sample": fetch.body_sample,
            }
        )
    return rows


def _error_text(fetch: FetchRecord) -> str:
    text = f"{fetch.error_class or 'error'}: {fetch.error_message or ''}".rstrip(": ")
    return text[:_ERROR_MESSAGE_CHARS]
