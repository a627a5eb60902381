"""The [alerts] settings: the default rules, rule options, silences, quiet hours, and the
errors a bad value gets."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from monitor.alerts.model import RuleKind
from monitor.config import load_settings
from monitor.config_alerts import AlertsSettings
from monitor.errors import ConfigError
from monitor.model import Store, WatchedApp

WATCHLIST = [
    WatchedApp(Store.APPLE, "6737597349", "DeepSeek", recipients=("ds-fans@example.com",)),
    WatchedApp(Store.APPLE, "6448311069", "ChatGPT"),
]
NAMES = {(Store.APPLE, "6737597349"): "DeepSeek", (Store.APPLE, "6448311069"): "ChatGPT"}


def test_the_default_rules_tell_a_climb_to_number_one() -> None:
    policy = AlertsSettings().policy(WATCHLIST)

    assert [(rule.name, rule.kind, rule.top) for rule in policy.rules] == [
        ("big-move", RuleKind.MOVED, None),
        ("top-top1", RuleKind.ENTERED_TOP, 1),
        ("top-top10", RuleKind.ENTERED_TOP, 10),
        ("passed", RuleKind.RIVAL_PASSED, 10),
        ("dropped-out", RuleKind.DROPPED_OUT, None),
        ("breadth", RuleKind.BREADTH, 10),
    ]
    assert policy.app_names == NAMES
    assert policy.recipients == ()
    assert policy.app_recipients == {(Store.APPLE, "6737597349"): ("ds-fans@example.com",)}
    assert policy.group_wait == dt.timedelta(minutes=1)


def test_rules_from_settings_with_their_options() -> None:
    settings = AlertsSettings.model_validate(
        {
            "recipients": ["ops@example.com"],
            "rules": [
                {
                    "name": "ds-day-move",
                    "kind": "moved",
                    "apps": ["DeepSeek"],
                    "countries": ["us", "gb"],
                    "places_up": 20,
                    "window": "1d",
                    "confirm_snapshots": 2,
                    "repeat_interval": "12h",
                    "recipients": ["growth@example.com"],
                }
            ],
        }
    )

    (rule,) = settings.policy(WATCHLIST).rules
    assert rule.window == dt.timedelta(days=1)
    assert rule.repeat_interval == dt.timedelta(hours=12)
    assert rule.countries == frozenset({"us", "gb"})
    assert rule.recipients == ("growth@example.com",)


def test_disabled_alerting_has_no_rules() -> None:
    assert AlertsSettings(enabled=False).policy(WATCHLIST).rules == ()


def errors(values: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as invalid:
        AlertsSettings.model_validate(values)
    return str(invalid.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rules": [{"name": "m", "kind": "moved"}]}, "alert rule 'm': a moved rule needs"),
        ({"rules": [{"name": "t", "kind": "entered_top"}]}, "needs top >= 1"),
        ({"rules": [{"name": "x", "kind": "sideways"}]}, "kind"),
        ({"rules": [{"name": "Top 10", "kind": "dropped_out"}]}, "name"),
        (
            {"rules": [{"name": "a", "kind": "dropped_out"}, {"name": "a", "kind": "dropped_out"}]},
            "rule names must be unique: a",
        ),
        ({"recipients": ["not an address"]}, "expected a plain ASCII e-mail address"),
        ({"quiet_hours": "22-07"}, 'expected "HH:MM-HH:MM Area/City"'),
        ({"quiet_hours": "22:00-07:00 Mars/Olympus"}, "Mars/Olympus"),
        ({"silences": [{"until": "2025-02-01T00:00:00"}]}, "until needs a time zone"),
        ({"glitch_share": 0}, "glitch_share"),
    ],
)
def test_bad_alert_settings_say_what_is_wrong(values: dict[str, Any], message: str) -> None:
    assert message in errors(values)


def test_quiet_hours_and_silences_become_the_policys() -> None:
    settings = AlertsSettings.model_validate(
        {
            "quiet_hours": "22:00-07:00 Europe/Berlin",
            "silences": [{"until": "2025-02-01T00:00:00+01:00", "apps": ["DeepSeek"]}],
        }
    )

    policy = settings.policy(WATCHLIST)
    assert policy.quiet_hours is not None
    assert (policy.quiet_hours.start, policy.quiet_hours.end) == (dt.time(22), dt.time(7))
    assert policy.quiet_hours.timezone == ZoneInfo("Europe/Berlin")
    (silence,) = policy.silences
    assert silence.until == dt.datetime(2025, 1, 31, 23, 0, tzinfo=dt.UTC)
    assert silence.apps == frozenset({"DeepSeek"})


def test_a_watchlist_app_can_name_its_own_recipients() -> None:
    entry = '[{"store_id": "1234567890", "name": "Rival", "recipients": ["rival@example.com"]}]'
    settings = load_settings(None, {"MONITOR_WATCHLIST_APPS": entry})

    (rival,) = [app for app in settings.watched_apps() if app.name == "Rival"]
    assert rival.recipients == ("rival@example.com",)
    assert settings.alerts.policy(settings.watched_apps()).app_recipients == {
        (Store.APPLE, "1234567890"): ("rival@example.com",)
    }


def test_a_bad_recipient_in_the_watchlist_is_refused_naming_it() -> None:
    entry = '[{"store_id": "1", "name": "X", "recipients": ["nobody"]}]'

    with pytest.raises(ConfigError) as refused:
        load_settings(None, {"MONITOR_WATCHLIST_APPS": entry})

    assert "expected a plain ASCII e-mail address" in str(refused.value)
