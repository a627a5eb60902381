"""Alerts written with the snapshot that caused them: events, episodes, the outbox, the glitch
hold; on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import select

from monitor.alerts.model import RuleKind
from monitor.alerts.policy import AlertPolicy, Silence
from monitor.alerts.rules import Rule
from monitor.errors import LeaseLost
from monitor.model import ChartKey, Collection, Device, Store, WatchedApp
from monitor.store.engine import Database
from monitor.store.repository import Repository
from monitor.store.tables import alert_episodes, alert_events, alert_holds, notifications

from .conftest import (
    CHATGPT,
    DEEPSEEK,
    HOUR,
    LEASE,
    T0,
    US_FREE,
    Poller,
    claim_one,
    content_hash,
    fetch,
    row_counts,
    snapshot,
)

GB_FREE = ChartKey(Store.APPLE, "gb", Collection.TOP_FREE, Device.IPHONE)
WAIT = dt.timedelta(minutes=1)
POLICY = AlertPolicy(
    rules=(
        Rule("big-move", RuleKind.MOVED, places_up=10, send_resolved=False),
        Rule("top10", RuleKind.ENTERED_TOP, top=10),
        Rule("number-one", RuleKind.ENTERED_TOP, top=1),
        Rule("passed", RuleKind.RIVAL_PASSED, top=10, send_resolved=False),
    ),
    app_names={(Store.APPLE, DEEPSEEK): "DeepSeek", (Store.APPLE, CHATGPT): "ChatGPT"},
    recipients=("ops@example.com",),
    group_wait=WAIT,
)
ALERT_TABLES = [alert_episodes, alert_events, alert_holds, notifications]


def filler(rank: int, tag: str = "") -> str:
    return f"9{tag}{rank:08d}"


def chart_with(ranks: dict[str, int], *, depth: int = 100, tag: str = "") -> list[str | None]:
    """A chart of `depth` filler apps with the given apps at the given ranks."""
    by_rank = {rank: store_id for store_id, rank in ranks.items()}
    return [by_rank.get(rank, filler(rank, tag)) for rank in range(1, depth + 1)]


def alerting(database: Database, policy: AlertPolicy = POLICY) -> Poller:
    repository = Repository(database, alerts=policy, clock=lambda: T0 + 10 * HOUR)
    repository.sync_charts([US_FREE, GB_FREE], now=T0)
    repository.sync_watchlist(
        [WatchedApp(Store.APPLE, DEEPSEEK, "DeepSeek"), WatchedApp(Store.APPLE, CHATGPT, "ChatGPT")]
    )
    return Poller(repository, database)


def rows(database: Database, table: Any) -> list[Any]:
    with database.engine.connect() as connection:
        return list(connection.execute(select(table).order_by(*table.primary_key.columns)))


def summaries(database: Database) -> list[str]:
    return [row.summary for row in rows(database, alert_events)]


def climb(poller: Poller, ranks: Sequence[tuple[int, int]]) -> list[Any]:
    return [
        poller.store(US_FREE, T0 + index * HOUR, chart_with({DEEPSEEK: ds, CHATGPT: gpt}))
        for index, (ds, gpt) in enumerate(ranks)
    ]


def test_each_snapshot_stores_its_events_and_queues_a_notification_per_recipient(
    database: Database,
) -> None:
    poller = alerting(database)

    writes = climb(poller, [(31, 1), (12, 1), (4, 1), (1, 2)])

    assert [len(write.alerts.events) for write in writes] == [0, 1, 1, 3]
    assert summaries(database) == [
        "DeepSeek up 19 to #12 in US Top Free iPhone (was #31)",
        "DeepSeek in the top 10 of US Top Free iPhone at #4 (was #12)",
        "ChatGPT no longer #1 in US Top Free iPhone (now #2)",
        "DeepSeek #1 in US Top Free iPhone (was #4)",
        "DeepSeek passed ChatGPT in US Top Free iPhone: #1 vs #2",
    ]
    last = rows(database, alert_events)[-1]
    assert (last.rank, last.previous_rank, last.depth) == (1, 4, 100)
    assert json.loads(last.facts)["rival"] == "ChatGPT"
    queued = rows(database, notifications)
    assert [(n.channel, n.recipient, n.state) for n in queued] == [
        ("email", "ops@example.com", "pending")
    ] * 5
    assert {n.not_before for n in queued} == {T0 + 10 * HOUR + WAIT}
    firing = {(row.rule, row.firing) for row in rows(database, alert_episodes)}
    assert firing == {("top10", True), ("number-one", True), ("passed", True)}


def test_a_window_rule_compares_with_the_snapshot_as_of_the_window_before(
    database: Database,
) -> None:
    rule = Rule("surge", RuleKind.MOVED, places_up=20, window=2 * HOUR, send_resolved=False)
    poller = alerting(database, dataclasses.replace(POLICY, rules=(rule,)))

    # At 3.25h the window reaches back to 1.25h: the ranking then is the 1h one (#25), not
    # the 1.5h one (#18, which would be a move of 14). At 2h it is 0h's: up 19, not enough.
    at = [T0, T0 + HOUR, T0 + 1.5 * HOUR, T0 + 2 * HOUR, T0 + 3.25 * HOUR]
    writes = [
        poller.store(US_FREE, moment, chart_with({DEEPSEEK: rank}))
        for moment, rank in zip(at, [31, 25, 18, 12, 4], strict=True)
    ]

    assert [[e.summary for e in write.alerts.events] for write in writes] == [
        [],
        [],
        [],
        [],
        ["DeepSeek up 21 to #4 in US Top Free iPhone within 2h (was #25)"],
    ]


def test_a_poll_whose_lease_was_lost_writes_no_alerts_either(database: Database) -> None:
    poller = alerting(database)
    climb(poller, [(31, 1)])
    stale = claim_one(poller.repository, US_FREE, T0 + HOUR, owner="paused")
    claim_one(poller.repository, US_FREE, T0 + HOUR + LEASE, owner="successor")
    value = snapshot(US_FREE, T0 + HOUR, chart_with({DEEPSEEK: 1, CHATGPT: 2}))
    before = row_counts(database, ALERT_TABLES)

    with pytest.raises(LeaseLost):
        poller.repository.record_snapshot(
            stale,
            value,
            content_hash=content_hash(value),
            validators=stale.validators,
            fetches=[fetch(US_FREE, T0 + HOUR)],
            next_due_at=T0 + 2 * HOUR,
        )

    assert row_counts(database, ALERT_TABLES) == before


def test_a_silenced_event_is_kept_but_not_queued(database: Database) -> None:
    silence = Silence(until=T0 + 24 * HOUR, apps=frozenset({"DeepSeek"}), comment="launch week")
    poller = alerting(database, dataclasses.replace(POLICY, silences=(silence,)))

    climb(poller, [(31, 1), (12, 1)])

    (event,) = rows(database, alert_events)
    assert (
        event.silenced_by
        == f"silence until {silence.until.isoformat()}; apps DeepSeek; 'launch week'"
    )
    assert rows(database, notifications) == []


def test_a_glitch_is_held_back_and_a_reverting_snapshot_alerts_nothing(database: Database) -> None:
    poller = alerting(database)
    climb(poller, [(31, 1)])

    # Another chart entirely, with DeepSeek at #1 in it: a feed fault, not news.
    glitch = poller.store(US_FREE, T0 + HOUR, chart_with({DEEPSEEK: 1, CHATGPT: 50}, tag="x"))
    reverted = poller.store(US_FREE, T0 + 2 * HOUR, chart_with({DEEPSEEK: 30, CHATGPT: 1}))

    assert glitch.alerts.held == (
        "100 of 100 entries changed at once (98 left the chart, 2 moved more than 10 places)"
    )
    assert glitch.alerts.events == ()
    assert reverted.alerts.held is None
    assert summaries(database) == []
    assert rows(database, alert_holds) == []


def test_a_glitch_confirmed_by_the_next_snapshot_alerts_against_the_snapshot_before_it(
    database: Database,
) -> None:
    poller = alerting(database)
    climb(poller, [(31, 1)])

    held = poller.store(US_FREE, T0 + HOUR, chart_with({DEEPSEEK: 1, CHATGPT: 50}, tag="x"))
    (hold,) = rows(database, alert_holds)
    confirmed = poller.store(
        US_FREE, T0 + 2 * HOUR, chart_with({DEEPSEEK: 1, CHATGPT: 49}, tag="x")
    )

    assert held.alerts.held is not None
    assert hold.held_snapshot_id == held.snapshot_id
    assert [event.summary for event in confirmed.alerts.events] == [
        "DeepSeek up 30 to #1 in US Top Free iPhone (was #31)",
        "ChatGPT out of the top 10 of US Top Free iPhone (now #49)",
        "DeepSeek in the top 10 of US Top Free iPhone at #1 (was #31)",
        "ChatGPT no longer #1 in US Top Free iPhone (now #49)",
        "DeepSeek #1 in US Top Free iPhone (was #31)",
        "DeepSeek passed ChatGPT in US Top Free iPhone: #1 vs #49",
    ]
    assert rows(database, alert_holds) == []


def test_a_late_older_snapshot_alerts_nobody(database: Database) -> None:
    poller = alerting(database)
    climb(poller, [(31, 1), (30, 1)])

    late = poller.store(US_FREE, T0 + HOUR / 2, chart_with({DEEPSEEK: 1, CHATGPT: 2}))

    assert late.stored
    assert late.alerts.events == ()
    assert summaries(database) == []


def test_breadth_counts_the_latest_snapshot_of_every_country(database: Database) -> None:
    policy = dataclasses.replace(
        POLICY, rules=(Rule("breadth", RuleKind.BREADTH, top=10, countries_needed=2),)
    )
    poller = alerting(database, policy)
    poller.store(US_FREE, T0, chart_with({DEEPSEEK: 31}))
    poller.store(GB_FREE, T0, chart_with({DEEPSEEK: 5}, tag="g"))

    crossed = poller.store(US_FREE, T0 + HOUR, chart_with({DEEPSEEK: 8}))
    # Within the top 10 here: no country count changed, nothing to say.
    within = poller.store(US_FREE, T0 + 2 * HOUR, chart_with({DEEPSEEK: 7}))
    gb_falls = poller.store(GB_FREE, T0 + HOUR, chart_with({DEEPSEEK: 40}, tag="g"))

    assert [e.summary for e in crossed.alerts.events] == [
        "DeepSeek in the top 10 in 2 countries (Top Free iPhone): GB, US"
    ]
    assert within.alerts.events == ()
    assert [e.summary for e in gb_falls.alerts.events] == [
        "DeepSeek in the top 10 in fewer than 2 countries (Top Free iPhone): now 1"
    ]
    assert rows(database, alert_episodes) == []


def test_breadth_counts_every_polled_country_of_the_kind_and_only_those(
    database: Database,
) -> None:
    policy = dataclasses.replace(
        POLICY, rules=(Rule("breadth", RuleKind.BREADTH, top=10, countries_needed=2),)
    )
    poller = alerting(database, policy)
    de_free, fr_free, jp_free = (
        dataclasses.replace(US_FREE, country=country) for country in ("de", "fr", "jp")
    )
    it_paid = ChartKey(Store.APPLE, "it", Collection.TOP_PAID, Device.IPHONE)
    poller.repository.sync_charts([US_FREE, GB_FREE, de_free, fr_free, it_paid], now=T0)
    poller.store(GB_FREE, T0, chart_with({DEEPSEEK: 3}, tag="g"))
    poller.store(GB_FREE, T0 + HOUR, chart_with({DEEPSEEK: 4}, tag="g"))  # the latest counts
    poller.store(de_free, T0, chart_with({}, tag="d"))  # lists no tracked app
    poller.store(it_paid, T0, chart_with({DEEPSEEK: 1}, tag="p"))  # another kind of chart
    poller.store(US_FREE, T0, chart_with({DEEPSEEK: 31}))
    # fr is scheduled but was never polled: not a watched country yet. jp is not scheduled.
    poller.repository.sync_charts([US_FREE, GB_FREE, de_free, fr_free, it_paid, jp_free], now=T0)
    poller.store(jp_free, T0, chart_with({DEEPSEEK: 2}, tag="j"))
    poller.repository.sync_charts([US_FREE, GB_FREE, de_free, fr_free, it_paid], now=T0)

    crossed = poller.store(US_FREE, T0 + HOUR, chart_with({DEEPSEEK: 9}))

    [event] = crossed.alerts.events
    assert event.summary == "DeepSeek in the top 10 in 2 countries (Top Free iPhone): GB, US"
    assert event.facts["country_count"] == "2"
    assert event.facts["watched_countries"] == "3"  # US, GB, DE


def test_without_rules_nothing_about_alerts_is_read_or_written(database: Database) -> None:
    poller = alerting(database, AlertPolicy())

    climb(poller, [(31, 1), (1, 2)])

    assert row_counts(database, ALERT_TABLES) == dict.fromkeys(
        (table.name for table in ALERT_TABLES), 0
    )


def test_replicas_taking_turns_on_a_chart_continue_each_others_episodes(
    database: Database,
) -> None:
    """Each process keeps the alert state it wrote; one that another process wrote after
    it must be read back, or it would alert on a stale baseline."""
    first = alerting(database)
    second = Poller(Repository(database, alerts=POLICY, clock=lambda: T0 + 10 * HOUR), database)

    writes = [
        first.store(US_FREE, T0, chart_with({DEEPSEEK: 31, CHATGPT: 1})),
        first.store(US_FREE, T0 + HOUR, chart_with({DEEPSEEK: 12, CHATGPT: 1})),
        second.store(US_FREE, T0 + 2 * HOUR, chart_with({DEEPSEEK: 4, CHATGPT: 1})),
        first.store(US_FREE, T0 + 3 * HOUR, chart_with({DEEPSEEK: 1, CHATGPT: 2})),
        second.store(US_FREE, T0 + 4 * HOUR, chart_with({DEEPSEEK: 12, CHATGPT: 1})),
    ]

    assert [[event.summary for event in write.alerts.events] for write in writes] == [
        [],
        ["DeepSeek up 19 to #12 in US Top Free iPhone (was #31)"],
        ["DeepSeek in the top 10 of US Top Free iPhone at #4 (was #12)"],
        [
            "ChatGPT no longer #1 in US Top Free iPhone (now #2)",
            "DeepSeek #1 in US Top Free iPhone (was #4)",
            "DeepSeek passed ChatGPT in US Top Free iPhone: #1 vs #2",
        ],
        [
            "DeepSeek out of the top 10 of US Top Free iPhone (now #12)",
            "ChatGPT #1 in US Top Free iPhone (was #2)",
            "DeepSeek no longer #1 in US Top Free iPhone (now #12)",
            "ChatGPT passed DeepSeek in US Top Free iPhone: #1 vs #12",
        ],
    ]


def test_a_glitch_held_by_one_replica_is_decided_by_the_next_one(database: Database) -> None:
    first = alerting(database)
    second = Poller(Repository(database, alerts=POLICY, clock=lambda: T0 + 10 * HOUR), database)
    first.store(US_FREE, T0, chart_with({DEEPSEEK: 31, CHATGPT: 1}))
    held = first.store(US_FREE, T0 + HOUR, chart_with({DEEPSEEK: 1, CHATGPT: 50}, tag="x"))

    reverted = second.store(US_FREE, T0 + 2 * HOUR, chart_with({DEEPSEEK: 30, CHATGPT: 1}))

    assert held.alerts.held is not None
    assert (reverted.alerts.held, reverted.alerts.events) == (None, ())
    assert rows(database, alert_holds) == []
