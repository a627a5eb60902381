"""The picture in an alert email: one app's rank on its charts over the last days, as a PNG.

Email clients run no scripts and many block remote images, so the picture travels inside the
message (see monitor.alerts.render). Rank 1 is at the top, as people read charts; one line per
chart, broken where the app was below the chart's depth; a legend names the charts. Times are
UTC. Lines are drawn without antialiasing, so every pixel of a line has its chart's colour.
"""

from __future__ import annotations

import datetime as dt
import io
import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from monitor.alerts.model import RankSeries, chart_title

WIDTH = 600
PLOT_HEIGHT = 170
# Distinct on white and for the common colour-vision deficiencies (Tableau 10, first eight).
LINE_COLOURS = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
)
MAX_LINES = len(LINE_COLOURS)
BACKGROUND = (255, 255, 255)
_GRID = (232, 232, 232)
_TEXT = (90, 90, 90)
_LEFT, _RIGHT, _TOP = 44, 14, 10
_ROW = 16  # height of the date labels and of each legend row
_BOTTOMS = (10, 25, 50, 100, 200)  # the rank at the bottom edge: the first that fits


def draw_rank_plot(series: Sequence[RankSeries]) -> bytes:
    """A PNG of the first MAX_LINES series (callers put the most relevant first).

    Raises ValueError when there is no point to draw.
    """
    shown = series[:MAX_LINES]
    start, end = _time_range(shown)
    font = ImageFont.load_default(size=11)
    legend = _legend_rows(shown, len(series) - len(shown), font)
    height = _TOP + PLOT_HEIGHT + _ROW + len(legend) * _ROW + 6
    image = Image.new("RGB", (WIDTH, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    bottom = _bottom_rank(shown)
    plot = _Plot(start, end, bottom)
    for rank in _rank_ticks(bottom):
        y = plot.y(rank)
        draw.line([(_LEFT, y), (WIDTH - _RIGHT, y)], fill=_GRID)
        draw.text((_LEFT - 6, y), f"#{rank}", fill=_TEXT, font=font, anchor="rm")
    for tick, label in _time_ticks(start, end):
        x = plot.x(tick)
        draw.line([(x, _TOP), (x, _TOP + PLOT_HEIGHT)], fill=_GRID)
        draw.text((x, _TOP + PLOT_HEIGHT + 3), label, fill=_TEXT, font=font, anchor="mt")
    for one, colour in zip(shown, LINE_COLOURS, strict=False):
        for run in _listed_runs(one):
            points = [(plot.x(at), plot.y(rank)) for at, rank in run]
            if len(points) == 1:
                (x, y), radius = points[0], 2
                draw.ellipse([(x - radius, y - radius), (x + radius, y + radius)], fill=colour)
            else:
                draw.line(points, fill=colour, width=2)
    y = _TOP + PLOT_HEIGHT + _ROW + 4
    for row in legend:
        for x, text, swatch in row:
            if swatch is not None:
                draw.rectangle([(x, y + 5), (x + 13, y + 7)], fill=swatch)
            draw.text((x + _swatch_width(swatch), y), text, fill=_TEXT, font=font)
        y += _ROW
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


class _Plot:
    """Maps times and ranks to pixels of the plot area."""

    def __init__(self, start: dt.datetime, end: dt.datetime, bottom: int) -> None:
        self._start = start
        self._span = (end - start).total_seconds()
        self._bottom = bottom

    def x(self, at: dt.datetime) -> float:
        share = (at - self._start).total_seconds() / self._span
        return _LEFT + share * (WIDTH - _LEFT - _RIGHT)

    def y(self, rank: int) -> float:
        return _TOP + (rank - 1) / (self._bottom - 1) * PLOT_HEIGHT


def _bottom_rank(series: Sequence[RankSeries]) -> int:
    """Zoomed to the ranks held, so a climb from #9 to #1 is not squashed into the top pixels
    of a 100-deep axis; with nothing listed, the charts' depth."""
    ranks = [rank for one in series for _, rank in one.points if rank is not None]
    lowest = max(ranks) if ranks else max(one.depth for one in series)
    return next((bottom for bottom in _BOTTOMS if bottom >= lowest), max(lowest, 2))


def _rank_ticks(bottom: int) -> list[int]:
    step = max(1, bottom // 5)
    return sorted({1, *range(step, bottom + 1, step)})


def _time_range(series: Sequence[RankSeries]) -> tuple[dt.datetime, dt.datetime]:
    times = [at for one in series for at, _ in one.points]
    if not times:
        raise ValueError("nothing to draw: the rank series have no points")
    start, end = min(times), max(times)
    if start == end:  # one snapshot: centre it in an hour either side
        return start - dt.timedelta(hours=1), end + dt.timedelta(hours=1)
    return start, end


def _time_ticks(start: dt.datetime, end: dt.datetime) -> list[tuple[dt.datetime, str]]:
    """Whole days (at most 7 labels) for spans of two days or more, else whole hours."""
    start, end = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
    span = end - start
    if span >= dt.timedelta(days=2):
        step = dt.timedelta(days=math.ceil(span.days / 7))
        first = start.replace(hour=0, minute=0, second=0, microsecond=0)
        label = "%b %d"
    else:
        hours = next((h for h in (1, 2, 3, 6, 12) if span / dt.timedelta(hours=h) <= 6), 24)
        step = dt.timedelta(hours=hours)
        first = start.replace(hour=start.hour - start.hour % hours, minute=0, second=0)
        first = first.replace(microsecond=0)
        label = "%H:%M"
    ticks = []
    tick = first if first >= start else first + step
    while tick <= end:
        ticks.append((tick, tick.strftime(label)))
        tick += step
    return ticks


def _listed_runs(series: RankSeries) -> list[list[tuple[dt.datetime, int]]]:
    """The stretches of consecutive points where the app was listed."""
    runs: list[list[tuple[dt.datetime, int]]] = [[]]
    for at, rank in series.points:
        if rank is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((at, rank))
    return [run for run in runs if run]


_LegendItem = tuple[float, str, tuple[int, int, int] | None]


def _swatch_width(colour: tuple[int, int, int] | None) -> int:
    return 0 if colour is None else 18


def _legend_rows(
    series: Sequence[RankSeries], hidden: int, font: ImageFont.FreeTypeFont | ImageFont.ImageFont
) -> list[list[_LegendItem]]:
    """Legend entries flowed into rows: (x, text, swatch colour or None)."""
    entries: list[tuple[str, tuple[int, int, int] | None]] = [
        (chart_title(one.chart), colour) for one, colour in zip(series, LINE_COLOURS, strict=False)
    ]
    if hidden:
        entries.append((f"and {hidden} more chart{'s' if hidden > 1 else ''}", None))
    rows: list[list[_LegendItem]] = [[]]
    x = float(_LEFT)
    for text, colour in entries:
        width = font.getlength(text) + _swatch_width(colour)
        if rows[-1] and x + width > WIDTH - _RIGHT:
            rows.append([])
            x = float(_LEFT)
        rows[-1].append((x, text, colour))
        x += width + 16
    return rows
