"""Completing polls: snapshots, unchanged content, the apps they list, the fetch log."""

from __future__ import annotations

import dataclasses

from monitor.model import ChartEntry, FetchOutcome, RankStatus, Validators, WatchedApp
from monitor.store.repository import Repository, SnapshotWrite

from .conftest import (
    CHATGPT,
    DEEPSEEK,
    HOUR,
    LEASE,
    T0,
    US_FREE,
    US_PAID,
    Poller,
    claim_one,
    content_hash,
    fetch,
    row_counts,
    snapshot,
)


def test_a_snapshot_is_stored_with_its_ranking_and_gaps(poller: Poller) -> None:
    written = poller.store(US_FREE, T0, [CHATGPT, None, DEEPSEEK])

    view = poller.repository.chart_at(US_FREE)
    assert written.stored
    assert written.new_apps == 2
    assert view is not None
    assert view.snapshot_id == written.snapshot_id
    assert [(e.rank, e.store_id, e.name) for e in view.entries] == [
        (1, CHATGPT, f"App {CHATGPT}"),
        (3, DEEPSEEK, f"App {DEEPSEEK}"),
    ]
    assert (view.visible_depth, view.requested_depth) == (3, 100)
    assert view.fetched_at == view.confirmed_at == T0


def test_replaying_the_same_fetch_writes_nothing_new(poller: Poller) -> None:
    repository = poller.repository
    claim = claim_one(repository, US_FREE, T0)
    value = snapshot(US_FREE, T0, [CHATGPT, DEEPSEEK])

    def record() -> SnapshotWrite:
        return repository.record_snapshot(
            claim,
            value,
            content_hash=content_hash(value),
            validators=Validators(etag='"v1"'),
            fetches=[fetch(US_FREE, T0)],
            next_due_at=T0 + HOUR,
        )

    first = record()
    after_first = row_counts(poller.database)

    replay = record()

    assert first.stored
    assert not replay.stored
    assert replay.snapshot_id == first.snapshot_id
    assert row_counts(poller.database) == after_first


def test_a_fresh_process_replaying_a_fetch_duplicates_no_app(poller: Poller) -> None:
    poller.store(US_FREE, T0, [CHATGPT, DEEPSEEK])
    other_process = Repository(poller.database)
    claim = claim_one(other_process, US_PAID, T0)
    value = snapshot(US_PAID, T0, [DEEPSEEK, CHATGPT])

    written = other_process.record_snapshot(
        claim,
        value,
        content_hash=content_hash(value),
        validators=Validators(),
        fetches=[],
        next_due_at=T0 + HOUR,
    )

    assert written.stored
    assert written.new_apps == 0
    assert row_counts(poller.database)["apps"] == 2


def test_unchanged_content_confirms_the_latest_snapshot_instead_of_storing_one(
    poller: Poller,
) -> None:
    first = poller.store(US_FREE, T0, [CHATGPT, DEEPSEEK])
    counts = row_counts(poller.database)

    again = poller.store(US_FREE, T0 + HOUR, [CHATGPT, DEEPSEEK])

    view = poller.repository.chart_at(US_FREE)
    assert not again.stored
    assert again.snapshot_id == first.snapshot_id
    assert view is not None
    assert (view.fetched_at, view.confirmed_at) == (T0, T0 + HOUR)
    after = row_counts(poller.database)
    assert after["snapshots"] == counts["snapshots"]
    assert after["fetch_log"] == counts["fetch_log"] + 1


def test_not_modified_confirms_the_latest_snapshot_and_keeps_the_schedule_going(
    poller: Poller,
) -> None:
    poller.store(US_FREE, T0, [CHATGPT])

    poller.unchanged(US_FREE, T0 + HOUR)

    view = poller.repository.chart_at(US_FREE)
    assert view is not None
    assert view.confirmed_at == T0 + HOUR
    due = poller.repository.claim_due(owner="w", now=T0 + HOUR, lease=LEASE, limit=10)
    assert US_FREE not in [claim.chart for claim in due]


def test_changed_content_stores_a_new_snapshot(poller: Poller) -> None:
    first = poller.store(US_FREE, T0, [CHATGPT, DEEPSEEK])
    second = poller.store(US_FREE, T0 + HOUR, [DEEPSEEK, CHATGPT])

    assert second.stored
    assert second.snapshot_id != first.snapshot_id
    at_t0 = poller.repository.chart_at(US_FREE, T0 + HOUR / 2)
    assert at_t0 is not None
    assert [e.store_id for e in at_t0.entries] == [CHATGPT, DEEPSEEK]
    assert poller.repository.chart_at(US_FREE, T0 - HOUR) is None


def test_tracked_rank_changes_are_reported_with_each_snapshot(poller: Poller) -> None:
    repository = poller.repository
    repository.sync_watchlist(
        [WatchedApp(US_FREE.store, DEEPSEEK, "DeepSeek"), WatchedApp(US_FREE.store, "9", "X")]
    )
    poller.store(US_FREE, T0, [CHATGPT, "5", DEEPSEEK])

    written = poller.store(US_FREE, T0 + HOUR, [DEEPSEEK, CHATGPT, "5"])
    steady = poller.store(US_FREE, T0 + 2 * HOUR, [DEEPSEEK, "5", CHATGPT])
    gone = poller.store(US_FREE, T0 + 3 * HOUR, [CHATGPT])

    assert [(c.store_id, c.before, c.after) for c in written.changes] == [(DEEPSEEK, 3, 1)]
    assert steady.stored
    assert steady.ranks_changed == 0
    assert [(c.store_id, c.before, c.after) for c in gone.changes] == [(DEEPSEEK, 1, None)]


def test_app_metadata_follows_the_feed_without_losing_what_another_feed_gave(
    poller: Poller,
) -> None:
    repository = poller.repository
    poller.store(US_FREE, T0, [CHATGPT])
    claim = claim_one(repository, US_PAID, T0 + HOUR)
    renamed = ChartEntry(rank=1, store_id=CHATGPT, name="ChatGPT", developer="OpenAI")
    value = dataclasses.replace(snapshot(US_PAID, T0 + HOUR, []), entries=(renamed,))

    repository.record_snapshot(
        claim,
        value,
        content_hash=content_hash(value),
        validators=Validators(),
        fetches=[],
        next_due_at=T0 + 2 * HOUR,
    )

    (app,) = Repository(poller.database).find_apps(CHATGPT)
    assert (app.name, app.developer) == ("ChatGPT", "OpenAI")
    assert app.bundle_id == f"com.example.app{CHATGPT}"  # this feed had none: kept
    assert (app.first_seen_at, app.last_seen_at) == (T0, T0 + HOUR)


def test_metadata_changes_reach_the_database_from_a_warm_cache(poller: Poller) -> None:
    repository = poller.repository
    poller.store(US_FREE, T0, [CHATGPT])
    claim = claim_one(repository, US_FREE, T0 + HOUR)
    renamed = ChartEntry(rank=1, store_id=CHATGPT, name="ChatGPT", developer="OpenAI")
    value = dataclasses.replace(snapshot(US_FREE, T0 + HOUR, []), entries=(renamed,))

    repository.record_snapshot(
        claim,
        value,
        content_hash=content_hash(value),
        validators=Validators(),
        fetches=[],
        next_due_at=T0 + 2 * HOUR,
    )

    assert [a.name for a in Repository(poller.database).find_apps(CHATGPT)] == ["ChatGPT"]


def test_a_poll_that_fell_back_to_another_feed_is_no_gap(poller: Poller) -> None:
    repository = poller.repository
    claim = claim_one(repository, US_FREE, T0)
    value = snapshot(US_FREE, T0 + HOUR / 60, [CHATGPT])
    failed = fetch(US_FREE, T0, FetchOutcome.FAILED, error_class="FeedFormatError")

    repository.record_snapshot(
        claim,
        value,
        content_hash=content_hash(value),
        validators=Validators(),
        fetches=[failed, fetch(US_FREE, T0 + HOUR / 60)],
        next_due_at=T0 + HOUR,
    )

    (app,) = repository.find_apps(CHATGPT)
    statuses = [point.status for point in repository.history(app.id)]
    assert statuses == [RankStatus.LISTED]
    assert row_counts(poller.database)["fetch_log"] == 2
    assert repository.schedule_status(now=T0).failing == 0
