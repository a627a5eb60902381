"""Writing the apps a snapshot lists: cheap when nothing changed, safe beside other writers.

The cache maps (store, store id) to the internal id, a fingerprint of the stored metadata and
the last_seen_at this process wrote, so an app seen before with the same metadata costs no
statement of its own; the apps of a snapshot share one UPDATE of last_seen_at, which skips
apps whose last_seen_at is less than LAST_SEEN_RESOLUTION old (an app listed on 175 charts
would otherwise be rewritten 175 times an hour: PostgreSQL bloat and write time).

New apps are inserted with ON CONFLICT DO NOTHING (another process may insert the same app
at the same moment), and metadata is merged field by field: a feed that leaves a field out
(the v2 feed has no bundle id) never erases what another feed told us, which also keeps two
feeds from flapping a row.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import struct
import threading
from collections.abc import Mapping, Sequence

from sqlalchemy import Connection, Engine, bindparam, func, or_, select, text, update
from sqlalchemy.exc import DBAPIError

from monitor.model import ChartEntry, Store
from monitor.store.sql import among, insert_ignoring_conflicts
from monitor.store.tables import apps

log = logging.getLogger(__name__)

META_FIELDS = ("name", "developer", "developer_id", "bundle_id", "genre_id", "genre_name")
_NEW_FIELDS = tuple(f"new_{field}" for field in META_FIELDS)
_FINGERPRINT = struct.Struct(f"<{len(META_FIELDS)}q")
LAST_SEEN_RESOLUTION = dt.timedelta(minutes=15)

AppKey = tuple[str, str]
Meta = tuple[str | None, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Known:
    """What this process knows of a stored app."""

    app_id: int
    fingerprint: bytes  # a hash per metadata field as stored, 0 for NULL
    last_seen_at: dt.datetime | None
    # hash() of the last feed metadata already merged into `fingerprint`: the common case
    # (the feed says what it said last time) then costs one hash, not a merge.
    merged_meta: int = 0


def entry_meta(entry: ChartEntry) -> Meta:
    """The entry's metadata in META_FIELDS order, cut to the column widths."""
    return (
        entry.name,
        entry.developer,
        _cut(entry.developer_id, 32),
        _cut(entry.bundle_id, 255),
        _cut(entry.genre_id, 16),
        entry.genre_name,
    )


def _cut(value: str | None, width: int) -> str | None:
    return value if value is None or len(value) <= width else value[:width]


def _hashes(meta: Meta) -> tuple[int, ...]:
    # 0 stands for "unknown"; a real hash of 0 only costs one redundant UPDATE.
    return tuple(0 if value is None else hash(value) for value in meta)


def _fingerprint(meta: Meta) -> bytes:
    return _FINGERPRINT.pack(*_hashes(meta))


def _merge_fingerprint(stored: bytes, meta: Meta) -> bytes:
    old = _FINGERPRINT.unpack(stored)
    return _FINGERPRINT.pack(
        *(o if value is None else h for o, value, h in zip(old, meta, _hashes(meta), strict=True))
    )


def _merge(stored: Meta, meta: Meta) -> Meta:
    return tuple(s if value is None else value for s, value in zip(stored, meta, strict=True))


class AppCache:
    """(store, store id) -> what is known of the app, in this process only.

    Bounded by dropping everything when full: a cold cache costs one SELECT per snapshot
    until it is warm again, far simpler than an LRU on this hot path.
    """

    def __init__(self, capacity: int = 250_000) -> None:
        self.capacity = capacity
        self._entries: dict[AppKey, Known] = {}
        self._lock = threading.Lock()

    def get(self, key: AppKey) -> Known | None:
        return self._entries.get(key)

    def update(self, entries: Mapping[AppKey, Known]) -> None:
        with self._lock:
            if len(self._entries) + len(entries) > self.capacity:
                self._entries.clear()
            self._entries.update(entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


@dataclasses.dataclass
class AppWrite:
    """The ids of a snapshot's apps; `cache` is applied by the caller once committed."""

    ids: dict[str, int]
    new: set[int]
    cache: dict[AppKey, Known]


_MERGE_UPDATE = (
    update(apps)
    .where(apps.c.id == bindparam("app_id"))
    .values({f: func.coalesce(bindparam(f"new_{f}"), apps.c[f]) for f in META_FIELDS})
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
    known: dict[str, Known] = {}
    changed: dict[int, Meta] = {}
    missing: dict[str, Meta] = {}
    for entry in entries:
        meta = entry_meta(entry)
        cached = cache.get((store.value, entry.store_id))
        if cached is None:
            missing[entry.store_id] = meta
            continue
        meta_hash = hash(meta)
        if meta_hash != cached.merged_meta:
            merged = _merge_fingerprint(cached.fingerprint, meta)
            if merged != cached.fingerprint:
                changed[cached.app_id] = meta
            cached = dataclasses.replace(cached, fingerprint=merged, merged_meta=meta_hash)
        known[entry.store_id] = cached
    new: set[int] = set()
    if missing:
        found, new = _insert_or_find(
            connection, dialect, store, missing, seen_at=seen_at, changed=changed
        )
        known.update(found)
    if changed:
        connection.execute(
            _MERGE_UPDATE,
            [
                {"app_id": app_id, **dict(zip(_NEW_FIELDS, meta, strict=True))}
                for app_id, meta in sorted(changed.items())
            ],
        )
    stale = seen_at - LAST_SEEN_RESOLUTION
    seen = {
        store_id: app
        for store_id, app in known.items()
        if app.last_seen_at is None or app.last_seen_at < stale
    }
    if seen:
        # The guard keeps a replayed or late older snapshot from moving it backwards.
        connection.execute(
            update(apps)
            .where(
                among(apps.c.id, sorted(app.app_id for app in seen.values()), dialect),
                or_(apps.c.last_seen_at.is_(None), apps.c.last_seen_at < seen_at),
            )
            .values(
                last_seen_at=seen_at,
                first_seen_at=func.coalesce(apps.c.first_seen_at, seen_at),
            )
        )
        for store_id, app in seen.items():
            known[store_id] = dataclasses.replace(app, last_seen_at=seen_at)
    return AppWrite(
        ids={store_id: app.app_id for store_id, app in known.items()},
        new=new,
        cache={(store.value, store_id): app for store_id, app in known.items()},
    )


def _insert_or_find(
    connection: Connection,
    dialect: str,
    store: Store,
    missing: Mapping[str, Meta],
    *,
    seen_at: dt.datetime,
    changed: dict[int, Meta],
) -> tuple[dict[str, Known], set[int]]:
    """Insert the apps not in the cache; read those another writer (or an earlier run of this
    process) stored already, noting in `changed` the ones whose metadata moved."""
    # Sorted, so two writers inserting overlapping sets take the index locks in one order.
    rows = [
        {
            "store": store.value,
            "store_id": store_id,
            **dict(zip(META_FIELDS, meta, strict=True)),
            "first_seen_at": seen_at,
            "last_seen_at": seen_at,
        }
        for store_id, meta in sorted(missing.items())
    ]
    inserted = connection.execute(
        insert_ignoring_conflicts(apps, dialect).returning(apps.c.id, apps.c.store_id), rows
    ).all()
    known = {
        store_id: Known(app_id, _fingerprint(missing[store_id]), seen_at, hash(missing[store_id]))
        for app_id, store_id in inserted
    }
    new = {app.app_id for app in known.values()}
    existing = [store_id for store_id in missing if store_id not in known]
    if existing:
        found = connection.execute(
            select(
                apps.c.id,
                apps.c.store_id,
                apps.c.last_seen_at,
                *(apps.c[field] for field in META_FIELDS),
            ).where(apps.c.store == store.value, among(apps.c.store_id, existing, dialect))
        )
        for row in found:
            stored: Meta = tuple(row[3:])
            merged = _merge(stored, missing[row.store_id])
            if merged != stored:
                changed[row.id] = missing[row.store_id]
            known[row.store_id] = Known(
                row.id, _fingerprint(merged), row.last_seen_at, hash(missing[row.store_id])
            )
    return known, new


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
