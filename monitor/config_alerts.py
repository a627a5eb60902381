"""The `[alerts]` section: rules, recipients, silences, quiet hours, and the policy built from it.

Rules are inline tables (`rules = [{name = "top", kind = "entered_top", top = [1, 10]}]`); a
list-valued `top` makes one rule per value, named "name-topN". Left unset, `rules` is the
default set below, which tells DeepSeek's January 2025 climb the way people told it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from monitor.alerts.model import RuleKind, Severity
from monitor.alerts.policy import AlertPolicy, QuietHours, Silence
from monitor.alerts.rules import Rule
from monitor.config_types import (
    Duration,
    MailAddress,
    NonEmptyStr,
    Secret,
    WebhookUrl,
    redact_url_password,
)
from monitor.model import Collection, Device, WatchedApp, watchlist_names

_QUIET_HOURS = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})\s+(\S+)$")


RuleName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,47}$")]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RuleSettings(_Model):
    name: RuleName
    kind: RuleKind
    severity: Severity = Severity.WARNING
    apps: list[NonEmptyStr] = []
    countries: list[Annotated[str, Field(pattern=r"^[a-z]{2}$")]] = []
    collections: list[Collection] = []
    devices: list[Device] = []
    places_up: int | None = None
    places_down: int | None = None
    window: Duration | None = None
    top: int | list[int] | None = None
    countries_needed: int | None = None
    rival: NonEmptyStr | None = None
    confirm_snapshots: int = 1
    confirm_for: Duration = dt.timedelta(0)
    repeat_interval: Duration | None = None
    send_resolved: bool = True
    recipients: list[MailAddress] = []

    @model_validator(mode="after")
    def _consistent(self) -> RuleSettings:
        self.rules()  # raises ValueError naming the rule and what is wrong
        return self

    def rules(self) -> list[Rule]:
        tops = self.top if isinstance(self.top, list) else [self.top]
        return [
            Rule(
                name=self.name if len(tops) == 1 else f"{self.name}-top{top}",
                kind=self.kind,
                severity=self.severity,
                apps=frozenset(self.apps),
                countries=frozenset(self.countries),
                collections=frozenset(self.collections),
                devices=frozenset(self.devices),
                places_up=self.places_up,
                places_down=self.places_down,
                window=self.window,
                top=top,
                countries_needed=self.countries_needed,
                rival=self.rival,
                confirm_snapshots=self.confirm_snapshots,
                confirm_for=self.confirm_for,
                repeat_interval=self.repeat_interval,
                send_resolved=self.send_resolved,
                recipients=tuple(self.recipients),
            )
            for top in tops
        ]


def _default_rules() -> list[RuleSettings]:
    return [
        # "DeepSeek up 19 to #12": a big move between two polls.
        RuleSettings(name="big-move", kind=RuleKind.MOVED, severity=Severity.INFO,
                     places_up=10, places_down=10, send_resolved=False),
        # "DeepSeek #1 in US Top Free iPhone (was #4)", and "no longer #1" when it goes.
        RuleSettings(name="top", kind=RuleKind.ENTERED_TOP, top=[1, 10]),
        # "DeepSeek passed ChatGPT ...: #1 vs #2", among the tracked apps in a top 10.
        RuleSettings(name="passed", kind=RuleKind.RIVAL_PASSED, top=10, send_resolved=False),
        # Out of the chart, and "back in ... at #57".
        RuleSettings(name="dropped-out", kind=RuleKind.DROPPED_OUT, severity=Severity.INFO),
        # "#1 in 51 other countries": in the top 10 of a chart in 5 or more storefronts.
        RuleSettings(name="breadth", kind=RuleKind.BREADTH, top=10, countries_needed=5),
    ]  # fmt: skip


class SilenceSettings(_Model):
    until: dt.datetime
    apps: list[NonEmptyStr] = []
    countries: list[Annotated[str, Field(pattern=r"^[a-z]{2}$")]] = []
    rules: list[NonEmptyStr] = []
    comment: str = ""

    @model_validator(mode="after")
    def _aware(self) -> SilenceSettings:
        if self.until.tzinfo is None:
            raise ValueError("until needs a time zone, e.g. 2025-02-01T00:00:00Z")
        return self

    def silence(self) -> Silence:
        return Silence(
            until=self.until.astimezone(dt.UTC),
            apps=frozenset(self.apps),
            countries=frozenset(self.countries),
            rules=frozenset(self.rules),
            comment=self.comment,
        )


def parse_quiet_hours(text: str) -> QuietHours | None:
    """ "HH:MM-HH:MM Area/City" (e.g. "22:00-07:00 Europe/Berlin"); "" for none."""
    if not text.strip():
        return None
    match = _QUIET_HOURS.match(text.strip())
    if not match:
        raise ValueError('expected "HH:MM-HH:MM Area/City", e.g. "22:00-07:00 Europe/Berlin"')
    start_h, start_m, end_h, end_m, zone = match.groups()
    try:
        timezone = ZoneInfo(zone)
        start, end = dt.time(int(start_h), int(start_m)), dt.time(int(end_h), int(end_m))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    return QuietHours(start, end, timezone)


def _quiet_hours(value: Any) -> Any:
    if isinstance(value, str):
        parse_quiet_hours(value)
    return value


class AlertsSettings(_Model):
    recipients: list[MailAddress] = []
    webhooks: Annotated[list[WebhookUrl], Secret(redact_url_password)] = []
    group_wait: Duration = dt.timedelta(minutes=1)
    quiet_hours: Annotated[str, BeforeValidator(_quiet_hours)] = ""
    glitch_share: Annotated[float, Field(gt=0, le=1)] = 0.5
    silences: list[SilenceSettings] = []
    rules: list[RuleSettings] = Field(default_factory=_default_rules)
    enabled: bool = True

    @model_validator(mode="after")
    def _unique_names(self) -> AlertsSettings:
        names = [rule.name for settings in self.rules for rule in settings.rules()]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique: {', '.join(duplicates)}")
        return self

    def policy(self, apps: Sequence[WatchedApp]) -> AlertPolicy:
        """The policy for the watchlist `apps` (their names and own recipients)."""
        return AlertPolicy(
            rules=tuple(rule for s in self.rules for rule in s.rules()) if self.enabled else (),
            app_names=watchlist_names(apps),
            recipients=tuple(self.recipients),
            app_recipients={
                (app.store, app.store_id): app.recipients for app in apps if app.recipients
            },
            webhooks=tuple(self.webhooks),
            silences=tuple(silence.silence() for silence in self.silences),
            quiet_hours=parse_quiet_hours(self.quiet_hours),
            group_wait=self.group_wait,
            glitch_share=self.glitch_share,
        )
