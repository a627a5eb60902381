"""Fixtures for the storage contract tests: a migrated database per test, on both backends."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Sequence

import pytest
from sqlalchemy import Table, func, select

from monitor.model import (
    ChartEntry,
    ChartKey,
    ChartSnapshot,
    Collection,
    Device,
    FetchOutcome,
    FetchRecord,
    PollClaim,
    SourceName,
    Store,
    Validators,
)
from monitor.store.engine import Database
from monitor.store.repository import Repository, SnapshotWrite
from monitor.store.tables import app_ranks, metadata

T0 = dt.datetime(2025, 1, 20, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
LEASE = dt.timedelta(minutes=5)
US_FREE = ChartKey(Store.APPLE, "us", Collection.TOP_FREE, Device.IPHONE)
US_PAID = ChartKey(Store.APPLE, "us", Collection.TOP_PAID, Device.IPHONE)
JP_FREE = ChartKey(Store.APPLE, "jp", Collection.TOP_FREE, Device.IPHONE)
CHATGPT = "6448311069"
DEEPSEEK = "6737597349"


@pytest.fixture
def repository(database: Database) -> Repository:
    return Repository(database)


def entries(store_ids: Sequence[str | None], *, suffix: str = "") -> tuple[ChartEntry, ...]:
    """Chart entries in rank order; None leaves a gap at that position."""
    return tuple(
        ChartEntry(
            rank=rank,
            store_id=store_id,
            name=f"App {store_id}{suffix}",
            developer=f"Developer {store_id}",
            bundle_id=f"com.example.app{store_id}",
        )
        for rank, store_id in enumerate(store_ids, start=1)
        if store_id is not None
    )


def snapshot(
    chart: ChartKey,
    at: dt.datetime,
    store_ids: Sequence[str | None],
    *,
    requested_depth: int = 100,
) -> ChartSnapshot:
    return ChartSnapshot(
        chart=chart,
        source=SourceName.APPLE_V2,
        fetched_at=at,
        requested_depth=requested_depth,
        entries=entries(store_ids),
        feed_updated_at=at - dt.timedelta(minutes=7),
    )


def content_hash(value: ChartSnapshot) -> str:
    text = "|".join(f"{e.rank}:{e.store_id}:{e.name}" for e in value.entries)
    return hashlib.sha256(text.encode()).hexdigest()


def fetch(
    chart: ChartKey,
    at: dt.datetime,
    outcome: FetchOutcome = FetchOutcome.CHANGED,
    *,
    error_class: str | None = None,
    source: SourceName = SourceName.APPLE_V2,
) -> FetchRecord:
    failed = outcome == FetchOutcome.FAILED
    return FetchRecord(
        chart=chart,
        started_at=at,
        duration_seconds=0.25,
        outcome=outcome,
        source=source,
        url=f"https://feeds.example/{chart.slug}",
        http_status=503 if failed else 200,
        attempts=1,
        body_bytes=None if failed else 12_345,
        error_class=error_class or ("HttpStatusError" if failed else None),
        error_message="HTTP 503" if failed else None,
    )


def claim_one(
    repository: Repository, chart: ChartKey, at: dt.datetime, *, owner: str = "test"
) -> PollClaim:
    claims = repository.claim_due(owner=owner, now=at, lease=LEASE, limit=1, charts=[chart])
    assert len(claims) == 1, f"{chart} could not be claimed at {at}"
    return claims[0]


@dataclasses.dataclass
class Poller:
    """Drives the repository the way the worker does: claim, then complete the poll."""

    repository: Repository
    database: Database

    def store(
        self, chart: ChartKey, at: dt.datetime, store_ids: Sequence[str | None]
    ) -> SnapshotWrite:
        claim = claim_one(self.repository, chart, at)
        value = snapshot(chart, at, store_ids)
        return self.repository.record_snapshot(
            claim,
            value,
            content_hash=content_hash(value),
            validators=Validators(etag=f'"{at.timestamp()}"'),
            fetches=[fetch(chart, at)],
            next_due_at=at + HOUR,
        )

    def fail(
        self,
        chart: ChartKey,
        at: dt.datetime,
        error_class: str = "FetchTimeout",
        *,
        fallback_error: str | None = None,
    ) -> None:
        """A failed poll; with `fallback_error`, the legacy feed was tried too, a second later,
        and failed with that error."""
        fetches = [fetch(chart, at, FetchOutcome.FAILED, error_class=error_class)]
        if fallback_error is not None:
            fetches.append(
                fetch(
                    chart,
                    at + dt.timedelta(seconds=1),
                    FetchOutcome.FAILED,
                    error_class=fallback_error,
                    source=SourceName.ITUNES_RSS,
                )
            )
        claim = claim_one(self.repository, chart, at)
        self.repository.record_failure(
            claim, fetches=fetches, next_due_at=at + dt.timedelta(minutes=10)
        )

    def unchanged(self, chart: ChartKey, at: dt.datetime) -> None:
        claim = claim_one(self.repository, chart, at)
        self.repository.record_unchanged(
            claim,
            validators=claim.validators,
            fetches=[fetch(chart, at, FetchOutcome.NOT_MODIFIED)],
            next_due_at=at + HOUR,
        )


@pytest.fixture
def poller(repository: Repository, database: Database) -> Poller:
    repository.sync_charts([US_FREE, US_PAID, JP_FREE], now=T0)
    return Poller(repository, database)


def row_counts(database: Database, tables: Sequence[Table] | None = None) -> dict[str, int]:
    """Rows per table (default: every table): what "writes nothing" is checked against."""
    with database.engine.connect() as connection:
        return {
            table.name: connection.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (metadata.sorted_tables if tables is None else tables)
        }


def derived_rows(database: Database) -> set[tuple[int, int, dt.datetime, int]]:
    with database.engine.connect() as connection:
        rows = connection.execute(select(app_ranks)).all()
    return {(row.app_id, row.chart_id, row.fetched_at, row.rank) for row in rows}
