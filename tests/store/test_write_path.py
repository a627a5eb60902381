"""The snapshot write path: what a warm write costs, and what its caches may not assume."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from sqlalchemy import event

from monitor.model import ChartEntry, ChartKey, Store, Validators, WatchedApp
from monitor.store.apps import LAST_SEEN_RESOLUTION, AppCache, Known
from monitor.store.repository import Repository

from .conftest import (
    CHATGPT,
    DEEPSEEK,
    HOUR,
    JP_FREE,
    T0,
    US_FREE,
    US_PAID,
    Poller,
    claim_one,
    content_hash,
    fetch,
    snapshot,
)

MINUTE = dt.timedelta(minutes=1)


def test_a_warm_write_is_a_few_statements_compiled_once(poller: Poller) -> None:
    repository = poller.repository
    repository.sync_watchlist([WatchedApp(Store.APPLE, CHATGPT, "ChatGPT")])
    poller.store(US_FREE, T0, [CHATGPT, DEEPSEEK, "3"])
    poller.store(US_FREE, T0 + MINUTE, [DEEPSEEK, CHATGPT, "3"])  # every statement seen once
    claim = claim_one(repository, US_FREE, T0 + 2 * MINUTE)
    value = snapshot(US_FREE, T0 + 2 * MINUTE, [CHATGPT, "3", DEEPSEEK])
    seen: list[tuple[str, bool]] = []

    def record(_conn: Any, _cursor: Any, sql: str, _params: Any, context: Any, _many: Any) -> None:
        if context.compiled is not None:
            seen.append((sql.split(maxsplit=1)[0], context.cache_hit == context.dialect.CACHE_HIT))

    engine = poller.database.engine
    event.listen(engine, "after_cursor_execute", record)
    try:
        written = repository.record_snapshot(
            claim,
            value,
            content_hash=content_hash(value),
            validators=Validators(),
            fetches=[fetch(US_FREE, T0 + 2 * MINUTE)],
            next_due_at=T0 + HOUR,
        )
    finally:
        event.remove(engine, "after_cursor_execute", record)

    assert written.stored
    assert [(c.before, c.after) for c in written.changes] == [(2, 1)]
    # The fence (taking the derived-ranks lock on PostgreSQL), then the snapshot (returning
    # the tracked apps), their ranks and the fetch log: on PostgreSQL one statement, a round
    # trip saved twice. Apps seen a minute ago and the latest snapshot this process wrote
    # itself cost nothing.
    if poller.database.dialect == "postgresql":
        assert [verb for verb, _ in seen] == ["UPDATE", "WITH"]
    else:
        assert [verb for verb, _ in seen] == ["UPDATE", "INSERT", "INSERT", "INSERT"]
    assert all(reused for _, reused in seen)


def test_what_another_process_wrote_meanwhile_is_what_a_write_compares_with(
    poller: Poller,
) -> None:
    poller.repository.sync_watchlist([WatchedApp(Store.APPLE, DEEPSEEK, "DeepSeek")])
    poller.store(US_FREE, T0, [DEEPSEEK, CHATGPT])
    other_process = Poller(Repository(poller.database), poller.database)
    other_process.store(US_FREE, T0 + HOUR, [CHATGPT, DEEPSEEK])

    again = poller.store(US_FREE, T0 + 2 * HOUR, [CHATGPT, DEEPSEEK])
    moved = poller.store(US_FREE, T0 + 3 * HOUR, [DEEPSEEK, CHATGPT])

    assert not again.stored  # the same as the other process's snapshot, not as its own
    assert [(c.before, c.after) for c in moved.changes] == [(2, 1)]


def test_failed_and_unchanged_polls_in_between_keep_the_latest_snapshot_known(
    poller: Poller,
) -> None:
    first = poller.store(US_FREE, T0, [CHATGPT, DEEPSEEK])
    poller.fail(US_FREE, T0 + HOUR)
    poller.unchanged(US_FREE, T0 + 2 * HOUR)

    same = poller.store(US_FREE, T0 + 3 * HOUR, [CHATGPT, DEEPSEEK])
    other = poller.store(US_FREE, T0 + 4 * HOUR, [DEEPSEEK, CHATGPT])

    assert (same.stored, same.snapshot_id) == (False, first.snapshot_id)
    view = poller.repository.chart_at(US_FREE, T0 + 3 * HOUR)
    assert view is not None
    assert view.confirmed_at == T0 + 3 * HOUR
    assert other.stored


def test_a_late_older_fetch_is_compared_with_the_snapshot_before_it(poller: Poller) -> None:
    first = poller.store(US_FREE, T0, [CHATGPT, DEEPSEEK])
    latest = poller.store(US_FREE, T0 + 2 * HOUR, [DEEPSEEK, CHATGPT])

    late = poller.store(US_FREE, T0 + HOUR, [CHATGPT, DEEPSEEK])
    after = poller.store(US_FREE, T0 + 3 * HOUR, [DEEPSEEK, CHATGPT])

    assert (late.stored, late.snapshot_id) == (False, first.snapshot_id)
    assert (after.stored, after.snapshot_id) == (False, latest.snapshot_id)


def _record(poller: Poller, chart: ChartKey, at: dt.datetime, entry: ChartEntry) -> None:
    claim = claim_one(poller.repository, chart, at)
    value = dataclasses.replace(snapshot(chart, at, []), entries=(entry,))
    poller.repository.record_snapshot(
        claim,
        value,
        content_hash=content_hash(value),
        validators=Validators(),
        fetches=[],
        next_due_at=at + HOUR,
    )


def test_an_app_row_is_rewritten_at_most_once_per_last_seen_resolution(poller: Poller) -> None:
    poller.store(US_FREE, T0, [CHATGPT])
    renamed = ChartEntry(rank=1, store_id=CHATGPT, name="ChatGPT", developer="OpenAI")
    soon = T0 + LAST_SEEN_RESOLUTION / 3
    later = T0 + 2 * LAST_SEEN_RESOLUTION

    _record(poller, US_PAID, soon, renamed)
    (meanwhile,) = Repository(poller.database).find_apps(CHATGPT)
    _record(poller, JP_FREE, later, renamed)
    (app,) = Repository(poller.database).find_apps(CHATGPT)

    # A sighting less than LAST_SEEN_RESOLUTION after the row was written writes nothing,
    # the first one after that writes what it saw.
    assert (meanwhile.name, meanwhile.last_seen_at) == (f"App {CHATGPT}", T0)
    assert (app.name, app.developer, app.last_seen_at) == ("ChatGPT", "OpenAI", later)
    assert app.bundle_id == f"com.example.app{CHATGPT}"  # that feed had none: kept


def test_the_app_cache_starts_over_when_full() -> None:
    cache = AppCache(capacity=3)
    known = {str(n): Known(n, ("App",) + (None,) * 5, T0) for n in range(3)}

    cache.update(Store.APPLE, known)
    cache.update(Store.APPLE, {"0": known["0"]})  # already held: no growth
    full = dict(cache.of(Store.APPLE))
    cache.update(Store.APPLE, {"9": Known(9, ("App",) + (None,) * 5, T0)})

    assert full == known
    assert list(cache.of(Store.APPLE)) == ["9"]
