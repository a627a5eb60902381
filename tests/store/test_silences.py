"""Silences added at run time: stored, listed, expired, and applied to the events a snapshot
writes; on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy import event

from monitor.alerts.policy import Silence
from monitor.store.engine import Database
from monitor.store.repository import Repository
from monitor.store.tables import alert_events, notifications

from .conftest import CHATGPT, DEEPSEEK, HOUR, T0, US_FREE
from .test_alerting import POLICY, alerting, chart_with, climb, rows, summaries

# alerting() stamps what it writes at this time: silences are active, or not, then.
NOW = T0 + 10 * HOUR
DEEPSEEK_UP_19 = "DeepSeek up 19 to #12 in US Top Free iPhone (was #31)"
MAX_AGE_S = 1.0


def test_silences_are_stored_listed_and_expired(database: Database) -> None:
    repository = Repository(database)
    launch = Silence(
        until=NOW + HOUR,
        apps=frozenset({"DeepSeek", CHATGPT}),
        countries=frozenset({"us"}),
        comment="launch week",
    )
    everything = Silence(until=NOW + 2 * HOUR)
    over = Silence(until=NOW - HOUR, rules=frozenset({"big-move"}))

    ids = [repository.add_silence(one, now=T0) for one in (launch, everything, over)]

    active = repository.silences(active_at=NOW)
    assert [(stored.id, stored.silence) for stored in active] == list(
        zip(ids[:2], [launch, everything], strict=True)
    )
    assert {stored.created_at for stored in active} == {T0}
    assert repository.expire_silence(ids[1], now=NOW) is True
    assert repository.expire_silence(ids[1], now=NOW + HOUR / 2) is False  # expired already
    assert repository.expire_silence(ids[2], now=NOW) is False  # over by itself
    assert repository.expire_silence(999, now=NOW) is False
    assert [stored.id for stored in repository.silences(active_at=NOW)] == ids[:1]
    every = repository.silences(active_at=None)
    assert [(stored.id, stored.expired_at) for stored in every] == [
        (ids[0], None),
        (ids[1], NOW),
        (ids[2], None),
    ]
    # Before it was expired, it was active.
    assert [s.id for s in repository.silences(active_at=NOW - HOUR)] == ids[:2]


def test_an_event_an_active_stored_silence_matches_is_kept_and_not_queued(
    database: Database,
) -> None:
    poller = alerting(database)
    silence = Silence(until=NOW + HOUR, apps=frozenset({"DeepSeek"}), comment="launch week")
    silence_id = poller.repository.add_silence(silence, now=T0)

    climb(poller, [(31, 1), (12, 1)])

    (stored,) = rows(database, alert_events)
    assert stored.summary == DEEPSEEK_UP_19
    assert stored.silenced_by == (
        f"silence until {silence.until.isoformat()}; apps DeepSeek; 'launch week' (id {silence_id})"
    )
    assert rows(database, notifications) == []


def test_silences_that_are_over_expired_or_about_something_else_hold_nothing_back(
    database: Database,
) -> None:
    poller = alerting(database)
    repository = poller.repository
    repository.add_silence(Silence(until=NOW - HOUR), now=T0)  # over before the event
    expired = repository.add_silence(Silence(until=NOW + HOUR), now=T0)
    repository.expire_silence(expired, now=T0 + HOUR)
    for other in (
        Silence(until=NOW + HOUR, apps=frozenset({"ChatGPT"})),
        Silence(until=NOW + HOUR, countries=frozenset({"gb"})),
        Silence(until=NOW + HOUR, rules=frozenset({"top10"})),
    ):
        repository.add_silence(other, now=T0)

    climb(poller, [(31, 1), (12, 1)])

    (stored,) = rows(database, alert_events)
    assert (stored.summary, stored.silenced_by) == (DEEPSEEK_UP_19, None)
    assert [n.recipient for n in rows(database, notifications)] == ["ops@example.com"]


@contextlib.contextmanager
def statements(database: Database) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        seen.append(sql)

    event.listen(database.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(database.engine, "before_cursor_execute", record)


def test_a_silence_another_process_adds_applies_once_the_stored_ones_are_read_again(
    database: Database,
) -> None:
    poller = alerting(database)
    writer = Repository(
        database, alerts=POLICY, clock=lambda: NOW, silences_max_age_seconds=MAX_AGE_S
    )
    poller = dataclasses.replace(poller, repository=writer)
    climb(poller, [(31, 1)])
    with statements(database) as seen:
        for hour, rank in ((1, 12), (2, 30), (3, 11)):
            poller.store(US_FREE, T0 + hour * HOUR, chart_with({DEEPSEEK: rank, CHATGPT: 1}))
    assert len(summaries(database)) == 2
    assert not [sql for sql in seen if "silences" in sql]  # read at most once per max age

    # `silence add`, run while the service runs:
    Repository(database).add_silence(Silence(until=NOW + HOUR), now=NOW)
    time.sleep(MAX_AGE_S * 1.5)
    for hour, rank in ((4, 31), (5, 12)):
        poller.store(US_FREE, T0 + hour * HOUR, chart_with({DEEPSEEK: rank, CHATGPT: 1}))

    silenced = [row.silenced_by is not None for row in rows(database, alert_events)]
    assert silenced == [False, False, True]
    assert len(rows(database, notifications)) == 2
