"""What a demo run did, read back from its database: the numbers its summary prints."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
from collections.abc import Mapping

from monitor.alerts.model import EventState, chart_title
from monitor.config_types import format_duration
from monitor.model import ChartKey, RankStatus, Store
from monitor.store.repository import Repository

# More alert events than any scenario of days raises; `alerts list` caps its limit alike.
ALERTS_COUNTED = 100_000


@dataclasses.dataclass(frozen=True)
class NumberOne:
    """A tracked app taking #1 of a chart from whoever held it."""

    at: dt.datetime
    app: str
    chart: ChartKey


@dataclasses.dataclass(frozen=True)
class DemoSummary:
    first: dt.datetime
    last: dt.datetime  # the last simulated moment the demo ran
    complete: bool  # False: stopped (SIGINT, SIGTERM) before the end of the scenario
    polls: int
    failed_polls: int
    snapshots: int  # stored in the database
    alerts_by_rule: Mapping[str, int]  # firing events, resolved notices apart
    resolved: int
    emails: int  # sent to the SMTP server, or written as files
    pending: int  # notifications not sent by the end (quiet hours, retries)
    number_ones: tuple[NumberOne, ...]

    def lines(self, *, emails_went_to: str) -> list[str]:
        fired = sum(self.alerts_by_rule.values())
        by_rule = ", ".join(f"{rule} {count}" for rule, count in self.alerts_by_rule.items())
        lines = [
            f"simulated: {_when(self.first)} to {_when(self.last)}"
            f" ({format_duration(self.last - self.first)})",
            f"polls: {self.polls} ({self.failed_polls} failed)",
            f"snapshots stored: {self.snapshots}",
            f"alerts fired: {fired}" + (f" ({by_rule})" if by_rule else ""),
            f"resolved notices: {self.resolved}",
            f"emails: {self.emails} {emails_went_to}",
        ]
        if self.pending:
            lines.append(f"notifications still queued: {self.pending}")
        lines += [
            f"#1: {one.app} in {chart_title(one.chart)} at {_when(one.at)}"
            for one in self.number_ones
        ]
        return lines


def _when(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC")


def alert_counts(
    repository: Repository, app_names: Mapping[tuple[Store, str], str]
) -> tuple[dict[str, int], int]:
    """Firing alert events per rule (most first, then by name) and resolved notices."""
    records = repository.recent_alerts(limit=ALERTS_COUNTED, app_names=app_names)
    fired = collections.Counter(
        record.event.rule for record in records if record.event.state is EventState.FIRING
    )
    resolved = sum(1 for record in records if record.event.state is EventState.RESOLVED)
    ordered = sorted(fired.items(), key=lambda item: (-item[1], item[0]))
    return dict(ordered), resolved


def number_ones(
    repository: Repository, app_names: Mapping[tuple[Store, str], str]
) -> list[NumberOne]:
    """Every time a tracked app took #1 of a chart, in time order (not an app that was #1
    in a chart's first snapshot: nobody saw it take the top)."""
    moments = []
    for status in repository.tracked_apps():
        app = status.app
        name = app_names.get((app.store, app.store_id), app.name)
        before: dict[ChartKey, int | None] = {}
        for point in repository.history(app.id):  # by chart, then time
            if point.status is RankStatus.FETCH_FAILED:
                continue  # a gap, not a change of rank
            if point.rank == 1 and point.chart in before and before[point.chart] != 1:
                moments.append(NumberOne(point.at, name, point.chart))
            before[point.chart] = point.rank
    return sorted(moments, key=lambda one: (one.at, one.chart, one.app))
