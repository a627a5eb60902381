"""Derived ranks: what incremental writes, the watchlist backfill and a rebuild agree on."""

from __future__ import annotations

from monitor.model import Store, WatchedApp
from monitor.store.repository import Repository

from .conftest import CHATGPT, DEEPSEEK, HOUR, JP_FREE, T0, US_FREE, US_PAID, Poller, derived_rows

WATCHLIST = [WatchedApp(Store.APPLE, CHATGPT, "ChatGPT"), WatchedApp(Store.APPLE, DEEPSEEK, "DS")]


def _polls(poller: Poller, hours: range) -> None:
    rotation = [CHATGPT, "2", DEEPSEEK, "4", "5", "6"]
    for hour in hours:
        at = T0 + hour * HOUR
        ranking = rotation[hour % 6 :] + rotation[: hour % 6]
        poller.store(US_FREE, at, ranking)
        poller.store(US_PAID, at, [None, *reversed(ranking)])
        if hour % 3 == 0:
            poller.fail(JP_FREE, at)
        else:
            poller.store(JP_FREE, at, ranking[:3])


def test_watchlist_backfill_gives_the_history_of_an_app_tracked_from_the_start(
    poller: Poller,
) -> None:
    repository = poller.repository
    repository.sync_watchlist(WATCHLIST[:1])
    _polls(poller, range(8))
    from_the_start = derived_rows(poller.database)
    history_from_the_start = repository.history(repository.find_apps(CHATGPT)[0].id)
    repository.sync_watchlist([])  # untracked: its derived rows go
    assert derived_rows(poller.database) == set()
    progress: list[tuple[int, int]] = []

    summary = repository.sync_watchlist(WATCHLIST[:1], progress=lambda *p: progress.append(p))

    assert derived_rows(poller.database) == from_the_start
    assert repository.history(repository.find_apps(CHATGPT)[0].id) == history_from_the_start
    assert summary.added == 1
    assert summary.backfilled == len(from_the_start)
    assert progress[-1][0] == progress[-1][1] > 0


def test_an_app_added_midway_ends_up_as_if_derived_from_all_snapshots(poller: Poller) -> None:
    repository = poller.repository
    repository.sync_watchlist(WATCHLIST[:1])
    _polls(poller, range(6))
    repository.sync_watchlist(WATCHLIST)  # DeepSeek: backfilled from six hours of snapshots
    _polls(poller, range(6, 12))  # then derived as each snapshot is written
    backfilled_then_incremental = derived_rows(poller.database)

    repository.rebuild_derived()

    assert derived_rows(poller.database) == backfilled_then_incremental
    assert {row[0] for row in backfilled_then_incremental} == {
        app.id for ref in (CHATGPT, DEEPSEEK) for app in repository.find_apps(ref)
    }


def test_rebuild_gives_exactly_what_incremental_writes_gave(poller: Poller) -> None:
    repository = poller.repository
    repository.sync_watchlist(WATCHLIST)
    _polls(poller, range(12))
    incremental = derived_rows(poller.database)
    progress: list[tuple[int, int]] = []

    written = repository.rebuild_derived(progress=lambda *p: progress.append(p))

    assert incremental
    assert derived_rows(poller.database) == incremental
    assert written == len(incremental)
    assert progress[-1] == (progress[-1][1], progress[-1][1])


def test_rebuild_repairs_lost_and_stale_derived_rows(poller: Poller) -> None:
    repository = poller.repository
    repository.sync_watchlist(WATCHLIST)
    _polls(poller, range(6))
    incremental = derived_rows(poller.database)
    with poller.database.engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM app_ranks WHERE rank = 1")
        connection.exec_driver_sql("UPDATE app_ranks SET rank = 99 WHERE rank = 3")

    repository.rebuild_derived()

    assert derived_rows(poller.database) == incremental


def test_watched_apps_never_seen_get_a_row_that_the_first_sighting_completes(
    poller: Poller,
) -> None:
    repository = poller.repository
    summary = repository.sync_watchlist([WatchedApp(Store.APPLE, "555", "Future App", "com.f")])
    (before,) = repository.find_apps("555")

    poller.store(US_FREE, T0, ["1", "555"])

    (after,) = repository.find_apps("555")
    assert (summary.created, summary.added, summary.backfilled) == (1, 1, 0)
    assert before.tracked
    assert (before.first_seen_at, before.last_seen_at) == (None, None)
    assert before.name == "Future App"
    assert before.bundle_id == "com.f"
    assert (after.first_seen_at, after.last_seen_at) == (T0, T0)
    assert after.name == "App 555"  # the store's name wins once it is seen
    assert {(row[3]) for row in derived_rows(poller.database)} == {2}


def test_syncing_the_same_watchlist_again_changes_nothing(poller: Poller) -> None:
    repository = poller.repository
    _polls(poller, range(3))
    repository.sync_watchlist(WATCHLIST)
    rows = derived_rows(poller.database)

    again = repository.sync_watchlist(WATCHLIST)

    assert (again.tracked, again.added, again.untracked, again.backfilled) == (2, 0, 0, 0)
    assert derived_rows(poller.database) == rows
    assert Repository(poller.database).rebuild_derived() == len(rows)
