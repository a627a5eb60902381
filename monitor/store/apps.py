"""Writing the apps a snapshot lists: cheap when nothing changed, safe beside other writers.

An app's row is rewritten at most once per LAST_SEEN_RESOLUTION: the first sighting after
that long moves last_seen_at and merges the metadata that sighting carried, in one UPDATE;
sightings in between write nothing. An app listed on 175 charts would otherwise be rewritten
175 times an hour, and one whose metadata the feeds disagree on (localized names across
storefronts, a developer name the v2 and legacy feeds spell differently) at every sighting:
PostgreSQL bloat, WAL and write time. So metadata follows the feeds to within the same
resolution as last_seen_at.

The cache maps each store's app ids to the internal id, the metadata as stored and the
last_seen_at this process wrote, so an app seen lately costs a dict lookup and no statement: a
snapshot of such apps writes nothing to `apps` at all.

New apps are inserted with ON CONFLICT DO NOTHING (another process may insert the same app
at the same moment), and metadata is merged field by field: a feed that leaves a field out
(the v2 feed has no bundle id) never erases what another feed told us.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, bindparam, func, or_, select, text, update
from sqlalchemy.exc import DBAPIError

from monitor.model import ChartEntry, Store
from monitor.store.sql import among, insert_ignoring_conflicts, per_dialect
from monitor.store.tables import apps

log = logging.getLogger(__name__)

META_FIELDS = ("name", "developer", "developer_id", "bundle_id", "genre_id", "genre_name")
# The column width of each field that has one (the rest are TEXT).
_WIDTHS = (None, None, 32, 255, 16, None)
LAST_SEEN_RESOLUTION = dt.timedelta(minutes=15)

Meta = tuple[str | None, ...]


class Known(NamedTuple):
    """What this process knows of a stored app."""

    app_id: int
    meta: Meta  # in META_FIELDS order, as stored
    last_seen_at: dt.datetime | None


def entry_meta(entry: ChartEntry) -> Meta:
    """The entry's metadata in META_FIELDS order, cut to the column widths."""
    meta = (
        entry.name,
        entry.developer,
        entry.developer_id,
        entry.bundle_id,
        entry.genre_id,
        entry.genre_name,
    )
    return tuple(
        value if width is None or value is None or len(value) <= width else value[:width]
        for value, width in zip(meta, _WIDTHS, strict=True)
    )


def _merge(stored: Meta, meta: Meta) -> Meta:
    return tuple(s if value is None else value for s, value in zip(stored, meta, strict=True))


class AppCache:
    """Per store, store id -> what is known of the app, in this process only.

    Bounded by dropping everything when full: a cold cache costs one SELECT per snapshot
    until it is warm again, far simpler than an LRU on this hot path.
    """

    def __init__(self, capacity: int = 250_000) -> None:
        self.capacity = capacity
        self._size = 0
        self._stores: dict[str, dict[str, Known]] = {}
        self._lock = threading.Lock()

    def of(self, store: Store) -> Mapping[str, Known]:
        return self._stores.get(store.value, {})

    def update(self, store: Store, entries: Mapping[str, Known]) -> None:
        with self._lock:
            known = self._stores.get(store.value, {})
            # Only new apps grow the cache: most updates refresh apps it holds already.
            growth = sum(1 for store_id in entries if store_id not in known)
            if self._size + growth > self.capacity:
                self._stores = {}
                self._size = 0
                growth = len(entries)
            self._stores.setdefault(store.value, {}).update(entries)
            self._size += growth

    def clear(self) -> None:
        with self._lock:
            self._stores = {}
            self._size = 0


@dataclasses.dataclass
class AppWrite:
    """The ids of a snapshot's apps; `cache` is applied by the caller once committed."""

    ids: dict[str, int]
    new: int
    cache: dict[str, Known]


# Both guards keep a replayed or late older snapshot from moving last_seen_at backwards or
# overwriting newer metadata.
_NOT_SEEN_SINCE = or_(apps.c.last_seen_at.is_(None), apps.c.last_seen_at < bindparam("seen_at"))
_SEEN = {
    "last_seen_at": bindparam("seen_at"),
    "first_seen_at": func.coalesce(apps.c.first_seen_at, bindparam("seen_at")),
}
_NEW_FIELDS = tuple(f"new_{field}" for field in META_FIELDS)
_SEEN_AND_MERGE = (
    update(apps)
    .where(apps.c.id == bindparam("app_id"), _NOT_SEEN_SINCE)
    .values(
        {
            **{
                f: func.coalesce(bindparam(n), apps.c[f])
                for f, n in zip(META_FIELDS, _NEW_FIELDS, strict=True)
            },
            **_SEEN,
        }
    )
)
_SEEN_ONLY = per_dialect(
    lambda dialect: (
        update(apps).where(among(apps.c.id, "app_ids", dialect), _NOT_SEEN_SINCE).values(**_SEEN)
    )
)
_INSERT = per_dialect(
    lambda dialect: insert_ignoring_conflicts(apps, dialect).returning(apps.c.id, apps.c.store_id)
)
_FIND = per_dialect(
    lambda dialect: select(
        apps.c.id, apps.c.store_id, apps.c.last_seen_at, *(apps.c[field] for field in META_FIELDS)
    ).where(apps.c.store == bindparam("store"), among(apps.c.store_id, "store_ids", dialect))
)


def write_apps(
    connection: Connection,
    dialect: str,
    cache: AppCache,
    store: Store,
    entries: Sequence[ChartEntry],
    *,
    seen_at: dt.datetime,
) -> AppWrite:
    cached = cache.of(store)
    stale = seen_at - LAST_SEEN_RESOLUTION
    ids: dict[str, int] = {}
    due: list[tuple[ChartEntry, Known]] = []
    missing: dict[str, ChartEntry] = {}
    for entry in entries:
        app = cached.get(entry.store_id)
        if app is None:
            missing[entry.store_id] = entry
            continue
        ids[entry.store_id] = app.app_id
        if _unseen_since(app, stale):
            due.append((entry, app))
    learned: dict[str, Known] = {}
    new = 0
    if missing:
        inserted, existing = _insert_or_find(connection, dialect, store, missing, seen_at=seen_at)
        new = len(inserted)
        learned.update(inserted)
        learned.update(existing)
        ids.update((store_id, app.app_id) for store_id, app in learned.items())
        due.extend(
            (missing[store_id], app)
            for store_id, app in existing.items()
            if _unseen_since(app, stale)
        )
    if due:
        learned.update(_seen(connection, dialect, due, seen_at=seen_at))
    return AppWrite(ids=ids, new=new, cache=learned)


def _unseen_since(app: Known, moment: dt.datetime) -> bool:
    return app.last_seen_at is None or app.last_seen_at < moment


def _seen(
    connection: Connection,
    dialect: str,
    due: Iterable[tuple[ChartEntry, Known]],
    *,
    seen_at: dt.datetime,
) -> dict[str, Known]:
    """Move last_seen_at of the apps `due` for it, merging the metadata of these sightings
    into the rows where it changes anything."""
    learned: dict[str, Known] = {}
    merges: list[dict[str, Any]] = []
    unchanged: list[int] = []
    # Sorted, so two writers updating overlapping sets take the row locks in one order.
    for entry, app in sorted(due, key=lambda pair: pair[1].app_id):
        meta = entry_meta(entry)
        merged = _merge(app.meta, meta)
        if merged == app.meta:
            unchanged.append(app.app_id)
        else:
            merges.append(
                {
                    "app_id": app.app_id,
                    "seen_at": seen_at,
                    **dict(zip(_NEW_FIELDS, meta, strict=True)),
                }
            )
        learned[entry.store_id] = Known(app.app_id, merged, seen_at)
    if merges:
        connection.execute(_SEEN_AND_MERGE, merges)
    if unchanged:
        connection.execute(_SEEN_ONLY[dialect], {"app_ids": unchanged, "seen_at": seen_at})
    return learned


def _insert_or_find(
    connection: Connection,
    dialect: str,
    store: Store,
    missing: Mapping[str, ChartEntry],
    *,
    seen_at: dt.datetime,
) -> tuple[dict[str, Known], dict[str, Known]]:
    """Insert the apps not in the cache; read those another writer (or an earlier run of this
    process) stored already. Returns what is known of the inserted and of the existing ones."""
    meta = {store_id: entry_meta(entry) for store_id, entry in missing.items()}
    # Sorted, so two writers inserting overlapping sets take the index locks in one order.
    rows = [
        {
            "store": store.value,
            "store_id": store_id,
            **dict(zip(META_FIELDS, meta[store_id], strict=True)),
            "first_seen_at": seen_at,
            "last_seen_at": seen_at,
        }
        for store_id in sorted(missing)
    ]
    inserted = {
        store_id: Known(app_id, meta[store_id], seen_at)
        for app_id, store_id in connection.execute(_INSERT[dialect], rows)
    }
    others = [store_id for store_id in missing if store_id not in inserted]
    existing: dict[str, Known] = {}
    if others:
        found = connection.execute(_FIND[dialect], {"store": store.value, "store_ids": others})
        existing = {row.store_id: Known(row.id, tuple(row[3:]), row.last_seen_at) for row in found}
    return inserted, existing


class GrowthAnalyzer:
    """ANALYZE the apps table on PostgreSQL when this process has grown it by half.

    A first poll round inserts ~100k apps into an empty table; until autovacuum's next
    analyze (a minute or more later) the planner believes the table is empty and every
    snapshot write scans it instead of probing an index.
    """

    MIN_GROWTH = 1_000

    def __init__(self, dialect: str) -> None:
        self._enabled = dialect == "postgresql"
        self._rows_at_analyze = 0
        self._grown = 0
        self._lock = threading.Lock()

    def grew(self, engine: Engine, new_rows: int) -> None:
        if not self._enabled or not new_rows:
            return
        with self._lock:
            self._grown += new_rows
            if self._grown < max(self.MIN_GROWTH, self._rows_at_analyze // 2):
                return
            self._rows_at_analyze += self._grown
            self._grown = 0
        try:
            with engine.begin() as connection:
                connection.execute(text("ANALYZE apps"))
        except DBAPIError as exc:  # statistics are an optimisation: never fail a write for them
            log.warning("could not ANALYZE apps: %s", exc.orig)
