"""The status page at `/`: tracked apps' current ranks with sparklines, feed and schedule health.

Server-rendered from monitor/templates/status.html, without JavaScript. Names and errors come
from the stores and the network: the template escapes everything, and the sparklines are
computed here so that only numbers reach the SVG.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from monitor import __version__
from monitor.config_types import format_duration
from monitor.errors import StoreError
from monitor.metrics import ServiceMetrics
from monitor.metrics_state import unique_app_labels
from monitor.model import FetchOutcome, RankPoint, RankStatus, Store
from monitor.store.repository import CurrentRank, Repository, ServiceState, TrackedAppStatus

log = logging.getLogger(__name__)

SPARKLINE_WINDOW = dt.timedelta(days=7)
# Per app: enough for the default 33 charts, few enough for a fast page on a world poll.
SPARKLINE_CHARTS = 36
SPARKLINE_WIDTH = 120
SPARKLINE_HEIGHT = 24
# Keeps the stroke of the top and bottom ranks inside the box.
_PAD = 2.0
# Trimmed off each side of a break, so that one failed poll in a week still shows as a gap.
_GAP = 1.0

_TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent / "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

Vertex = tuple[dt.datetime, int]


def held_ranks(
    points: Sequence[RankPoint], current: CurrentRank, *, since: dt.datetime
) -> list[list[Vertex]]:
    """The ranks the app held on `current.chart` from `since`: step lines of (time, rank).

    `points` are the chart's history points from `since`, in time order. A snapshot is stored
    only when the chart changed, so its rank holds until the next point, and the latest one's
    until the chart was last confirmed. Lines break where the app was not listed and at failed
    polls; after failures the rank held before resumes from the last one (the poll that then
    succeeded found no change), unless no poll has succeeded since.
    """
    lines: list[list[Vertex]] = []
    line: list[Vertex] = []
    # A latest snapshot older than the window is all there is to know about the window.
    rank = current.rank if current.fetched_at < since else None
    if rank is not None:
        line.append((since, rank))
    failed_at: dt.datetime | None = None

    def end_line(at: dt.datetime) -> None:
        nonlocal line
        if line:
            # max(): the history is read after the state, and may hold a newer snapshot.
            last_at, last_rank = line[-1]
            lines.append([*line, (max(at, last_at), last_rank)])
            line = []

    for point in points:
        if point.status is RankStatus.FETCH_FAILED:
            end_line(point.at)
            failed_at = point.at
            continue
        if failed_at is not None and rank is not None:
            line = [(failed_at, rank)]
        failed_at = None
        if point.rank is None:
            end_line(point.at)
        elif line:
            line += [(point.at, line[-1][1]), (point.at, point.rank)]
        else:
            line = [(point.at, point.rank)]
        rank = point.rank
    if failed_at is not None and rank is not None and current.confirmed_at > failed_at:
        line = [(failed_at, rank)]
    end_line(max(current.confirmed_at, since))
    return lines


@dataclasses.dataclass(frozen=True)
class Sparkline:
    """SVG polyline coordinates: time from left to right, rank on a log scale from 1 at the top
    to the chart's depth at the bottom (so moves near the top show, and rows compare)."""

    polylines: tuple[str, ...]
    best: int
    worst: int
    width: int = SPARKLINE_WIDTH
    height: int = SPARKLINE_HEIGHT


def sparkline(
    lines: Sequence[Sequence[Vertex]], *, since: dt.datetime, until: dt.datetime, depth: int
) -> Sparkline | None:
    """`lines` from `held_ranks` drawn over [since, until]; None when there is none."""
    if not lines:
        return None
    ranks = [rank for line in lines for _, rank in line]
    bottom = math.log(max(depth, *ranks, 2))
    seconds = (until - since).total_seconds()

    def x(at: dt.datetime) -> float:
        return min(max((at - since).total_seconds() / seconds, 0.0), 1.0) * SPARKLINE_WIDTH

    def y(rank: int) -> float:
        return _PAD + math.log(rank) / bottom * (SPARKLINE_HEIGHT - 2 * _PAD)

    polylines = []
    for index, line in enumerate(lines):
        xs = [x(at) for at, _ in line]
        if index > 0:
            xs[0] = min(xs[0] + _GAP, xs[1])
        if index < len(lines) - 1:
            xs[-1] = max(xs[-1] - _GAP, xs[-2])
        # A rank held for minutes is still drawn, as a dash.
        xs[-1] = max(xs[-1], xs[0] + 1.0)
        vertices = [f"{px:.1f},{y(rank):.1f}" for px, (_, rank) in zip(xs, line, strict=True)]
        polylines.append(" ".join(vertex for vertex, _ in itertools.groupby(vertices)))
    return Sparkline(tuple(polylines), best=min(ranks), worst=max(ranks))


@dataclasses.dataclass(frozen=True)
class ChartRank:
    current: CurrentRank
    sparkline: Sparkline | None


@dataclasses.dataclass(frozen=True)
class AppView:
    """A tracked app: charts listing it now, or within the window among its first
    `sparkline_charts` charts, are shown (best rank first, with a sparkline where there is one);
    the others are only counted and listed folded."""

    label: str
    status: TrackedAppStatus
    shown: tuple[ChartRank, ...]
    unlisted: tuple[CurrentRank, ...]


def ago(elapsed: dt.timedelta) -> str:
    """`elapsed` in its two largest units, rounded down: "45s", "12m5s", "3h", "1d23h"."""
    text = format_duration(dt.timedelta(seconds=max(int(elapsed.total_seconds()), 0)))
    return "".join(re.findall(r"\d+[a-z]", text)[:2])


def utc(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


_TEMPLATES.filters["utc"] = utc


class StatusPage:
    """Renders the page from one read of the service state, plus one history read per app."""

    def __init__(
        self,
        repository: Repository,
        metrics: ServiceMetrics,
        *,
        app_names: Mapping[tuple[Store, str], str],
        clock: Callable[[], dt.datetime],
        grafana_url: str | None = None,
        api_enabled: bool = True,
        window: dt.timedelta = SPARKLINE_WINDOW,
        sparkline_charts: int = SPARKLINE_CHARTS,
    ) -> None:
        self._repository = repository
        self._metrics = metrics
        self._app_names = app_names
        self._clock = clock
        self._grafana_url = grafana_url
        self._api_enabled = api_enabled
        self._window = window
        self._sparkline_charts = sparkline_charts

    def render(self) -> str:
        """The page as of now (blocking: reads the database)."""
        now = self._clock()
        context: dict[str, Any] = {
            "version": __version__,
            "now": now,
            "grafana_url": self._grafana_url,
            "api_enabled": self._api_enabled,
            "window": format_duration(self._window),
            "sources": self._metrics.sources(),
            "outcomes": list(FetchOutcome),
            "age": lambda at: ago(now - at),
        }
        try:
            state = self._repository.service_state(now=now)
            apps = self._apps(state, now)
        except StoreError as exc:
            # The in-process parts (sources) still help to tell what is wrong.
            log.warning("status page: could not read the service state: %s", exc)
            return _render(context, error=str(exc), state=None, apps=[], failing=[], lag=None)
        oldest_due = state.schedule.oldest_due_at
        return _render(
            context,
            error=None,
            state=state,
            apps=apps,
            failing=sorted(
                (health for health in state.charts if health.consecutive_failures),
                key=lambda health: (-health.consecutive_failures, health.chart),
            ),
            lag=ago(now - oldest_due) if oldest_due is not None else ago(dt.timedelta()),
        )

    def _apps(self, state: ServiceState, now: dt.datetime) -> list[AppView]:
        since = now - self._window
        labels = unique_app_labels(state.tracked, self._app_names)
        views = []
        for status in state.tracked:
            # Listed charts first, best rank first: with more charts than `sparkline_charts`
            # (a world poll), the history read stays bounded and the rest go without.
            ordered = sorted(status.ranks, key=lambda c: (c.rank is None, c.rank or 0, c.chart))
            drawn = {current.chart for current in ordered[: self._sparkline_charts]}
            history = self._repository.history(status.app.id, since=since, until=now, only=drawn)
            # Sorted by (chart, time): one group per chart.
            by_chart = {
                chart: list(points)
                for chart, points in itertools.groupby(history, key=lambda point: point.chart)
            }
            shown, unlisted = [], []
            for current in ordered:
                points = by_chart.get(current.chart, [])
                lines = held_ranks(points, current, since=since) if current.chart in drawn else []
                if lines or current.rank is not None:
                    line = sparkline(lines, since=since, until=now, depth=current.depth)
                    shown.append(ChartRank(current, line))
                else:
                    unlisted.append(current)
            shown.sort(key=lambda row: (row.current.rank or math.inf, row.current.chart))
            views.append(AppView(labels[status.app.id], status, tuple(shown), tuple(unlisted)))
        return sorted(views, key=lambda view: view.label.casefold())


def _render(context: Mapping[str, Any], **values: Any) -> str:
    return _TEMPLATES.get_template("status.html").render(**context, **values)
