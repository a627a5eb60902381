"""The state the metrics and the status page show: one consistent read, never blocked by a
writer."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import text

from monitor.model import Store, WatchedApp
from monitor.store.engine import Database
from monitor.store.repository import Repository
from tests.store.conftest import CHATGPT, DEEPSEEK, HOUR, JP_FREE, T0, US_FREE, US_PAID, Poller

WATCHLIST = [
    WatchedApp(Store.APPLE, CHATGPT, "ChatGPT"),
    WatchedApp(Store.APPLE, DEEPSEEK, "DeepSeek"),
]


def test_tracked_ranks_chart_health_and_schedule_in_one_read(
    poller: Poller, repository: Repository
) -> None:
    repository.sync_watchlist(WATCHLIST)
    poller.store(US_FREE, T0, ["1", DEEPSEEK, "3", CHATGPT])
    poller.store(US_FREE, T0 + HOUR, [DEEPSEEK, CHATGPT, "3"])
    poller.store(US_PAID, T0, ["7", "8"])
    poller.fail(JP_FREE, T0)
    poller.fail(JP_FREE, T0 + HOUR)

    state = repository.service_state(now=T0 + 2 * HOUR)

    ranks = {
        (status.app.store_id, current.chart): (current.rank, current.depth)
        for status in state.tracked
        for current in status.ranks
    }
    assert ranks == {
        (DEEPSEEK, US_FREE): (1, 3),
        (CHATGPT, US_FREE): (2, 3),
        (DEEPSEEK, US_PAID): (None, 2),
        (CHATGPT, US_PAID): (None, 2),
    }
    health = {h.chart: h for h in state.charts}
    assert set(health) == {US_FREE, US_PAID, JP_FREE}
    assert health[US_FREE].last_success_at == T0 + HOUR
    assert health[US_FREE].consecutive_failures == 0
    assert health[JP_FREE].last_success_at is None
    assert health[JP_FREE].consecutive_failures == 2
    assert health[JP_FREE].last_error == "FetchTimeout: HTTP 503"
    assert state.schedule.enabled == 3
    assert state.schedule.failing == 1


def test_disabled_charts_leave_the_state(poller: Poller, repository: Repository) -> None:
    repository.sync_watchlist(WATCHLIST)
    poller.store(US_FREE, T0, [DEEPSEEK])
    poller.store(US_PAID, T0, [CHATGPT])

    repository.sync_charts([US_FREE], now=T0 + HOUR)
    state = repository.service_state(now=T0 + HOUR)

    assert [h.chart for h in state.charts] == [US_FREE]
    assert {c.chart for s in state.tracked for c in s.ranks} == {US_FREE}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_read_does_not_wait_for_a_writer_holding_the_sqlite_write_lock(
    database: Database, poller: Poller, repository: Repository
) -> None:
    repository.sync_watchlist(WATCHLIST)
    poller.store(US_FREE, T0, [DEEPSEEK])
    holding = threading.Event()
    release = threading.Event()

    def hold_the_write_lock() -> None:
        with database.engine.connect() as connection, connection.begin():
            connection.execute(text("UPDATE poll_tasks SET consecutive_failures = 9"))
            holding.set()
            release.wait(10)

    writer = threading.Thread(target=hold_the_write_lock)
    writer.start()
    try:
        assert holding.wait(5)
        started = time.monotonic()
        state = repository.service_state(now=T0 + HOUR)
        waited = time.monotonic() - started
    finally:
        release.set()
        writer.join()

    # The busy timeout is 5 s: a read that queued behind the writer would take it all.
    assert waited < 1.0
    # And it saw the last committed state, not the writer's uncommitted update.
    assert {h.consecutive_failures for h in state.charts} == {0}
