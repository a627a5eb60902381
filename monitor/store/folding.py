"""Folding a chart's snapshots into daily summaries: pure code, no database.

A snapshot stands from its fetch until the chart's next snapshot, but for no longer than
`stands_for` past its last confirmation (an unchanged poll moves `confirmed_at` and writes no
row): a longer gap is a time the chart was not seen (the service down, failed polls), not a
time it stood still. Retention gives two poll intervals, so that a late poll leaves no gap.
A UTC day's
summary counts every snapshot standing during the day or fetched in it: per app listed in any
of them, its best and worst rank, its rank in the last of them that listed it, and the
minutes of the day it was listed. A day no snapshot stood in has no summary.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator, Sequence

from monitor.store import packing

DAY = dt.timedelta(days=1)
MINUTES_PER_DAY = 24 * 60


@dataclasses.dataclass(frozen=True, slots=True)
class StoredSnapshot:
    fetched_at: dt.datetime
    confirmed_at: dt.datetime
    visible_depth: int
    ranked_app_ids: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class AppDay:
    best: int
    worst: int
    last: int
    minutes: int


@dataclasses.dataclass(frozen=True, slots=True)
class DaySummary:
    day: dt.date
    depth: int
    snapshots: int  # fetched during the day
    apps: dict[int, AppDay]  # internal app id -> its day

    def packed(self) -> tuple[bytes, bytes]:
        """(app ids, stats) as stored in `daily_ranks`: best rank first."""
        order = sorted(self.apps.items(), key=lambda item: (item[1].best, item[0]))
        app_ids = packing.pack_ranking({slot: app_id for slot, (app_id, _) in enumerate(order, 1)})
        stats = packing.pack_day_stats(
            [(day.best, day.worst, day.last, day.minutes) for _, day in order]
        )
        return app_ids, stats


def midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def fold(
    snapshots: Sequence[StoredSnapshot],
    *,
    first_day: dt.date,
    end_day: dt.date,
    stands_for: dt.timedelta,
) -> Iterator[DaySummary]:
    """The summaries of the days from `first_day` up to `end_day` (excluded).

    `snapshots` are the chart's in fetch order: each one fetched in those days, the one
    standing when `first_day` begins, and the first one fetched from `end_day` on if any (it
    ends the standing of the one before).
    """
    if not snapshots:
        return
    spans = [
        (snapshot, _stands_until(snapshots, index, stands_for))
        for index, snapshot in enumerate(snapshots)
    ]
    day = max(first_day, snapshots[0].fetched_at.date())
    start = 0  # the first span that may reach into `day`
    while day < end_day:
        day_start, day_end = midnight(day), midnight(day) + DAY
        while (
            start < len(spans)
            and spans[start][1] <= day_start
            and spans[start][0].fetched_at < day_start
        ):
            start += 1
        standing = []
        for snapshot, until in spans[start:]:
            if snapshot.fetched_at >= day_end:
                break
            if until > day_start or snapshot.fetched_at >= day_start:
                standing.append((snapshot, until))
        if standing:
            yield _summary(day, day_start, day_end, standing)
        elif start >= len(spans):
            return
        day += DAY


def _stands_until(
    snapshots: Sequence[StoredSnapshot], index: int, stands_for: dt.timedelta
) -> dt.datetime:
    snapshot = snapshots[index]
    seen_until = max(snapshot.confirmed_at, snapshot.fetched_at) + stands_for
    if index + 1 < len(snapshots):
        return min(snapshots[index + 1].fetched_at, seen_until)
    return seen_until


def _summary(
    day: dt.date,
    day_start: dt.datetime,
    day_end: dt.datetime,
    standing: Sequence[tuple[StoredSnapshot, dt.datetime]],
) -> DaySummary:
    seconds: dict[int, float] = {}
    ranks: dict[int, list[int]] = {}
    for snapshot, until in standing:
        overlap = (min(until, day_end) - max(snapshot.fetched_at, day_start)).total_seconds()
        for rank, app_id in packing.unpack_ranking(snapshot.ranked_app_ids).items():
            ranks.setdefault(app_id, []).append(rank)
            seconds[app_id] = seconds.get(app_id, 0.0) + max(overlap, 0.0)
    return DaySummary(
        day=day,
        depth=max(snapshot.visible_depth for snapshot, _ in standing),
        snapshots=sum(1 for snapshot, _ in standing if snapshot.fetched_at >= day_start),
        apps={
            app_id: AppDay(
                best=min(held),
                worst=max(held),
                last=held[-1],
                minutes=min(round(seconds[app_id] / 60), MINUTES_PER_DAY),
            )
            for app_id, held in ranks.items()
        },
    )
