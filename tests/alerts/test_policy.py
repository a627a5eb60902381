"""Where events go and when: silences, quiet hours, recipients, the group wait; and the glitch
guard that holds a suspicious snapshot back."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from monitor.alerts.glitch import glitch_reason
from monitor.alerts.model import AlertEvent, AppRef, EventState, RuleKind, Severity
from monitor.alerts.policy import AlertPolicy, Channel, Delivery, QuietHours, Silence
from monitor.alerts.rules import Rule
from monitor.model import ChartKey, Collection, Device, Store

T0 = dt.datetime(2025, 1, 26, 12, 0, tzinfo=dt.UTC)
DEEPSEEK = AppRef(Store.APPLE, "6737597349", "DeepSeek")
US_FREE = ChartKey(Store.APPLE, "us", Collection.TOP_FREE, Device.IPHONE)
JP_FREE = ChartKey(Store.APPLE, "jp", Collection.TOP_FREE, Device.IPHONE)
BERLIN = ZoneInfo("Europe/Berlin")


def event(
    *, rule: str = "top10", chart: ChartKey | None = US_FREE, at: dt.datetime = T0
) -> AlertEvent:
    return AlertEvent(
        rule=rule,
        kind=RuleKind.ENTERED_TOP,
        state=EventState.FIRING,
        severity=Severity.WARNING,
        app=DEEPSEEK,
        chart=chart,
        scope="US Top Free iPhone",
        at=at,
        rank=4,
        previous_rank=12,
        depth=100,
        summary="DeepSeek in the top 10 of US Top Free iPhone at #4 (was #12)",
    )


@pytest.mark.parametrize(
    ("silence", "silenced"),
    [
        (Silence(until=T0 + dt.timedelta(hours=1)), True),
        (Silence(until=T0), False),  # expired at the event's time
        (Silence(until=T0 + dt.timedelta(days=1), apps=frozenset({"DeepSeek"})), True),
        (Silence(until=T0 + dt.timedelta(days=1), apps=frozenset({DEEPSEEK.store_id})), True),
        (Silence(until=T0 + dt.timedelta(days=1), apps=frozenset({"ChatGPT"})), False),
        (Silence(until=T0 + dt.timedelta(days=1), countries=frozenset({"us"})), True),
        (Silence(until=T0 + dt.timedelta(days=1), countries=frozenset({"jp"})), False),
        (Silence(until=T0 + dt.timedelta(days=1), rules=frozenset({"top10"})), True),
        (Silence(until=T0 + dt.timedelta(days=1), rules=frozenset({"big-move"})), False),
    ],
)
def test_a_silence_matches_by_app_country_rule_and_time(silence: Silence, silenced: bool) -> None:
    policy = AlertPolicy(silences=(silence,))

    assert (policy.silence_for(event()) is silence) is silenced


def test_a_country_silence_does_not_match_a_breadth_event_across_countries() -> None:
    silence = Silence(until=T0 + dt.timedelta(days=1), countries=frozenset({"us"}))

    assert not silence.matches(event(chart=None))


@pytest.mark.parametrize(
    ("local", "released"),
    [
        ("2025-01-26 21:59", None),
        ("2025-01-26 22:00", "2025-01-27 07:00"),
        ("2025-01-26 23:30", "2025-01-27 07:00"),
        ("2025-01-27 03:00", "2025-01-27 07:00"),
        ("2025-01-27 07:00", None),
        ("2025-07-01 23:00", "2025-07-02 07:00"),  # summer time: same local hours
    ],
)
def test_quiet_hours_across_midnight_hold_events_until_their_local_end(
    local: str, released: str | None
) -> None:
    quiet = QuietHours(dt.time(22, 0), dt.time(7, 0), BERLIN)
    at = dt.datetime.fromisoformat(local).replace(tzinfo=BERLIN).astimezone(dt.UTC)

    result = quiet.release(at)

    expected = (
        at if released is None else dt.datetime.fromisoformat(released).replace(tzinfo=BERLIN)
    )
    assert result == expected
    assert result.tzinfo is dt.UTC


def test_quiet_hours_within_a_day() -> None:
    quiet = QuietHours(dt.time(12, 0), dt.time(14, 0), dt.UTC)

    assert quiet.release(T0 + dt.timedelta(minutes=30)) == T0 + dt.timedelta(hours=2)
    assert quiet.release(T0 - dt.timedelta(minutes=1)) == T0 - dt.timedelta(minutes=1)


def test_events_go_to_the_rules_recipients_or_the_default_ones_after_the_group_wait() -> None:
    rules = (
        Rule("top10", RuleKind.ENTERED_TOP, top=10, recipients=("growth@example.com",)),
        Rule("big-move", RuleKind.MOVED, places_up=10),
    )
    policy = AlertPolicy(
        rules=rules,
        recipients=("ops@example.com",),
        webhooks=("http://127.0.0.1:9/hook",),
        group_wait=dt.timedelta(seconds=30),
    )
    later = T0 + dt.timedelta(seconds=30)

    assert policy.deliveries(event(), now=T0) == [
        Delivery(Channel.EMAIL, "growth@example.com", later),
        Delivery(Channel.WEBHOOK, "http://127.0.0.1:9/hook", later),
    ]
    assert [d.recipient for d in policy.deliveries(event(rule="big-move"), now=T0)] == [
        "ops@example.com",
        "http://127.0.0.1:9/hook",
    ]


def test_an_apps_own_recipients_get_its_events_besides_the_default_ones() -> None:
    policy = AlertPolicy(
        rules=(
            Rule("only-growth", RuleKind.ENTERED_TOP, top=1, recipients=("growth@example.com",)),
        ),
        recipients=("ops@example.com",),
        app_recipients={(Store.APPLE, DEEPSEEK.store_id): ("ds@example.com", "ops@example.com")},
    )

    assert [d.recipient for d in policy.deliveries(event(), now=T0)] == [
        "ops@example.com",
        "ds@example.com",
    ]
    # A rule that names its recipients sends to them alone.
    assert [d.recipient for d in policy.deliveries(event(rule="only-growth"), now=T0)] == [
        "growth@example.com"
    ]


def test_deliveries_wait_for_the_end_of_quiet_hours() -> None:
    policy = AlertPolicy(
        recipients=("ops@example.com",),
        quiet_hours=QuietHours(dt.time(11, 0), dt.time(13, 0), dt.UTC),
    )

    (delivery,) = policy.deliveries(event(), now=T0)

    assert delivery.not_before == T0 + dt.timedelta(hours=1)


# -- glitch guard --------------------------------------------------------------------------------

CHART = list(range(1, 101))


def test_an_hourly_reshuffle_is_no_glitch() -> None:
    after = [*CHART[:4], 500, *CHART[4:99]]  # a new app at #5 pushes everything below down
    after[20], after[30] = after[30], after[20]

    assert glitch_reason(CHART, after, share=0.5) is None


def test_a_different_chart_served_is_a_glitch() -> None:
    reason = glitch_reason(CHART, list(range(1001, 1101)), share=0.5)

    assert (
        reason
        == "100 of 100 entries changed at once (100 left the chart, 0 moved more than 10 places)"
    )


def test_a_scrambled_chart_is_a_glitch() -> None:
    reason = glitch_reason(CHART, list(reversed(CHART)), share=0.5)

    assert reason is not None
    assert "moved more than 10 places" in reason


def test_a_chart_that_lost_most_entries_is_a_glitch() -> None:
    assert glitch_reason(CHART, CHART[:30], share=0.5) == (
        "the chart shrank from 100 to 30 entries"
    )


def test_gaps_are_not_entries_and_an_empty_baseline_has_nothing_to_disturb() -> None:
    with_gaps = [0 if rank % 2 else app for rank, app in enumerate(CHART)]

    assert glitch_reason(with_gaps, with_gaps, share=0.5) is None
    assert glitch_reason([], CHART, share=0.5) is None
