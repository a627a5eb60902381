"""Silences added at run time (`app-rank-monitor silence add`), beside those of the settings.

A stored silence is a monitor.alerts.policy.Silence with an id, the time it was added and the
time `silence expire` ended it, if it did. It is active at a time before its `until` when it
was not expired by then. The alerts a snapshot brings (store/alerting.py) are checked against
the active ones as a SilenceCache read them, at most a few seconds before.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, or_, select, update

from monitor.alerts.policy import Silence
from monitor.store.tables import silences as silences_table


@dataclasses.dataclass(frozen=True)
class StoredSilence:
    id: int
    created_at: dt.datetime
    silence: Silence
    expired_at: dt.datetime | None

    def describe(self) -> str:
        """What an event it held back records: the silence, and the id `silence expire`
        takes."""
        return f"{self.silence.describe()} (id {self.id})"

    def active_at(self, moment: dt.datetime) -> bool:
        return self.silence.until > moment and (self.expired_at is None or self.expired_at > moment)


class SilenceCache:
    """The stored silences as read at most `max_age_seconds` ago: a silence added or expired
    by `silence add` / `silence expire` (another process) applies to the alerts written from
    that long after. Those of this process apply at once (`forget`)."""

    def __init__(self, max_age_seconds: float) -> None:
        self._max_age = max_age_seconds
        self._read_at: float | None = None
        self._silences: list[StoredSilence] = []
        self._lock = threading.Lock()

    def active(
        self, read: Callable[[], list[StoredSilence]], *, at: dt.datetime
    ) -> list[StoredSilence]:
        """The silences active at `at`; `read` reads the stored ones active now."""
        with self._lock:
            if self._read_at is None or time.monotonic() - self._read_at > self._max_age:
                self._silences = read()
                self._read_at = time.monotonic()
            silences = self._silences
        return [silence for silence in silences if silence.active_at(at)]

    def forget(self) -> None:
        with self._lock:
            self._read_at = None


def add(connection: Connection, silence: Silence, *, now: dt.datetime) -> int:
    silence_id: int = connection.execute(
        silences_table.insert()
        .values(
            created_at=now,
            until=silence.until,
            apps=_text(silence.apps),
            countries=_text(silence.countries),
            rules=_text(silence.rules),
            comment=silence.comment,
        )
        .returning(silences_table.c.id)
    ).scalar_one()
    return silence_id


def stored(connection: Connection, *, active_at: dt.datetime | None) -> list[StoredSilence]:
    """The silences active at `active_at`, or all of them when None; oldest first."""
    query = select(silences_table).order_by(silences_table.c.id)
    if active_at is not None:
        query = query.where(_active(active_at))
    return [_stored(row) for row in connection.execute(query)]


def expire(connection: Connection, silence_id: int, *, now: dt.datetime) -> bool:
    """End the silence now; False when there is no such silence active now."""
    ended = connection.execute(
        update(silences_table)
        .where(silences_table.c.id == silence_id, _active(now))
        .values(expired_at=now)
    )
    return ended.rowcount == 1


def _active(moment: dt.datetime) -> ColumnElement[bool]:
    return and_(
        silences_table.c.until > moment,
        or_(silences_table.c.expired_at.is_(None), silences_table.c.expired_at > moment),
    )


def _text(values: Collection[str]) -> str:
    return json.dumps(sorted(values))


def _stored(row: Any) -> StoredSilence:
    return StoredSilence(
        id=row.id,
        created_at=row.created_at,
        silence=Silence(
            until=row.until,
            apps=frozenset(json.loads(row.apps)),
            countries=frozenset(json.loads(row.countries)),
            rules=frozenset(json.loads(row.rules)),
            comment=row.comment,
        ),
        expired_at=row.expired_at,
    )
