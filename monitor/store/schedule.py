"""The poll schedule: one `poll_tasks` row per chart, handed out under a lease.

A claim bumps the chart's fencing token; every completion updates the row only while the token
still matches, in the same transaction as everything else it writes, so a worker whose lease
expired and was taken over writes nothing (DESIGN.md section 4). On PostgreSQL, claimers skip
rows another claimer has locked (FOR UPDATE SKIP LOCKED); on SQLite the writer's BEGIN
IMMEDIATE serializes claims.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Update,
    and_,
    bindparam,
    case,
    func,
    or_,
    select,
    true,
    type_coerce,
    update,
)

from monitor.errors import LeaseLost
from monitor.model import ChartKey, Collection, Device, PollClaim, SourceName, Store, Validators
from monitor.store.results import ChartHealth, ChartSync, ScheduleStatus
from monitor.store.sql import among, insert_ignoring_conflicts, per_dialect
from monitor.store.tables import UtcDateTime, charts, poll_tasks

_CHART_COLUMNS = (charts.c.store, charts.c.country, charts.c.collection, charts.c.device)


_NATURAL_KEY = ("store", "country", "collection", "device", "genre")


def _natural_key(chart: ChartKey) -> tuple[str, str, str, str, str]:
    return (
        chart.store.value,
        chart.country,
        chart.collection.value,
        chart.device.value,
        chart.genre,
    )


class ChartCatalog:
    """Chart id <-> ChartKey. A chart's id and key never change once written, so this caches
    forever.

    Only ids read from committed rows are cached (a rolled-back insert on SQLite may hand the
    same id to another chart later).
    """

    def __init__(self) -> None:
        self._keys: dict[int, ChartKey] = {}
        self._ids: dict[ChartKey, int] = {}
        self._lock = threading.Lock()

    # Membership is tested key by key: `set - dict.keys()` walks the whole catalog, hashing
    # every ChartKey, on each claim.
    def keys(self, connection: Connection, chart_ids: Iterable[int]) -> dict[int, ChartKey]:
        wanted = set(chart_ids)
        missing = [chart_id for chart_id in wanted if chart_id not in self._keys]
        if missing:
            rows = connection.execute(
                select(charts.c.id, *_CHART_COLUMNS, charts.c.genre).where(charts.c.id.in_(missing))
            )
            self._remember((row.id, _key(row)) for row in rows)
        return {chart_id: self._keys[chart_id] for chart_id in wanted if chart_id in self._keys}

    def ids(self, connection: Connection, keys: Iterable[ChartKey]) -> dict[ChartKey, int]:
        wanted = set(keys)
        if any(key not in self._ids for key in wanted):
            rows = connection.execute(select(charts.c.id, *_CHART_COLUMNS, charts.c.genre))
            self._remember((row.id, key) for row in rows if (key := _key_or_none(row)))
        return {key: self._ids[key] for key in wanted if key in self._ids}

    def _remember(self, pairs: Iterable[tuple[int, ChartKey]]) -> None:
        with self._lock:
            for chart_id, key in pairs:
                self._keys[chart_id] = key
                self._ids[key] = chart_id


def _key(row: Any) -> ChartKey:
    return ChartKey(
        Store(row.store), row.country, Collection(row.collection), Device(row.device), row.genre
    )


def _key_or_none(row: Any) -> ChartKey | None:
    try:
        return _key(row)
    except ValueError:  # a chart of a store or collection this version no longer knows
        return None


def sync_charts(
    connection: Connection, dialect: str, wanted: Sequence[ChartKey], *, now: dt.datetime
) -> ChartSync:
    keys = sorted(set(wanted))
    wanted_ids, added = _scheduled(connection, dialect, keys, now=now, enabled=True)
    reenabled = connection.execute(
        update(poll_tasks)
        .where(poll_tasks.c.chart_id.in_(wanted_ids), poll_tasks.c.enabled != true())
        .values(enabled=True)
    ).rowcount
    disabled = connection.execute(
        update(poll_tasks)
        .where(poll_tasks.c.chart_id.not_in(wanted_ids), poll_tasks.c.enabled == true())
        .values(enabled=False)
    ).rowcount
    return ChartSync(added=len(added), reenabled=reenabled, disabled=disabled, enabled=len(keys))


def add_disabled(
    connection: Connection, dialect: str, wanted: Sequence[ChartKey], *, now: dt.datetime
) -> int:
    """Give the charts of `wanted` missing from the schedule a disabled row (never polled,
    yet claimable by name with `include_disabled`); returns how many were added."""
    _, added = _scheduled(connection, dialect, sorted(set(wanted)), now=now, enabled=False)
    return len(added)


def _scheduled(
    connection: Connection,
    dialect: str,
    keys: Sequence[ChartKey],
    *,
    now: dt.datetime,
    enabled: bool,
) -> tuple[list[int], list[int]]:
    """Insert the charts of `keys` and the poll tasks missing (due `now`, `enabled` or not);
    returns the ids of `keys` and of the tasks added."""
    if keys:
        connection.execute(
            insert_ignoring_conflicts(charts, dialect),
            [dict(zip(_NATURAL_KEY, _natural_key(key), strict=True)) for key in keys],
        )
    rows = connection.execute(select(charts.c.id, *_CHART_COLUMNS, charts.c.genre))
    id_by_key = {tuple(row[1:]): row.id for row in rows}
    wanted_ids = [id_by_key[_natural_key(key)] for key in keys]
    scheduled = set(connection.scalars(select(poll_tasks.c.chart_id)))
    added = [chart_id for chart_id in wanted_ids if chart_id not in scheduled]
    if added:
        connection.execute(
            insert_ignoring_conflicts(poll_tasks, dialect),
            [{"chart_id": chart_id, "next_due_at": now, "enabled": enabled} for chart_id in added],
        )
    return wanted_ids, added


def _named_enabled(dialect: str) -> ColumnElement[bool]:
    enabled = poll_tasks.c.enabled == true()
    # Without statistics SQLite takes an equality on `enabled` for a selective index probe and
    # walks the (enabled, next_due_at) index over every chart; told that nearly every chart is
    # enabled, it reads the few named ones by primary key and sorts them.
    return func.likely(enabled) if dialect == "sqlite" else enabled


def _claim(dialect: str, *, named: bool, include_disabled: bool = False) -> Update:
    """Lease up to :limit claimable charts, oldest due first, in one statement: the due ones,
    or those among :chart_ids (enabled ones only, unless `include_disabled`). Claimers on
    PostgreSQL skip rows another one has locked."""
    lease_free = or_(
        poll_tasks.c.lease_expires_at.is_(None), poll_tasks.c.lease_expires_at <= bindparam("now")
    )
    chosen = (
        [among(poll_tasks.c.chart_id, "chart_ids", dialect)]
        if named
        else [poll_tasks.c.enabled == true(), poll_tasks.c.next_due_at <= bindparam("now")]
    )
    if named and not include_disabled:
        chosen.append(_named_enabled(dialect))
    claimable = (
        select(poll_tasks.c.chart_id)
        .where(*chosen, lease_free)
        .order_by(poll_tasks.c.next_due_at, poll_tasks.c.chart_id)
        .limit(bindparam("limit"))
        .with_for_update(skip_locked=True)
    )
    return (
        update(poll_tasks)
        .where(poll_tasks.c.chart_id.in_(claimable))
        .values(
            lease_owner=bindparam("owner"),
            lease_expires_at=bindparam("expires"),
            fencing_token=poll_tasks.c.fencing_token + 1,
        )
        .returning(
            poll_tasks.c.chart_id,
            poll_tasks.c.fencing_token,
            poll_tasks.c.next_due_at,
            poll_tasks.c.etag,
            poll_tasks.c.last_modified,
            poll_tasks.c.last_hash,
            poll_tasks.c.last_source,
        )
    )


_CLAIM_DUE = per_dialect(lambda dialect: _claim(dialect, named=False))
_CLAIM_NAMED = per_dialect(lambda dialect: _claim(dialect, named=True))
_CLAIM_NAMED_EVEN_DISABLED = per_dialect(
    lambda dialect: _claim(dialect, named=True, include_disabled=True)
)


def claim_due(
    connection: Connection,
    dialect: str,
    catalog: ChartCatalog,
    *,
    owner: str,
    now: dt.datetime,
    lease: dt.timedelta,
    limit: int,
    charts_wanted: Sequence[ChartKey] | None,
    include_disabled: bool = False,
) -> list[PollClaim]:
    if limit <= 0:
        return []
    expires = now + lease
    parameters: dict[str, Any] = {"now": now, "limit": limit, "owner": owner, "expires": expires}
    if charts_wanted is None:
        statement = _CLAIM_DUE[dialect]
    else:
        ids = catalog.ids(connection, charts_wanted)
        if not ids:
            return []
        statement = (_CLAIM_NAMED_EVEN_DISABLED if include_disabled else _CLAIM_NAMED)[dialect]
        parameters["chart_ids"] = sorted(ids.values())
    rows = sorted(
        connection.execute(statement, parameters), key=lambda row: (row.next_due_at, row.chart_id)
    )
    keys = catalog.keys(connection, [row.chart_id for row in rows])
    return [
        PollClaim(
            chart_id=row.chart_id,
            chart=keys[row.chart_id],
            token=row.fencing_token,
            lease_expires_at=expires,
            validators=Validators(etag=row.etag, last_modified=row.last_modified),
            last_hash=row.last_hash,
            last_source=SourceName(row.last_source) if row.last_source else None,
        )
        for row in rows
    ]


_FENCE = (poll_tasks.c.chart_id == bindparam("fenced_chart_id")) & (
    poll_tasks.c.fencing_token == bindparam("fenced_token")
)
# The columns to advance come from the parameters of each call, so one statement serves every
# kind of completion and is compiled once per set of columns.
COMPLETE = update(poll_tasks).where(_FENCE).values(lease_owner=None, lease_expires_at=None)
COMPLETE_FAILED = COMPLETE.values(consecutive_failures=poll_tasks.c.consecutive_failures + 1)


def complete(
    connection: Connection,
    claim: PollClaim,
    values: Mapping[str, Any],
    *,
    statement: Update = COMPLETE,
) -> None:
    """Advance the schedule and give the lease back, only if the claim is still current.

    This is the fencing check: it runs first in every completing transaction (and on
    PostgreSQL locks the row, serializing completions of one chart); zero rows means another
    worker claimed the chart since, and raising here rolls back everything. `statement` is
    COMPLETE, COMPLETE_FAILED (one more consecutive failure) or one of them extended ahead of
    time, e.g. with a RETURNING that takes a lock the rest of the transaction needs.
    """
    _fenced(connection, statement, claim, values, lost="; nothing was written")


_RENEW = update(poll_tasks).where(_FENCE).values(lease_expires_at=bindparam("expires"))


def renew(connection: Connection, claim: PollClaim, expires: dt.datetime) -> PollClaim:
    """The claim with its lease extended to `expires`; raises LeaseLost if it was taken over."""
    _fenced(connection, _RENEW, claim, {"expires": expires}, lost=" before its poll started")
    return dataclasses.replace(claim, lease_expires_at=expires)


def _fenced(
    connection: Connection,
    statement: Update,
    claim: PollClaim,
    values: Mapping[str, Any],
    *,
    lost: str,
) -> None:
    """Run `statement` on the claim's row if the claim is still current, else raise LeaseLost
    (ending with `lost`)."""
    result = connection.execute(
        statement, {"fenced_chart_id": claim.chart_id, "fenced_token": claim.token, **values}
    )
    if result.rowcount != 1:
        raise LeaseLost(
            f"{claim.chart}: the lease (token {claim.token}) was taken over by another worker{lost}"
        )


def release(connection: Connection, claim: PollClaim) -> None:
    connection.execute(COMPLETE, {"fenced_chart_id": claim.chart_id, "fenced_token": claim.token})


def status(connection: Connection, *, now: dt.datetime) -> ScheduleStatus:
    enabled = poll_tasks.c.enabled == true()
    leased = poll_tasks.c.lease_expires_at > now
    lease_free = or_(poll_tasks.c.lease_expires_at.is_(None), poll_tasks.c.lease_expires_at <= now)
    overdue = and_(enabled, poll_tasks.c.next_due_at <= now)

    def count(condition: Any) -> Any:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    row = connection.execute(
        select(
            count(enabled),
            count(and_(overdue, lease_free)),
            count(leased),
            count(and_(enabled, poll_tasks.c.consecutive_failures > 0)),
            type_coerce(func.min(case((overdue, poll_tasks.c.next_due_at))), UtcDateTime),
        )
    ).one()
    return ScheduleStatus(
        enabled=int(row[0]),
        due_now=int(row[1]),
        leased=int(row[2]),
        failing=int(row[3]),
        oldest_due_at=row[4],
    )


def chart_health(connection: Connection, catalog: ChartCatalog) -> list[ChartHealth]:
    """Every enabled chart's last success and failures since, in chart order."""
    rows = connection.execute(
        select(
            poll_tasks.c.chart_id,
            poll_tasks.c.last_success_at,
            poll_tasks.c.consecutive_failures,
            poll_tasks.c.last_error,
        ).where(poll_tasks.c.enabled == true())
    ).all()
    keys = catalog.keys(connection, [row.chart_id for row in rows])
    return sorted(
        (
            ChartHealth(
                chart=keys[row.chart_id],
                last_success_at=row.last_success_at,
                consecutive_failures=row.consecutive_failures,
                last_error=row.last_error,
            )
            for row in rows
            if row.chart_id in keys
        ),
        key=lambda health: health.chart,
    )
