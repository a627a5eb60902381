"""Daily summaries against a minute-by-minute reference: what each app held, minute by minute."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.store import packing
from monitor.store.folding import DAY, StoredSnapshot, fold, midnight

START = dt.date(2025, 1, 30)
MINUTE = dt.timedelta(minutes=1)
STANDS_FOR = dt.timedelta(hours=2)
APPS = (11, 12, 13, 14)


@st.composite
def histories(draw: st.DrawFn) -> list[StoredSnapshot]:
    """Snapshots over four days, minutes apart, each listing some of APPS in some order."""
    offsets = sorted(draw(st.sets(st.integers(0, 4 * 24 * 60 - 1), min_size=1, max_size=12)))
    found = []
    for index, offset in enumerate(offsets):
        fetched = midnight(START) + offset * MINUTE
        listed = draw(st.permutations(APPS))[: draw(st.integers(0, len(APPS)))]
        last = index == len(offsets) - 1
        # Confirmed up to the next snapshot at most: a later fetch ends the confirmations.
        confirmed = fetched + draw(st.integers(0, 2000)) * MINUTE
        if not last:
            confirmed = min(confirmed, midnight(START) + offsets[index + 1] * MINUTE)
        ranking = packing.pack_ranking(dict(enumerate(listed, start=1)))
        found.append(StoredSnapshot(fetched, confirmed, len(listed), ranking))
    return found


def stands_until(snapshots: list[StoredSnapshot], index: int) -> dt.datetime:
    """Until the next snapshot, at most STANDS_FOR past the last confirmation."""
    seen = snapshots[index].confirmed_at + STANDS_FOR
    return min(snapshots[index + 1].fetched_at, seen) if index + 1 < len(snapshots) else seen


def reference(snapshots: list[StoredSnapshot], day: dt.date) -> dict[int, tuple[int, ...]]:
    """app -> (best, worst, last, minutes) from the snapshots standing or fetched in `day`."""
    start, end = midnight(day), midnight(day) + DAY
    held: dict[int, list[int]] = {}
    minutes: dict[int, int] = {}
    for index, snapshot in enumerate(snapshots):
        until = stands_until(snapshots, index)
        counts = (snapshot.fetched_at < end and until > start) or start <= snapshot.fetched_at < end
        if not counts:
            continue
        moment, listed_minutes = max(snapshot.fetched_at, start), 0
        while moment < min(until, end):
            listed_minutes += 1
            moment += MINUTE
        for rank, app in packing.unpack_ranking(snapshot.ranked_app_ids).items():
            held.setdefault(app, []).append(rank)
            minutes[app] = minutes.get(app, 0) + listed_minutes
    return {app: (min(r), max(r), r[-1], minutes[app]) for app, r in held.items()}


@settings(max_examples=300, deadline=None)
@given(histories())
def test_each_day_summarises_what_every_app_held_minute_by_minute(
    snapshots: list[StoredSnapshot],
) -> None:
    end_day = START + dt.timedelta(days=6)
    summaries = {
        summary.day: summary
        for summary in fold(snapshots, first_day=START, end_day=end_day, stands_for=STANDS_FOR)
    }

    day = START
    while day < end_day:
        expected = reference(snapshots, day)
        summary = summaries.get(day)
        stood = any(midnight(day) <= s.fetched_at < midnight(day) + DAY for s in snapshots) or any(
            s.fetched_at < midnight(day) < stands_until(snapshots, i)
            for i, s in enumerate(snapshots)
        )
        assert (summary is not None) == stood, day
        if summary is not None:
            got = {app: (d.best, d.worst, d.last, d.minutes) for app, d in summary.apps.items()}
            assert got == expected, day
            app_ids, stats = summary.packed()
            for slot, app in enumerate(packing.slots(app_ids)):
                assert packing.day_stats_at(stats, slot) == expected[app]
        day += dt.timedelta(days=1)


def test_a_chart_unchanged_all_day_lists_its_apps_for_the_whole_day() -> None:
    fetched = midnight(START) - dt.timedelta(hours=3)
    ranking = packing.pack_ranking({1: 11, 2: 12})
    standing = StoredSnapshot(fetched, fetched + 3 * DAY, 2, ranking)

    (summary, *later) = fold(
        [standing], first_day=START, end_day=START + dt.timedelta(days=1), stands_for=STANDS_FOR
    )

    assert later == []
    assert summary.snapshots == 0
    assert {app: day.minutes for app, day in summary.apps.items()} == {11: 1440, 12: 1440}


def test_a_gap_nobody_polled_is_not_counted_as_listed() -> None:
    ranking = packing.pack_ranking({1: 11})
    seen = midnight(START) + dt.timedelta(hours=20)
    before_gap = StoredSnapshot(seen, seen + dt.timedelta(hours=1), 1, ranking)
    after_gap = StoredSnapshot(seen + 3 * DAY, seen + 3 * DAY, 1, ranking)

    summaries = list(
        fold(
            [before_gap, after_gap],
            first_day=START,
            end_day=START + dt.timedelta(days=5),
            stands_for=STANDS_FOR,
        )
    )

    # 20:00 to 23:00 (confirmed until 21:00, then two hours more), then nothing until the
    # next snapshot, which stands two hours.
    assert [(s.day, s.apps[11].minutes) for s in summaries] == [
        (START, 180),
        (START + dt.timedelta(days=3), 120),
    ]
