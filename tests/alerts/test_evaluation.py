"""Rule evaluation, poll by poll: which events each poll causes, and which it must not.

Scenario tests replay DeepSeek's climb and the noise cases one by one; the property tests
check the incremental evaluation against a reference model that looks at a whole rank history
at once (runs of polls where a condition holds), for random histories and rules.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import TypedDict

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from monitor.alerts.evaluation import (
    ChartUpdate,
    Episode,
    EpisodeKey,
    breadth_may_change,
    evaluate,
)
from monitor.alerts.model import AlertEvent, AppRef, EventState, RuleKind
from monitor.alerts.rules import Rule
from monitor.model import ChartKey, Collection, Device, Store

T0 = dt.datetime(2025, 1, 24, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
US_FREE = ChartKey(Store.APPLE, "us", Collection.TOP_FREE, Device.IPHONE)
DEEPSEEK = AppRef(Store.APPLE, "6737597349", "DeepSeek")
CHATGPT = AppRef(Store.APPLE, "6448311069", "ChatGPT")

Ranks = Mapping[AppRef, int | None]


class Chart:
    """Polls of one chart fed through `evaluate`, keeping the episodes as the store would."""

    def __init__(self, rules: Sequence[Rule], chart: ChartKey = US_FREE) -> None:
        self.rules = rules
        self.chart = chart
        self.episodes: dict[EpisodeKey, Episode] = {}
        self.previous: Ranks | None = None
        self.history: list[tuple[dt.datetime, Ranks]] = []

    def poll(
        self,
        at: dt.datetime,
        ranks: Ranks,
        *,
        depth: int = 100,
        countries: Mapping[AppRef, Mapping[str, int | None]] | None = None,
    ) -> list[AlertEvent]:
        windows = {rule.window for rule in self.rules if rule.window is not None}
        past = {window: self._ranks_at(at - window) for window in windows}
        update = ChartUpdate(
            chart=self.chart,
            at=at,
            depth=depth,
            ranks=ranks,
            previous=self.previous,
            past={window: value for window, value in past.items() if value is not None},
            countries=countries,
        )
        result = evaluate(update, self.episodes, self.rules)
        for key, episode in result.episodes.items():
            if episode is None:
                del self.episodes[key]
            else:
                self.episodes[key] = episode
        self.previous = ranks
        self.history.append((at, ranks))
        return list(result.events)

    def _ranks_at(self, at: dt.datetime) -> Ranks | None:
        earlier = [ranks for polled, ranks in self.history if polled <= at]
        return earlier[-1] if earlier else None


def summaries(events: Sequence[AlertEvent]) -> list[str]:
    return [event.summary for event in events]


CLIMB_RULES = [
    Rule("big-move", RuleKind.MOVED, places_up=10, places_down=10, send_resolved=False),
    Rule("top10", RuleKind.ENTERED_TOP, top=10),
    Rule("number-one", RuleKind.ENTERED_TOP, top=1),
    Rule("passed", RuleKind.RIVAL_PASSED, top=10, send_resolved=False),
]


def test_deepseeks_climb_past_chatgpt_is_told_poll_by_poll() -> None:
    chart = Chart(CLIMB_RULES)

    polls = [
        chart.poll(T0, {DEEPSEEK: 31, CHATGPT: 1}),
        chart.poll(T0 + HOUR, {DEEPSEEK: 12, CHATGPT: 1}),
        chart.poll(T0 + 2 * HOUR, {DEEPSEEK: 4, CHATGPT: 1}),
        chart.poll(T0 + 3 * HOUR, {DEEPSEEK: 1, CHATGPT: 2}),
    ]

    assert [summaries(events) for events in polls] == [
        [],  # the first poll is the baseline: nothing is known to have changed
        ["DeepSeek up 19 to #12 in US Top Free iPhone (was #31)"],
        ["DeepSeek in the top 10 of US Top Free iPhone at #4 (was #12)"],
        [
            "ChatGPT no longer #1 in US Top Free iPhone (now #2)",
            "DeepSeek #1 in US Top Free iPhone (was #4)",
            "DeepSeek passed ChatGPT in US Top Free iPhone: #1 vs #2",
        ],
    ]


def test_an_app_already_in_a_top_at_the_first_poll_is_no_news_but_leaving_it_is() -> None:
    chart = Chart([Rule("number-one", RuleKind.ENTERED_TOP, top=1)])

    start = chart.poll(T0, {CHATGPT: 1, DEEPSEEK: 4})
    loses = chart.poll(T0 + HOUR, {CHATGPT: 2, DEEPSEEK: 1})

    assert start == []
    assert summaries(loses) == [
        "ChatGPT no longer #1 in US Top Free iPhone (now #2)",
        "DeepSeek #1 in US Top Free iPhone (was #4)",
    ]


def test_an_unchanged_poll_repeats_nothing_and_firing_alerts_stay_quiet() -> None:
    chart = Chart(CLIMB_RULES)
    chart.poll(T0, {DEEPSEEK: 31, CHATGPT: 1})
    chart.poll(T0 + HOUR, {DEEPSEEK: 1, CHATGPT: 2})

    again = chart.poll(T0 + 2 * HOUR, {DEEPSEEK: 1, CHATGPT: 2})

    assert again == []
    firing = {key.rule for key, episode in chart.episodes.items() if episode.firing}
    assert firing == {"top10", "number-one", "passed"}


def test_leaving_a_top_resolves_its_alert_with_a_notice_unless_the_rule_turns_it_off() -> None:
    chart = Chart(CLIMB_RULES)
    chart.poll(T0, {DEEPSEEK: 31, CHATGPT: 1})
    chart.poll(T0 + HOUR, {DEEPSEEK: 1, CHATGPT: 2})

    back = chart.poll(T0 + 2 * HOUR, {DEEPSEEK: 3, CHATGPT: 1})

    # DeepSeek passing ChatGPT ends without a notice (its rule turns them off); ChatGPT
    # passing DeepSeek is an episode of its own.
    assert [(event.summary, event.state) for event in back] == [
        ("ChatGPT #1 in US Top Free iPhone (was #2)", EventState.FIRING),
        ("DeepSeek no longer #1 in US Top Free iPhone (now #3)", EventState.RESOLVED),
        ("ChatGPT passed DeepSeek in US Top Free iPhone: #1 vs #3", EventState.FIRING),
    ]


def test_dropping_out_is_an_alert_of_its_own_never_a_move_and_coming_back_resolves_it() -> None:
    rules = [
        Rule("big-move", RuleKind.MOVED, places_up=10, places_down=10),
        Rule("dropped", RuleKind.DROPPED_OUT),
    ]
    chart = Chart(rules)
    chart.poll(T0, {DEEPSEEK: 87})

    out = chart.poll(T0 + HOUR, {DEEPSEEK: None})
    still_out = chart.poll(T0 + 2 * HOUR, {DEEPSEEK: None})
    back = chart.poll(T0 + 3 * HOUR, {DEEPSEEK: 57})

    assert summaries(out) == ["DeepSeek dropped out of US Top Free iPhone (below #100, was #87)"]
    assert still_out == []
    assert summaries(back) == ["DeepSeek back in US Top Free iPhone at #57"]


def test_confirmation_holds_a_flapping_app_back_until_it_stays() -> None:
    chart = Chart([Rule("top10", RuleKind.ENTERED_TOP, top=10, confirm_snapshots=2)])
    chart.poll(T0, {DEEPSEEK: 11})

    flap_in = chart.poll(T0 + HOUR, {DEEPSEEK: 10})
    flap_out = chart.poll(T0 + 2 * HOUR, {DEEPSEEK: 11})
    enters = chart.poll(T0 + 3 * HOUR, {DEEPSEEK: 9})
    confirmed = chart.poll(T0 + 4 * HOUR, {DEEPSEEK: 8})

    assert flap_in == flap_out == enters == []  # and no resolved notice for the unfired flap
    assert summaries(confirmed) == ["DeepSeek in the top 10 of US Top Free iPhone at #8 (was #9)"]
    # The episode began with the poll that entered the top 10.
    assert confirmed[0].dedupe_key.endswith((T0 + 3 * HOUR).isoformat())


def test_a_duration_confirmation_waits_for_time_not_for_polls() -> None:
    rule = Rule("top10", RuleKind.ENTERED_TOP, top=10, confirm_for=dt.timedelta(minutes=90))
    chart = Chart([rule])
    chart.poll(T0, {DEEPSEEK: 11})

    early = chart.poll(T0 + HOUR, {DEEPSEEK: 10})
    still_early = chart.poll(T0 + 2 * HOUR, {DEEPSEEK: 10})
    late_enough = chart.poll(T0 + HOUR + dt.timedelta(minutes=90), {DEEPSEEK: 10})

    assert early == still_early == []
    assert len(late_enough) == 1


def test_a_firing_alert_repeats_after_the_repeat_interval_only() -> None:
    rule = Rule("lost", RuleKind.LEFT_TOP, top=1, repeat_interval=dt.timedelta(hours=3))
    chart = Chart([rule])
    chart.poll(T0, {CHATGPT: 1})

    first = chart.poll(T0 + HOUR, {CHATGPT: 2})
    quiet = [chart.poll(T0 + hours * HOUR, {CHATGPT: 2}) for hours in (2, 3)]
    repeated = chart.poll(T0 + 4 * HOUR, {CHATGPT: 3})

    assert len(first) == 1
    assert quiet == [[], []]
    assert summaries(repeated) == ["ChatGPT lost #1 in US Top Free iPhone (now #3)"]
    assert repeated[0].dedupe_key != first[0].dedupe_key


def test_a_move_within_a_window_compares_with_the_rank_that_long_ago() -> None:
    rule = Rule("day-move", RuleKind.MOVED, places_up=20, window=dt.timedelta(hours=24))
    chart = Chart([rule])

    # One place an hour for 30 hours: never 20 between two polls, 24 within a day.
    polls = [chart.poll(T0 + hours * HOUR, {DEEPSEEK: 60 - hours}) for hours in range(30)]

    fired = [(hours, events) for hours, events in enumerate(polls) if events]
    assert [(hours, summaries(events)) for hours, events in fired] == [
        (24, ["DeepSeek up 24 to #36 in US Top Free iPhone within 1d (was #60)"])
    ]  # one episode while the climb goes on


def test_rules_watch_only_the_apps_and_charts_they_select() -> None:
    rules = [Rule("ds-top10", RuleKind.ENTERED_TOP, top=10, apps=frozenset({"DeepSeek"}))]
    japan = Chart(rules, ChartKey(Store.APPLE, "jp", Collection.TOP_FREE, Device.IPHONE))
    us = Chart([dataclasses.replace(rules[0], countries=frozenset({"jp"}))])
    for chart in (japan, us):
        chart.poll(T0, {DEEPSEEK: 20, CHATGPT: 20})

    in_japan = japan.poll(T0 + HOUR, {DEEPSEEK: 5, CHATGPT: 5})
    in_us = us.poll(T0 + HOUR, {DEEPSEEK: 5, CHATGPT: 5})

    assert summaries(in_japan) == ["DeepSeek in the top 10 of JP Top Free iPhone at #5 (was #20)"]
    assert in_us == []


def test_rules_select_apps_by_store_id_too() -> None:
    rule = Rule("r", RuleKind.DROPPED_OUT, apps=frozenset({CHATGPT.store_id}))

    assert rule.watches(CHATGPT)
    assert not rule.watches(DEEPSEEK)


def test_breadth_fires_when_the_count_of_countries_crosses_and_resolves_below() -> None:
    rule = Rule("breadth", RuleKind.BREADTH, top=10, countries_needed=3)
    chart = Chart([rule])
    others = {"gb": 4, "de": 9, "fr": 30}
    chart.poll(T0, {DEEPSEEK: 12}, countries={DEEPSEEK: {**others, "us": 12}})

    crossed = chart.poll(T0 + HOUR, {DEEPSEEK: 2}, countries={DEEPSEEK: {**others, "us": 2}})
    fell = chart.poll(T0 + 2 * HOUR, {DEEPSEEK: 14}, countries={DEEPSEEK: {**others, "us": 14}})

    assert summaries(crossed) == [
        "DeepSeek in the top 10 in 3 countries (Top Free iPhone): DE, GB, US"
    ]
    assert crossed[0].chart is None
    assert summaries(fell) == [
        "DeepSeek in the top 10 in fewer than 3 countries (Top Free iPhone): now 2"
    ]


def test_an_app_entering_the_chart_below_another_was_not_passed_by_it() -> None:
    chart = Chart([Rule("passed", RuleKind.RIVAL_PASSED)])
    chart.poll(T0, {DEEPSEEK: None, CHATGPT: 1})

    enters = chart.poll(T0 + HOUR, {DEEPSEEK: 12, CHATGPT: 1})
    climbs_past = chart.poll(T0 + 2 * HOUR, {DEEPSEEK: 1, CHATGPT: 2})

    assert enters == []
    assert summaries(climbs_past) == ["DeepSeek passed ChatGPT in US Top Free iPhone: #1 vs #2"]


def test_an_app_coming_from_below_the_chart_past_a_listed_rival_passed_it() -> None:
    chart = Chart([Rule("passed", RuleKind.RIVAL_PASSED)])
    chart.poll(T0, {DEEPSEEK: None, CHATGPT: 50})

    assert summaries(chart.poll(T0 + HOUR, {DEEPSEEK: 10, CHATGPT: 50})) == [
        "DeepSeek passed ChatGPT in US Top Free iPhone: #10 vs #50"
    ]


def test_a_rival_that_dropped_out_was_not_passed() -> None:
    chart = Chart([Rule("passed", RuleKind.RIVAL_PASSED)])
    chart.poll(T0, {DEEPSEEK: 5, CHATGPT: 3})

    assert chart.poll(T0 + HOUR, {DEEPSEEK: 5, CHATGPT: None}) == []


def test_the_same_poll_evaluated_twice_gives_the_same_events() -> None:
    first, second = Chart(CLIMB_RULES), Chart(CLIMB_RULES)
    for chart in (first, second):
        chart.poll(T0, {DEEPSEEK: 31, CHATGPT: 1})

    once = first.poll(T0 + HOUR, {DEEPSEEK: 1, CHATGPT: 2})
    twice = second.poll(T0 + HOUR, {DEEPSEEK: 1, CHATGPT: 2})

    assert once == twice
    assert len({event.dedupe_key for event in once}) == len(once)


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        (lambda: Rule("m", RuleKind.MOVED), "needs places_up or places_down"),
        (lambda: Rule("m", RuleKind.MOVED, places_up=0), "at least 1"),
        (
            lambda: Rule("m", RuleKind.MOVED, places_up=5, confirm_snapshots=2),
            "confirm_snapshots > 1 needs a window",
        ),
        (lambda: Rule("t", RuleKind.ENTERED_TOP), "needs top >= 1"),
        (lambda: Rule("b", RuleKind.BREADTH, top=10), "countries_needed >= 1"),
        (lambda: Rule("t", RuleKind.LEFT_TOP, top=1, confirm_snapshots=0), "at least 1"),
    ],
)
def test_inconsistent_rules_are_refused_naming_the_rule(rule: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as refused:
        rule()  # type: ignore[operator]
    assert "alert rule '" in str(refused.value)


# -- against a reference model -----------------------------------------------------------------
#
# The reference looks at a whole history at once. A rule's condition holds on runs of polls;
# a run is an episode if it starts the way the rule wants (a sticky condition must be seen
# starting: from outside, known at the poll before), except that an app already in a top at
# the first poll fires silently (only its resolved notice is news). An episode fires at the
# first poll where it is confirmed, again at each repeat interval, and resolves at the poll
# after its run.


def episode_events(
    rule: Rule,
    holds: Sequence[bool],
    times: Sequence[dt.datetime],
    *,
    starts: Callable[[int], bool],
    silent_at_first_poll: bool = False,
) -> list[tuple[int, EventState]]:
    """(poll index, state) of every event; `starts(i)`: a run beginning at poll i is an
    episode."""
    events: list[tuple[int, EventState]] = []
    start = 0
    while start < len(holds):
        if not holds[start]:
            start += 1
            continue
        end = start
        while end + 1 < len(holds) and holds[end + 1]:
            end += 1
        resolves = end + 1 < len(holds) and rule.send_resolved
        if silent_at_first_poll and start == 0:
            if resolves:
                events.append((end + 1, EventState.RESOLVED))
        elif starts(start):
            notified: dt.datetime | None = None
            for index in range(start, end + 1):
                confirmed = (
                    index - start + 1 >= rule.confirm_snapshots
                    and times[index] - times[start] >= rule.confirm_for
                )
                repeat_due = (
                    notified is not None
                    and rule.repeat_interval is not None
                    and times[index] - notified >= rule.repeat_interval
                )
                if (notified is None and confirmed) or repeat_due:
                    events.append((index, EventState.FIRING))
                    notified = times[index]
            if notified is not None and resolves:
                events.append((end + 1, EventState.RESOLVED))
        start = end + 1
    return events


def reference_events(
    rule: Rule, ranks: Sequence[int | None], times: Sequence[dt.datetime]
) -> list[tuple[int, EventState]]:
    """One app on one chart, for the kinds about its own rank."""

    def inside(rank: int | None) -> bool:
        if rule.kind is RuleKind.ENTERED_TOP:
            return rank is not None and rank <= (rule.top or 0)
        if rule.kind is RuleKind.LEFT_TOP:
            return rank is None or rank > (rule.top or 0)
        return rank is None  # DROPPED_OUT

    def rank_as_of(moment: dt.datetime) -> int | None:
        earlier = [rank for at, rank in zip(times, ranks, strict=True) if at <= moment]
        return earlier[-1] if earlier else None

    def moved(index: int) -> bool:
        if rule.window is None:
            before = ranks[index - 1] if index > 0 else None
        else:
            before = rank_as_of(times[index] - rule.window)
        now = ranks[index]
        if now is None or before is None:
            return False
        up = before - now
        return (rule.places_up is not None and up >= rule.places_up) or (
            rule.places_down is not None and -up >= rule.places_down
        )

    if rule.kind is RuleKind.MOVED:
        return episode_events(
            rule, [moved(i) for i in range(len(ranks))], times, starts=lambda _: True
        )
    return episode_events(
        rule,
        [inside(rank) for rank in ranks],
        times,
        starts=lambda index: index > 0,
        silent_at_first_poll=rule.kind is RuleKind.ENTERED_TOP,
    )


RANK = st.one_of(st.none(), st.integers(min_value=1, max_value=30))
DURATION = st.integers(min_value=0, max_value=6).map(lambda hours: dt.timedelta(hours=hours))
GAPS = st.lists(st.integers(min_value=1, max_value=3), min_size=25, max_size=25)


def poll_times(gaps: Sequence[int], count: int) -> list[dt.datetime]:
    return [T0 + sum(gaps[:index], 0) * HOUR for index in range(count)]


class NoiseControl(TypedDict):
    confirm_snapshots: int
    confirm_for: dt.timedelta
    repeat_interval: dt.timedelta | None
    send_resolved: bool


@st.composite
def noise_control(draw: st.DrawFn) -> NoiseControl:
    """Confirmation, repeat and resolved notices, as any rule may have them."""
    return {
        # Mostly none: most rules have none, and others mask what happens between polls.
        "confirm_snapshots": draw(st.sampled_from([1, 1, 2, 3])),
        "confirm_for": draw(st.one_of(st.just(dt.timedelta(0)), DURATION)),
        "repeat_interval": draw(st.one_of(st.none(), DURATION.filter(bool))),
        "send_resolved": draw(st.booleans()),
    }


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    kind = draw(st.sampled_from([RuleKind.MOVED, RuleKind.ENTERED_TOP, RuleKind.LEFT_TOP,
                                 RuleKind.DROPPED_OUT]))  # fmt: skip
    places = st.one_of(st.none(), st.integers(min_value=1, max_value=15))
    up, down = draw(places), draw(places)
    if kind is RuleKind.MOVED and up is None and down is None:
        up = 1
    window = draw(st.one_of(st.none(), DURATION.filter(bool))) if kind is RuleKind.MOVED else None
    options = draw(noise_control())
    if kind is RuleKind.MOVED and window is None:
        options["confirm_snapshots"] = 1  # a move between two polls holds for one poll
    return Rule(
        "r",
        kind,
        places_up=up if kind is RuleKind.MOVED else None,
        places_down=down if kind is RuleKind.MOVED else None,
        window=window,
        top=draw(st.integers(min_value=1, max_value=20)),
        **options,
    )


@settings(max_examples=400, deadline=None)
@given(rule=rules(), ranks=st.lists(RANK, min_size=1, max_size=25), gaps=GAPS)
def test_incremental_evaluation_matches_the_whole_history_reference(
    rule: Rule, ranks: list[int | None], gaps: list[int]
) -> None:
    times = poll_times(gaps, len(ranks))
    chart = Chart([rule])

    seen = [
        (index, event.state)
        for index, (at, rank) in enumerate(zip(times, ranks, strict=True))
        for event in chart.poll(at, {DEEPSEEK: rank})
    ]

    assert seen == reference_events(rule, ranks, times)


def rival_reference_events(
    rule: Rule,
    ranks: Sequence[int | None],
    rival_ranks: Sequence[int | None],
    times: Sequence[dt.datetime],
) -> list[tuple[int, EventState]]:
    """The app passing its rival: ahead of it (both listed), and in the rule's top if it has
    one; a pass is seen when the rival was listed and not ahead of it at the poll before."""

    def ahead(index: int) -> bool:
        now, rival = ranks[index], rival_ranks[index]
        return now is not None and rival is not None and now < rival

    def inside(index: int) -> bool:
        now = ranks[index]
        return ahead(index) and (rule.top is None or (now is not None and now <= rule.top))

    def starts(index: int) -> bool:
        return index > 0 and rival_ranks[index - 1] is not None and not ahead(index - 1)

    return episode_events(rule, [inside(i) for i in range(len(ranks))], times, starts=starts)


@settings(max_examples=300, deadline=None)
@given(
    options=noise_control(),
    top=st.one_of(st.none(), st.integers(min_value=1, max_value=20)),
    ranks=st.lists(st.tuples(RANK, RANK), min_size=1, max_size=25),
    gaps=GAPS,
)
def test_rival_passes_match_the_whole_history_reference(
    options: NoiseControl,
    top: int | None,
    ranks: list[tuple[int | None, int | None]],
    gaps: list[int],
) -> None:
    rule = Rule(
        "passed",
        RuleKind.RIVAL_PASSED,
        apps=frozenset({DEEPSEEK.name}),
        rival=CHATGPT.name,
        top=top,
        **options,
    )
    times = poll_times(gaps, len(ranks))
    chart = Chart([rule])

    seen = [
        (index, event.state)
        for index, (at, (deepseek, chatgpt)) in enumerate(zip(times, ranks, strict=True))
        # Ranks are positions in one chart: two apps never share one.
        for event in chart.poll(
            at, {DEEPSEEK: deepseek, CHATGPT: None if chatgpt == deepseek else chatgpt}
        )
    ]

    deepseeks = [deepseek for deepseek, _ in ranks]
    chatgpts = [None if chatgpt == deepseek else chatgpt for deepseek, chatgpt in ranks]
    assert seen == rival_reference_events(rule, deepseeks, chatgpts, times)


class Kind:
    """The charts of one kind in several countries, polled one at a time, sharing the breadth
    episodes; the other countries' ranks are given only when the poll may change a count, as
    the store does (breadth_may_change)."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.episodes: dict[EpisodeKey, Episode] = {}
        self.latest: dict[str, int | None] = {}

    def poll(self, country: str, at: dt.datetime, rank: int | None) -> list[AlertEvent]:
        chart = dataclasses.replace(US_FREE, country=country)
        ranks = {DEEPSEEK: rank}
        previous = {DEEPSEEK: self.latest[country]} if country in self.latest else None
        self.latest[country] = rank
        update = ChartUpdate(
            chart=chart,
            at=at,
            depth=100,
            ranks=ranks,
            previous=previous,
            countries=(
                {DEEPSEEK: dict(self.latest)}
                if breadth_may_change([self.rule], chart, ranks, previous)
                else None
            ),
        )
        result = evaluate(update, self.episodes, [self.rule])
        for key, episode in result.episodes.items():
            if episode is None:
                del self.episodes[key]
            else:
                self.episodes[key] = episode
        return list(result.events)


def breadth_reference_events(
    rule: Rule, polls: Sequence[tuple[str, int | None]], times: Sequence[dt.datetime]
) -> list[tuple[int, EventState]]:
    """In the top in enough countries (each country's latest rank); a crossing is seen only
    on a chart polled before, whose previous rank gives the count before it."""
    latest: dict[str, int | None] = {}
    holds: list[bool] = []
    known: list[bool] = []
    for country, rank in polls:
        known.append(country in latest)
        latest[country] = rank
        leading = sum(1 for r in latest.values() if r is not None and r <= (rule.top or 0))
        holds.append(leading >= (rule.countries_needed or 0))
    return episode_events(rule, holds, times, starts=lambda index: known[index])


@settings(max_examples=300, deadline=None)
@given(
    options=noise_control(),
    top=st.integers(min_value=1, max_value=10),
    needed=st.integers(min_value=1, max_value=3),
    polls=st.lists(
        st.tuples(
            st.sampled_from(["us", "gb", "de"]),
            st.one_of(st.none(), st.integers(min_value=1, max_value=15)),
        ),
        min_size=1,
        max_size=25,
    ),
    gaps=GAPS,
)
@example(  # found by it: a breadth alert repeated only at polls that changed a count
    options={"confirm_snapshots": 1, "confirm_for": dt.timedelta(0), "repeat_interval": HOUR,
             "send_resolved": False},
    top=1, needed=1, polls=[("us", None), ("us", 1), ("gb", None)], gaps=[1] * 25,
)  # fmt: skip
def test_breadth_matches_the_whole_history_reference(
    options: NoiseControl,
    top: int,
    needed: int,
    polls: list[tuple[str, int | None]],
    gaps: list[int],
) -> None:
    rule = Rule("breadth", RuleKind.BREADTH, top=top, countries_needed=needed, **options)
    times = poll_times(gaps, len(polls))
    kind = Kind(rule)

    seen = [
        (index, event.state)
        for index, (at, (country, rank)) in enumerate(zip(times, polls, strict=True))
        for event in kind.poll(country, at, rank)
    ]

    assert seen == breadth_reference_events(rule, polls, times)


# -- charts served shorter than where the apps were ---------------------------------------------


def test_an_app_missing_from_a_chart_shallower_than_its_rank_is_unknown_until_one_tells() -> None:
    rules = [Rule("dropped", RuleKind.DROPPED_OUT), Rule("left50", RuleKind.LEFT_TOP, top=50)]
    chart = Chart(rules)
    chart.poll(T0, {DEEPSEEK: 87, CHATGPT: 45})

    shallow = chart.poll(T0 + HOUR, {DEEPSEEK: None, CHATGPT: None}, depth=37)
    # The store keeps an app's last known rank across a shallow snapshot (store/alerting.py).
    chart.previous = {DEEPSEEK: 87, CHATGPT: 45}
    deep = chart.poll(T0 + 2 * HOUR, {DEEPSEEK: None, CHATGPT: 45})

    assert shallow == []
    assert summaries(deep) == ["DeepSeek dropped out of US Top Free iPhone (below #100, was #87)"]


def test_a_shallow_chart_still_tells_what_its_depth_shows() -> None:
    rules = [Rule("top10", RuleKind.ENTERED_TOP, top=10), Rule("left50", RuleKind.LEFT_TOP, top=50)]
    chart = Chart(rules)
    chart.poll(T0, {DEEPSEEK: 5})

    shallow = chart.poll(T0 + HOUR, {DEEPSEEK: None}, depth=37)

    # Not in the first 37: out of the top 10 for sure; out of the top 50 is not known.
    assert [(event.rule, event.state) for event in shallow] == [("top10", EventState.RESOLVED)]


def test_a_pass_is_neither_ended_nor_told_again_while_both_apps_are_below_a_shallow_chart() -> None:
    rule = Rule(
        "passed", RuleKind.RIVAL_PASSED, apps=frozenset({DEEPSEEK.name}), rival=CHATGPT.name
    )
    chart = Chart([rule])
    chart.poll(T0, {DEEPSEEK: 60, CHATGPT: 50})
    passed = chart.poll(T0 + HOUR, {DEEPSEEK: 45, CHATGPT: 50})

    shallow = chart.poll(T0 + 2 * HOUR, {DEEPSEEK: None, CHATGPT: None}, depth=37)
    chart.previous = {DEEPSEEK: 45, CHATGPT: 50}
    still_ahead = chart.poll(T0 + 3 * HOUR, {DEEPSEEK: 44, CHATGPT: 50})

    assert [event.state for event in passed] == [EventState.FIRING]
    assert shallow == []
    assert still_ahead == []
