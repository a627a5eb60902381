"""The movers query on both backends: each chart's latest snapshot against the one as of the
window's start, for tracked apps, written through the real write path."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from monitor.model import Store, WatchedApp
from monitor.store.movers import Movement, Mover
from monitor.store.repository import Repository
from tests.store.conftest import CHATGPT, DEEPSEEK, HOUR, JP_FREE, T0, US_FREE, US_PAID, Poller

CLAUDE = "6473753684"
GEMINI = "6477489729"
COPILOT = "6472538445"
UNTRACKED = "1000000001"


def fillers(store_ids: dict[int, str], depth: int = 12) -> list[str | None]:
    return [store_ids.get(rank, f"9{rank:09d}") for rank in range(1, depth + 1)]


def track(repository: Repository) -> None:
    repository.sync_watchlist(
        [
            WatchedApp(Store.APPLE, store_id, name)
            for store_id, name in (
                (DEEPSEEK, "DeepSeek"),
                (CHATGPT, "ChatGPT"),
                (CLAUDE, "Claude"),
                (GEMINI, "Gemini"),
                (COPILOT, "Copilot"),
            )
        ]
    )


def summary(movers: Sequence[Mover]) -> list[tuple[str, str, str, int]]:
    return [(m.store_id, m.chart.country, m.movement.value, m.places) for m in movers]


def test_rises_falls_entries_and_exits_come_biggest_first(poller: Poller) -> None:
    repository = poller.repository
    track(repository)
    before = {1: CHATGPT, 3: CLAUDE, 5: GEMINI, 8: DEEPSEEK, 2: UNTRACKED}
    poller.store(US_FREE, T0, fillers(before))
    after = {1: DEEPSEEK, 2: CHATGPT, 3: CLAUDE, 4: COPILOT, 9: UNTRACKED}
    poller.store(US_FREE, T0 + 10 * HOUR, fillers(after))

    movers = repository.movers(now=T0 + 12 * HOUR, window=11 * HOUR)

    assert [(m.store_id, m.movement, m.places, m.rank, m.previous_rank) for m in movers] == [
        (COPILOT, Movement.ENTERED, 12 + 1 - 4, 4, None),
        (GEMINI, Movement.LEFT, 5 - (12 + 1), None, 5),
        (DEEPSEEK, Movement.ROSE, 7, 1, 8),
        (CHATGPT, Movement.FELL, -1, 2, 1),
    ]  # Claude held #3; the untracked app is not watched
    assert {(m.at, m.previous_at, m.depth, m.previous_depth) for m in movers} == {
        (T0 + 10 * HOUR, T0, 12, 12)
    }


def test_the_baseline_is_the_snapshot_as_of_the_windows_start(poller: Poller) -> None:
    repository = poller.repository
    track(repository)
    poller.store(US_FREE, T0, fillers({10: DEEPSEEK}))
    poller.store(US_FREE, T0 + 5 * HOUR, fillers({6: DEEPSEEK}))
    poller.store(US_FREE, T0 + 10 * HOUR, fillers({1: DEEPSEEK}))

    assert summary(repository.movers(now=T0 + 10 * HOUR, window=5 * HOUR)) == [
        (DEEPSEEK, "us", "rose", 5)
    ]
    assert summary(repository.movers(now=T0 + 10 * HOUR, window=10 * HOUR)) == [
        (DEEPSEEK, "us", "rose", 9)
    ]
    # As of T0 + 9h the latest snapshot was the one of T0 + 5h.
    assert summary(repository.movers(now=T0 + 9 * HOUR, window=9 * HOUR)) == [
        (DEEPSEEK, "us", "rose", 4)
    ]
    # Nothing changed within the last 4 hours, and before T0 there was no baseline.
    assert summary(repository.movers(now=T0 + 14 * HOUR, window=4 * HOUR)) == []
    assert summary(repository.movers(now=T0 + 10 * HOUR, window=11 * HOUR)) == []


def test_filters_select_the_charts_compared(poller: Poller) -> None:
    repository = poller.repository
    track(repository)
    for chart, (old, new) in {US_FREE: (9, 2), US_PAID: (3, 4), JP_FREE: (7, 1)}.items():
        poller.store(chart, T0, fillers({old: DEEPSEEK}))
        poller.store(chart, T0 + HOUR, fillers({new: DEEPSEEK}))
    now, window = T0 + 2 * HOUR, 2 * HOUR

    assert summary(repository.movers(now=now, window=window)) == [
        (DEEPSEEK, "us", "rose", 7),
        (DEEPSEEK, "jp", "rose", 6),
        (DEEPSEEK, "us", "fell", -1),
    ]
    assert summary(repository.movers(now=now, window=window, country="us")) == [
        (DEEPSEEK, "us", "rose", 7),
        (DEEPSEEK, "us", "fell", -1),
    ]
    assert summary(repository.movers(now=now, window=window, collection="top_paid")) == [
        (DEEPSEEK, "us", "fell", -1)
    ]
    assert summary(repository.movers(now=now, window=window, device="ipad")) == []
    assert summary(repository.movers(now=now, window=window, genre="6014")) == []


def test_an_app_no_longer_tracked_is_not_a_mover(poller: Poller) -> None:
    repository = poller.repository
    track(repository)
    poller.store(US_FREE, T0, fillers({9: DEEPSEEK, 5: CHATGPT}))
    poller.store(US_FREE, T0 + HOUR, fillers({2: DEEPSEEK, 6: CHATGPT}))
    repository.sync_watchlist([WatchedApp(Store.APPLE, CHATGPT, "ChatGPT")])

    assert summary(repository.movers(now=T0 + 2 * HOUR, window=dt.timedelta(minutes=90))) == [
        (CHATGPT, "us", "fell", -1)
    ]
