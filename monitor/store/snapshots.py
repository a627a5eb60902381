"""Completing a poll: the snapshot, derived ranks, fetch log and schedule in one transaction.

Every path starts with the fenced schedule update (schedule.complete), so a worker that lost
its lease is stopped before it writes anything. Content equal to the previous snapshot writes
no snapshot: the previous one's `confirmed_at` moves forward instead.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, select, update

from monitor.model import ChartSnapshot, FetchOutcome, FetchRecord, PollClaim, Validators
from monitor.store import apps as app_writes
from monitor.store import derived, packing, schedule
from monitor.store.apps import AppCache, AppKey, Known
from monitor.store.results import SnapshotWrite, TrackedRankChange
from monitor.store.sql import insert_ignoring_conflicts
from monitor.store.tables import apps, fetch_log, poll_tasks, snapshots

_ERROR_MESSAGE_CHARS = 2_000
_SMALLINT_MAX = 32_767
_INT_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Written:
    result: SnapshotWrite
    cache: dict[AppKey, Known]


def write_snapshot(
    connection: Connection,
    dialect: str,
    cache: AppCache,
    claim: PollClaim,
    snapshot: ChartSnapshot,
    *,
    content_hash: str,
    validators: Validators,
    fetches: Sequence[FetchRecord],
    next_due_at: dt.datetime,
) -> Written:
    if snapshot.chart != claim.chart:
        raise ValueError(f"snapshot of {snapshot.chart} recorded under a claim on {claim.chart}")
    success = _last_success(fetches)
    schedule.complete(
        connection,
        claim,
        {
            **_success_values(fetches, validators, next_due_at, fallback_at=snapshot.fetched_at),
            "last_hash": content_hash,
            "last_source": snapshot.source.value,
        },
    )
    digest = packing.hash_bytes(content_hash)
    previous = connection.execute(
        select(
            snapshots.c.id,
            snapshots.c.fetched_at,
            snapshots.c.content_hash,
            snapshots.c.ranked_app_ids,
        )
        .where(
            snapshots.c.chart_id == claim.chart_id,
            snapshots.c.fetched_at <= snapshot.fetched_at,
        )
        .order_by(snapshots.c.fetched_at.desc())
        .limit(1)
    ).first()
    if previous is not None and (
        previous.fetched_at == snapshot.fetched_at or bytes(previous.content_hash) == digest
    ):
        _confirm(connection, previous.id, snapshot.fetched_at)
        _log_fetches(connection, dialect, claim, fetches, success, unchanged=True)
        return Written(SnapshotWrite(stored=False, snapshot_id=previous.id), {})

    written_apps = app_writes.write_apps(
        connection, dialect, cache, claim.chart.store, snapshot.entries, seen_at=snapshot.fetched_at
    )
    ranking = {entry.rank: written_apps.ids[entry.store_id] for entry in snapshot.entries}
    snapshot_id = connection.execute(
        insert_ignoring_conflicts(snapshots, dialect).returning(snapshots.c.id),
        {
            "chart_id": claim.chart_id,
            "fetched_at": snapshot.fetched_at,
            "confirmed_at": snapshot.fetched_at,
            "feed_updated_at": snapshot.feed_updated_at,
            "source": snapshot.source.value,
            "requested_depth": min(snapshot.requested_depth, _SMALLINT_MAX),
            "visible_depth": snapshot.visible_depth,
            "content_hash": digest,
            "ranked_app_ids": packing.pack_ranking(ranking),
        },
    ).scalar()
    if snapshot_id is None:  # raced by a writer of the same fetch that committed first
        existing = connection.scalar(
            select(snapshots.c.id).where(
                snapshots.c.chart_id == claim.chart_id,
                snapshots.c.fetched_at == snapshot.fetched_at,
            )
        )
        assert existing is not None
        _log_fetches(connection, dialect, claim, fetches, success, unchanged=True)
        return Written(SnapshotWrite(stored=False, snapshot_id=existing), {})

    before = packing.unpack_ranking(previous.ranked_app_ids) if previous is not None else {}
    rank_before = {app_id: rank for rank, app_id in before.items()}
    rank_after = {app_id: rank for rank, app_id in ranking.items()}
    derived.hold_shared(connection, dialect)
    tracked = _tracked(connection, rank_before.keys() | rank_after.keys())
    if tracked:
        derived.insert_ranks(
            connection,
            dialect,
            [
                {
                    "app_id": app_id,
                    "chart_id": claim.chart_id,
                    "snapshot_id": snapshot_id,
                    "rank": rank_after[app_id],
                }
                for app_id in sorted(tracked)
                if app_id in rank_after
            ],
        )
    changes = tuple(
        TrackedRankChange(
            app_id=app_id,
            store_id=tracked[app_id],
            before=rank_before.get(app_id),
            after=rank_after.get(app_id),
        )
        for app_id in sorted(tracked)
        if rank_before.get(app_id) != rank_after.get(app_id)
    )
    _log_fetches(connection, dialect, claim, fetches, success, unchanged=False)
    result = SnapshotWrite(
        stored=True, snapshot_id=snapshot_id, new_apps=len(written_apps.new), changes=changes
    )
    return Written(result, written_apps.cache)


def write_unchanged(
    connection: Connection,
    dialect: str,
    claim: PollClaim,
    *,
    validators: Validators,
    fetches: Sequence[FetchRecord],
    next_due_at: dt.datetime,
) -> None:
    success = _last_success(fetches)
    values = _success_values(fetches, validators, next_due_at, fallback_at=None)
    if success is not None and success.source is not None:
        values["last_source"] = success.source.value
    schedule.complete(connection, claim, values)
    if success is not None:
        latest = connection.scalar(
            select(snapshots.c.id)
            .where(snapshots.c.chart_id == claim.chart_id)
            .order_by(snapshots.c.fetched_at.desc())
            .limit(1)
        )
        if latest is not None:
            _confirm(connection, latest, success.started_at)
    _log_fetches(connection, dialect, claim, fetches, success, unchanged=True)


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
        "consecutive_failures": poll_tasks.c.consecutive_failures + 1,
        "last_error": _error_text(last) if last is not None else None,
    }
    if fetches:
        values["last_attempt_at"] = max(f.started_at for f in fetches)
    schedule.complete(connection, claim, values)
    _log_fetches(connection, dialect, claim, fetches, None, unchanged=False)


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
    connection.execute(
        update(snapshots)
        .where(snapshots.c.id == snapshot_id, snapshots.c.confirmed_at < at)
        .values(confirmed_at=at)
    )


def _tracked(connection: Connection, app_ids: set[int]) -> dict[int, str]:
    """The tracked ones among `app_ids`, read in this transaction: another process may have
    changed the watchlist since this one started. Reading all tracked apps is one probe of a
    small partial index; an IN list of the snapshot's apps would be a plan over the table."""
    if not app_ids:
        return {}
    rows = connection.execute(select(apps.c.id, apps.c.store_id).where(apps.c.tracked))
    return {row.id: row.store_id for row in rows if row.id in app_ids}


def _log_fetches(
    connection: Connection,
    dialect: str,
    claim: PollClaim,
    fetches: Sequence[FetchRecord],
    success: FetchRecord | None,
    *,
    unchanged: bool,
) -> None:
    if not fetches:
        return
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
            }
        )
    connection.execute(insert_ignoring_conflicts(fetch_log, dialect), rows)


def _error_text(fetch: FetchRecord) -> str:
    text = f"{fetch.error_class or 'error'}: {fetch.error_message or ''}".rstrip(": ")
    return text[:_ERROR_MESSAGE_CHARS]
