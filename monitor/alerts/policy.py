"""Who gets an alert event, and when: recipients, silences, quiet hours, the group wait."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Mapping
from zoneinfo import ZoneInfo

from monitor.alerts.model import AlertEvent
from monitor.alerts.rules import Rule
from monitor.model import Store


class Channel(enum.StrEnum):
    EMAIL = "email"
    WEBHOOK = "webhook"


@dataclasses.dataclass(frozen=True)
class Silence:
    """Keeps matching events from being sent until `until`. Empty selections match all."""

    until: dt.datetime
    apps: frozenset[str] = frozenset()  # watchlist names or store ids
    countries: frozenset[str] = frozenset()
    rules: frozenset[str] = frozenset()
    comment: str = ""

    def matches(self, event: AlertEvent) -> bool:
        country = event.chart.country if event.chart is not None else None
        return (
            event.at < self.until
            and (not self.apps or bool({event.app.name, event.app.store_id} & self.apps))
            and (not self.countries or country in self.countries)
            and (not self.rules or event.rule in self.rules)
        )

    def describe(self) -> str:
        parts = [f"until {self.until.isoformat()}"]
        for name, values in (("apps", self.apps), ("countries", self.countries),
                             ("rules", self.rules)):  # fmt: skip
            if values:
                parts.append(f"{name} {', '.join(sorted(values))}")
        if self.comment:
            parts.append(repr(self.comment))
        return "silence " + "; ".join(parts)


@dataclasses.dataclass(frozen=True)
class QuietHours:
    """A daily span in local time (it may cross midnight) when nothing is sent: what falls
    in it waits for its end."""

    start: dt.time
    end: dt.time
    timezone: ZoneInfo

    def release(self, at: dt.datetime) -> dt.datetime:
        """`at` if it is outside the quiet hours, else when they end."""
        local = at.astimezone(self.timezone)
        day = local.date()
        start = dt.datetime.combine(day, self.start, self.timezone)
        end = dt.datetime.combine(day, self.end, self.timezone)
        if self.start <= self.end:
            release = end if start <= local < end else None
        elif local >= start:  # quiet hours that cross midnight, e.g. 22:00-07:00
            release = dt.datetime.combine(day + dt.timedelta(days=1), self.end, self.timezone)
        else:
            release = end if local < end else None
        return at if release is None else release.astimezone(dt.UTC)


@dataclasses.dataclass(frozen=True)
class Delivery:
    channel: Channel
    recipient: str
    not_before: dt.datetime


@dataclasses.dataclass(frozen=True)
class AlertPolicy:
    """The rules and where their events go: to `recipients` and the app's own recipients, or
    to the rule's recipients alone when it names some."""

    rules: tuple[Rule, ...] = ()
    # The watchlist's names, (store, store id) -> name: how events name apps.
    app_names: Mapping[tuple[Store, str], str] = dataclasses.field(default_factory=dict)
    recipients: tuple[str, ...] = ()
    # An app's own recipients (from the watchlist), besides `recipients`.
    app_recipients: Mapping[tuple[Store, str], tuple[str, ...]] = dataclasses.field(
        default_factory=dict
    )
    webhooks: tuple[str, ...] = ()
    silences: tuple[Silence, ...] = ()
    quiet_hours: QuietHours | None = None
    # Events of one poll round reach the outbox over a few seconds to minutes: the sender
    # waits this long after the first so that they go out together.
    group_wait: dt.timedelta = dt.timedelta(minutes=1)
    glitch_share: float = 0.5

    def silence_for(self, event: AlertEvent) -> Silence | None:
        return next((silence for silence in self.silences if silence.matches(event)), None)

    def deliveries(self, event: AlertEvent, *, now: dt.datetime) -> list[Delivery]:
        rule = next((rule for rule in self.rules if rule.name == event.rule), None)
        if rule is not None and rule.recipients:
            recipients = rule.recipients
        else:
            own = self.app_recipients.get((event.app.store, event.app.store_id), ())
            recipients = tuple(dict.fromkeys((*self.recipients, *own)))
        not_before = now + self.group_wait
        if self.quiet_hours is not None:
            not_before = self.quiet_hours.release(not_before)
        return [
            *(Delivery(Channel.EMAIL, recipient, not_before) for recipient in recipients),
            *(Delivery(Channel.WEBHOOK, url, not_before) for url in self.webhooks),
        ]
