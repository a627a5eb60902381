"""Derived data: `app_ranks`, one row per (tracked app, snapshot listing it).

Snapshot writes add rows for the apps tracked at that moment; the watchlist backfill and the
rebuild derive the same rows from stored snapshots with the same function, so either way the
table holds exactly what the snapshots say.

Race on PostgreSQL: a snapshot writer reads "which apps are tracked" while `sync_watchlist`
marks new ones and then backfills from the snapshots committed so far. Writers hold a shared
advisory lock from before that read to their commit and the watchlist change takes it
exclusively, so each snapshot is either written after the mark (and derives its own rows) or
committed before the backfill scans it. Writers take the lock in the first statement of their
transaction (`holding_shared`): no round trip of its own, and no apps row locked before it
(the watchlist change, holding it exclusively, updates apps rows).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Update, delete, false, func, select, true, update

from monitor.model import WatchedApp
from monitor.store import packing
from monitor.store.results import WatchlistSync
from monitor.store.sql import in_transaction, insert_ignoring_conflicts, per_dialect, reading
from monitor.store.tables import app_ranks, apps, snapshots

Progress = Callable[[int, int], None]

# Any 64-bit number unique within this schema; "apprank" in ASCII.
DERIVED_LOCK_KEY = 0x61707072616E6B
SNAPSHOTS_PER_BATCH = 2_000


def holding_shared(statement: Update, dialect: str) -> Update:
    """`statement`, which must return exactly one row, also taking the shared lock on
    PostgreSQL (a RETURNING expression is evaluated per row, and only if the row matched)."""
    if dialect == "postgresql":
        return statement.returning(func.pg_advisory_xact_lock_shared(DERIVED_LOCK_KEY))
    return statement


def hold_exclusive(connection: Connection, dialect: str) -> None:
    if dialect == "postgresql":
        connection.execute(select(func.pg_advisory_xact_lock(DERIVED_LOCK_KEY)))


# One statement whatever the row count, run as an executemany: SQLAlchemy batches the rows
# into multi-row VALUES itself ("insertmanyvalues") and the compiled form is reused. Counted
# from RETURNING: psycopg reports no rowcount for a multi-row VALUES insert.
_INSERT_RANKS = per_dialect(
    lambda dialect: insert_ignoring_conflicts(app_ranks, dialect).returning(app_ranks.c.app_id)
)


def insert_ranks(connection: Connection, dialect: str, rows: Sequence[dict[str, Any]]) -> int:
    if not rows:
        return 0
    return len(connection.execute(_INSERT_RANKS[dialect], rows).all())


def sync_watchlist(
    engine: Engine, dialect: str, watched: Sequence[WatchedApp], progress: Progress | None
) -> WatchlistSync:
    def mark(connection: Connection) -> tuple[WatchlistSync, set[int]]:
        hold_exclusive(connection, dialect)
        created, ids = _ensure_apps(connection, dialect, watched)
        newly = set(
            connection.scalars(
                select(apps.c.id).where(apps.c.id.in_(ids), apps.c.tracked == false())
            )
        )
        if newly:
            connection.execute(update(apps).where(apps.c.id.in_(newly)).values(tracked=True))
        dropped = set(
            connection.scalars(
                select(apps.c.id).where(apps.c.tracked == true(), apps.c.id.not_in(ids))
            )
        )
        if dropped:
            # An untracked app's history is computed from snapshots; stale rows would lie.
            connection.execute(update(apps).where(apps.c.id.in_(dropped)).values(tracked=False))
            connection.execute(delete(app_ranks).where(app_ranks.c.app_id.in_(dropped)))
        summary = WatchlistSync(
            tracked=len(ids),
            added=len(newly) + len(created),
            created=len(created),
            untracked=len(dropped),
            backfilled=0,
        )
        return summary, newly

    summary, newly = in_transaction(engine, mark)
    # Apps created just now are in no stored snapshot: nothing to backfill for them.
    backfilled = derive(engine, dialect, newly, progress, replace=False) if newly else 0
    return WatchlistSync(
        tracked=summary.tracked,
        added=summary.added,
        created=summary.created,
        untracked=summary.untracked,
        backfilled=backfilled,
    )


def rebuild(engine: Engine, dialect: str, progress: Progress | None) -> int:
    def prepare(connection: Connection) -> set[int]:
        hold_exclusive(connection, dialect)
        tracked = set(connection.scalars(select(apps.c.id).where(apps.c.tracked == true())))
        connection.execute(delete(app_ranks).where(app_ranks.c.app_id.not_in(tracked)))
        return tracked

    tracked = in_transaction(engine, prepare)
    return derive(engine, dialect, tracked, progress, replace=True)


def derive(
    engine: Engine,
    dialect: str,
    app_ids: set[int],
    progress: Progress | None,
    *,
    replace: bool,
) -> int:
    """Derive `app_ranks` for `app_ids` from every stored snapshot, batch by batch.

    With `replace`, each batch first deletes the rows it recomputes, in the same transaction:
    readers never see a snapshot without its ranks, as a drop-everything rebuild would show.
    """
    total = reading(engine, lambda c: c.scalar(select(func.count()).select_from(snapshots)))
    done = written = 0
    after = 0
    while True:

        def batch(connection: Connection, after: int = after) -> tuple[int, int, int]:
            rows = connection.execute(
                select(
                    snapshots.c.id,
                    snapshots.c.chart_id,
                    snapshots.c.fetched_at,
                    snapshots.c.ranked_app_ids,
                )
                .where(snapshots.c.id > after)
                .order_by(snapshots.c.id)
                .limit(SNAPSHOTS_PER_BATCH)
            ).all()
            if not rows:
                return 0, after, 0
            if replace and app_ids:
                connection.execute(
                    delete(app_ranks).where(
                        app_ranks.c.app_id.in_(app_ids),
                        app_ranks.c.chart_id.in_({row.chart_id for row in rows}),
                        app_ranks.c.fetched_at.in_({row.fetched_at for row in rows}),
                    )
                )
            derived = list(_ranks(rows, app_ids))
            return len(rows), rows[-1].id, insert_ranks(connection, dialect, derived)

        count, after, inserted = in_transaction(engine, batch)
        if not count:
            return written
        done += count
        written += inserted
        if progress is not None:
            progress(done, max(total or 0, done))


def _ranks(rows: Iterable[Any], app_ids: set[int]) -> Iterable[dict[str, Any]]:
    for row in rows:
        for app_id, rank in sorted(packing.ranks_of(row.ranked_app_ids, app_ids).items()):
            yield {
                "app_id": app_id,
                "chart_id": row.chart_id,
                "fetched_at": row.fetched_at,
                "rank": rank,
            }


def _ensure_apps(
    connection: Connection, dialect: str, watched: Sequence[WatchedApp]
) -> tuple[set[int], set[int]]:
    """Create rows for watched apps never seen yet; (created ids, all watched ids)."""
    by_key = {(app.store.value, app.store_id): app for app in watched}
    created: set[int] = set()
    ids: set[int] = set()
    for store, group in itertools.groupby(sorted(by_key), key=lambda key: key[0]):
        store_ids = [store_id for _, store_id in group]
        rows = [
            {
                "store": store,
                "store_id": store_id,
                "name": by_key[(store, store_id)].name,
                "bundle_id": by_key[(store, store_id)].bundle_id,
                "tracked": True,
            }
            for store_id in store_ids
        ]
        created.update(
            connection.scalars(insert_ignoring_conflicts(apps, dialect).returning(apps.c.id), rows)
        )
        ids.update(
            connection.scalars(
                select(apps.c.id).where(apps.c.store == store, apps.c.store_id.in_(store_ids))
            )
        )
    return created, ids
