"""The poll schedule: which charts are due, leases, fencing tokens (DESIGN.md section 4)."""

from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from monitor.errors import LeaseLost
from monitor.model import ChartKey, Collection, Device, PollClaim, Store, Validators
from monitor.store.engine import open_database
from monitor.store.migrate import upgrade
from monitor.store.repository import Repository

from .conftest import (
    HOUR,
    JP_FREE,
    LEASE,
    T0,
    US_FREE,
    US_PAID,
    Poller,
    content_hash,
    fetch,
    row_counts,
    snapshot,
)


def test_new_charts_are_due_at_once_and_dropped_ones_are_disabled(
    repository: Repository,
) -> None:
    first = repository.sync_charts([US_FREE, US_PAID], now=T0)
    second = repository.sync_charts([US_PAID, JP_FREE], now=T0 + HOUR)
    third = repository.sync_charts([US_FREE, US_PAID, JP_FREE], now=T0 + 2 * HOUR)

    assert (first.added, first.reenabled, first.disabled, first.enabled) == (2, 0, 0, 2)
    assert (second.added, second.reenabled, second.disabled) == (1, 0, 1)
    assert (third.added, third.reenabled, third.disabled) == (0, 1, 0)
    assert repository.schedule_status(now=T0 + 2 * HOUR).enabled == 3


def test_disabled_charts_are_not_claimed_even_when_named(repository: Repository) -> None:
    repository.sync_charts([US_FREE, US_PAID], now=T0)
    repository.sync_charts([US_PAID], now=T0)

    claims = repository.claim_due(owner="w", now=T0, lease=LEASE, limit=10)
    forced = repository.claim_due(owner="w", now=T0, lease=LEASE, limit=10, charts=[US_FREE])

    assert [claim.chart for claim in claims] == [US_PAID]
    assert forced == []


def test_due_charts_are_claimed_oldest_first_up_to_the_limit(poller: Poller) -> None:
    repository = poller.repository
    poller.store(US_PAID, T0, ["1"])  # due again at T0 + 1h
    poller.fail(JP_FREE, T0)  # due again at T0 + 10min

    at_1h = repository.claim_due(owner="w", now=T0 + HOUR, lease=LEASE, limit=2)

    assert [claim.chart for claim in at_1h] == [US_FREE, JP_FREE]
    assert all(claim.lease_expires_at == T0 + HOUR + LEASE for claim in at_1h)


def test_a_leased_chart_is_claimable_again_only_after_the_lease_expired(
    poller: Poller,
) -> None:
    repository = poller.repository
    (first,) = repository.claim_due(owner="a", now=T0, lease=LEASE, limit=1, charts=[US_FREE])

    during = repository.claim_due(owner="b", now=T0 + LEASE / 2, lease=LEASE, limit=10)
    after = repository.claim_due(owner="b", now=T0 + LEASE, lease=LEASE, limit=10)

    assert US_FREE not in [claim.chart for claim in during]
    assert US_FREE in [claim.chart for claim in after]
    taken_over = next(claim for claim in after if claim.chart == US_FREE)
    assert taken_over.token > first.token


def test_named_charts_are_claimed_whether_due_or_not(poller: Poller) -> None:
    repository = poller.repository
    poller.store(US_FREE, T0, ["1"])

    due = repository.claim_due(owner="w", now=T0 + HOUR / 2, lease=LEASE, limit=10)
    forced = repository.claim_due(
        owner="w", now=T0 + HOUR / 2, lease=LEASE, limit=10, charts=[US_FREE]
    )

    assert US_FREE not in [claim.chart for claim in due]
    assert [claim.chart for claim in forced] == [US_FREE]


def test_claims_carry_the_validators_and_hash_of_the_last_success(poller: Poller) -> None:
    written = poller.store(US_FREE, T0, ["1", "2"])
    assert written.stored

    (claim,) = poller.repository.claim_due(
        owner="w", now=T0 + HOUR, lease=LEASE, limit=1, charts=[US_FREE]
    )

    assert claim.validators == Validators(etag=f'"{T0.timestamp()}"')
    assert claim.last_hash == content_hash(snapshot(US_FREE, T0, ["1", "2"]))
    assert claim.last_source is not None


def _superseded_claim(repository: Repository) -> PollClaim:
    """A claim whose lease expired and was taken over by another worker."""
    (stale,) = repository.claim_due(owner="slow", now=T0, lease=LEASE, limit=1, charts=[US_FREE])
    (current,) = repository.claim_due(
        owner="fast", now=T0 + 2 * LEASE, lease=LEASE, limit=1, charts=[US_FREE]
    )
    assert current.token > stale.token
    return stale


def test_worker_that_lost_its_lease_writes_nothing(poller: Poller) -> None:
    repository = poller.repository
    stale = _superseded_claim(repository)
    before = row_counts(poller.database)
    value = snapshot(US_FREE, T0 + LEASE, ["100", "200", "300"])

    with pytest.raises(LeaseLost):
        repository.record_snapshot(
            stale,
            value,
            content_hash=content_hash(value),
            validators=Validators(),
            fetches=[fetch(US_FREE, T0 + LEASE)],
            next_due_at=T0 + HOUR,
        )

    assert row_counts(poller.database) == before  # no app, no snapshot, no fetch log row
    assert repository.chart_at(US_FREE) is None
    assert repository.find_apps("100") == []


def test_lost_lease_refuses_unchanged_and_failure_completions_too(poller: Poller) -> None:
    repository = poller.repository
    stale = _superseded_claim(repository)
    before = row_counts(poller.database)

    with pytest.raises(LeaseLost):
        repository.record_unchanged(
            stale, validators=Validators(), fetches=[fetch(US_FREE, T0)], next_due_at=T0
        )
    with pytest.raises(LeaseLost):
        repository.record_failure(stale, fetches=[fetch(US_FREE, T0)], next_due_at=T0)

    assert row_counts(poller.database) == before


def test_releasing_a_lost_lease_leaves_the_new_holder_alone(poller: Poller) -> None:
    repository = poller.repository
    stale = _superseded_claim(repository)

    repository.release(stale)

    status = repository.schedule_status(now=T0 + 2 * LEASE)
    assert status.leased == 1


def test_a_renewed_lease_keeps_the_chart_from_other_workers_until_its_new_expiry(
    poller: Poller,
) -> None:
    repository = poller.repository
    (claim,) = repository.claim_due(owner="a", now=T0, lease=LEASE, limit=1, charts=[US_FREE])

    renewed = repository.renew(claim, now=T0 + LEASE / 2, lease=LEASE)

    assert renewed.lease_expires_at == T0 + LEASE * 3 / 2
    assert renewed.token == claim.token
    at_old_expiry = repository.claim_due(owner="b", now=T0 + LEASE, lease=LEASE, limit=10)
    assert US_FREE not in [c.chart for c in at_old_expiry]
    at_new_expiry = repository.claim_due(owner="b", now=T0 + LEASE * 3 / 2, lease=LEASE, limit=10)
    assert US_FREE in [c.chart for c in at_new_expiry]


def test_a_lost_lease_is_not_renewed(poller: Poller) -> None:
    repository = poller.repository
    stale = _superseded_claim(repository)

    with pytest.raises(LeaseLost):
        repository.renew(stale, now=T0 + LEASE * 5 / 2, lease=LEASE)

    # The new holder's lease still ends when it did (at 3 x LEASE), not half a lease later.
    assert repository.schedule_status(now=T0 + 3 * LEASE).leased == 0


def test_released_chart_is_due_again_at_once(poller: Poller) -> None:
    repository = poller.repository
    (claim,) = repository.claim_due(owner="w", now=T0, lease=LEASE, limit=1, charts=[US_FREE])

    repository.release(claim)

    again = repository.claim_due(owner="w", now=T0, lease=LEASE, limit=10)
    assert US_FREE in [c.chart for c in again]


def test_schedule_status_counts_due_leased_and_failing_charts(poller: Poller) -> None:
    repository = poller.repository
    poller.fail(JP_FREE, T0)
    repository.claim_due(owner="w", now=T0, lease=LEASE, limit=1, charts=[US_PAID])

    status = repository.schedule_status(now=T0 + dt.timedelta(minutes=1))

    assert status.enabled == 3
    assert status.due_now == 1  # US_FREE; US_PAID is leased, JP_FREE retries at +10 min
    assert status.leased == 1
    assert status.failing == 1
    assert status.oldest_due_at == T0


def test_a_success_resets_the_failure_count(poller: Poller) -> None:
    poller.fail(US_FREE, T0)
    poller.store(US_FREE, T0 + HOUR, ["1"])

    assert poller.repository.schedule_status(now=T0 + HOUR).failing == 0


@pytest.mark.postgres
def test_concurrent_claimers_each_get_distinct_charts(postgres_url: str) -> None:
    charts = [
        ChartKey(Store.APPLE, country, collection, Device.IPHONE)
        for country in ("us", "gb", "de", "fr", "jp")
        for collection in (Collection.TOP_FREE, Collection.TOP_PAID, Collection.TOP_GROSSING)
    ]
    charts += [
        ChartKey(Store.APPLE, country, Collection.TOP_FREE, Device.IPAD)
        for country in ("us", "gb", "de", "fr", "jp", "it", "es", "nl", "se", "no", "dk", "fi")
    ]
    with open_database(postgres_url, writer=True) as database:
        upgrade(database)
        Repository(database).sync_charts(charts, now=T0)
    workers = 8
    start = threading.Barrier(workers)

    def replica(number: int) -> list[ChartKey]:
        with open_database(postgres_url, writer=True) as database:
            repository = Repository(database)
            start.wait()
            claims = repository.claim_due(owner=f"replica-{number}", now=T0, lease=LEASE, limit=5)
            return [claim.chart for claim in claims]

    with ThreadPoolExecutor(workers) as pool:
        claimed = [chart for result in pool.map(replica, range(workers)) for chart in result]

    assert len(claimed) == len(set(claimed)) == len(charts)
