"""Alert rules: what to watch for, on which targets, and how a condition becomes an alert.

A rule's condition is checked for each target (an app on a chart; for breadth rules, an app
across the countries of one kind of chart) at every successful poll of the chart. It becomes
an alert as in Alertmanager: it fires once it has held for `confirm_snapshots` polls and for
`confirm_for`, then stays quiet while it holds (but for `repeat_interval`), and resolves when
it stops holding, with a resolved notice if `send_resolved`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from monitor.alerts.model import AppRef, RuleKind, Severity
from monitor.model import ChartKey, Collection, Device


@dataclasses.dataclass(frozen=True)
class Rule:
    """One alert rule. Empty selections (`apps`, `countries`, ...) select everything.

    `apps` and `rival` name apps by watchlist name or store id. Thresholds by kind: MOVED uses
    `places_up` / `places_down` (either may be None: that direction is not watched) against
    the previous poll, or against the rank `window` ago; ENTERED_TOP / LEFT_TOP use `top`;
    RIVAL_PASSED passes `rival` (None: any other tracked app), only into the `top` if set;
    BREADTH counts the countries where the app is in the `top` against `countries_needed`.
    """

    name: str
    kind: RuleKind
    severity: Severity = Severity.WARNING
    apps: frozenset[str] = frozenset()
    countries: frozenset[str] = frozenset()
    collections: frozenset[Collection] = frozenset()
    devices: frozenset[Device] = frozenset()
    places_up: int | None = None
    places_down: int | None = None
    window: dt.timedelta | None = None
    top: int | None = None
    countries_needed: int | None = None
    rival: str | None = None
    confirm_snapshots: int = 1
    confirm_for: dt.timedelta = dt.timedelta(0)
    repeat_interval: dt.timedelta | None = None
    send_resolved: bool = True
    recipients: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ValueError(f"alert rule {self.name!r}: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        problems = []
        if self.confirm_snapshots < 1:
            problems.append("confirm_snapshots must be at least 1")
        if self.kind is RuleKind.MOVED:
            if self.places_up is None and self.places_down is None:
                problems.append("a moved rule needs places_up or places_down")
            if any(p is not None and p < 1 for p in (self.places_up, self.places_down)):
                problems.append("places_up and places_down must be at least 1")
            if self.window is None and self.confirm_snapshots > 1:
                # Against the previous poll a move holds for one poll only: it could never
                # be confirmed by a second one.
                problems.append("confirm_snapshots > 1 needs a window (a move between two "
                                "polls holds for one poll only)")  # fmt: skip
        if self.kind in (RuleKind.ENTERED_TOP, RuleKind.LEFT_TOP, RuleKind.BREADTH) and (
            self.top is None or self.top < 1
        ):
            problems.append(f"a {self.kind} rule needs top >= 1")
        if self.kind is RuleKind.BREADTH and (
            self.countries_needed is None or self.countries_needed < 1
        ):
            problems.append("a breadth rule needs countries_needed >= 1")
        return problems

    def watches(self, app: AppRef) -> bool:
        return not self.apps or bool({app.name, app.store_id} & self.apps)

    def covers(self, chart: ChartKey) -> bool:
        return (
            (not self.countries or chart.country in self.countries)
            and (not self.collections or chart.collection in self.collections)
            and (not self.devices or chart.device in self.devices)
        )

    def is_rival(self, app: AppRef) -> bool:
        return self.rival is None or self.rival in (app.name, app.store_id)
