"""`export history|charts`: the stored history out, as CSV or JSON, for analysis elsewhere.

Rows are written as they are read, a page or an app at a time, so an export of years of
history holds little in memory; progress goes to the log (stderr), the rows to `--output` or
stdout. A file is written under a temporary name and renamed when complete: an export that
fails leaves no half file behind.
"""

from __future__ import annotations

import csv
import datetime as dt
import enum
import json
import logging
from collections.abc import Iterator, Sequence
from typing import IO, Any

import click

from monitor.cli_support import CommandFailed, reading, settings_of, time_option
from monitor.documents import point_document
from monitor.lookups import LookupFailed, one_app
from monitor.model import watchlist_names
from monitor.progress import Progress
from monitor.store.repository import AppInfo, ChartView, Repository

log = logging.getLogger(__name__)

# A page is one read; its apps are read with one IN list (at most 100 x 100 ids).
SNAPSHOTS_PER_PAGE = 100
HISTORY_COLUMNS = (
    "app", "store_id", "time", "chart", "store", "country", "collection", "device", "genre",
    "status", "rank", "depth", "error", "resolution", "best", "worst", "hours_listed",
)  # fmt: skip
CHART_COLUMNS = (
    "fetched_at", "chart", "store", "country", "collection", "device", "genre", "source",
    "visible_depth", "rank", "store_id", "name", "developer",
)  # fmt: skip


class ExportFormat(enum.StrEnum):
    CSV = "csv"
    JSON = "json"


class _RowWriter:
    """CSV with a header line, or one JSON array of objects written element by element."""

    def __init__(self, out: IO[str], fmt: ExportFormat, columns: Sequence[str]) -> None:
        self._out = out
        self._fmt = fmt
        self._columns = columns
        self._csv = csv.writer(out, lineterminator="\n")
        self._rows = 0

    def __enter__(self) -> _RowWriter:
        if self._fmt is ExportFormat.CSV:
            self._csv.writerow(self._columns)
        else:
            self._out.write("[")
        return self

    def write(self, row: dict[str, Any]) -> None:
        if self._fmt is ExportFormat.CSV:
            self._csv.writerow(["" if row[c] is None else row[c] for c in self._columns])
        else:
            separator = ",\n" if self._rows else "\n"
            self._out.write(separator + json.dumps({c: row[c] for c in self._columns}))
        self._rows += 1

    def __exit__(self, *exc_info: object) -> None:
        if self._fmt is ExportFormat.JSON:
            self._out.write("\n]\n" if self._rows else "]\n")


def _options(command: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--format",
                "fmt",
                type=click.Choice([f.value for f in ExportFormat]),
                default=ExportFormat.CSV.value,
                show_default=True,
            ),
            click.option("--since", callback=time_option, help="ISO date/time (UTC) or 30d."),
            click.option("--until", callback=time_option, help="ISO date/time (UTC) or 1d."),
            click.option(
                "--output",
                "-o",
                default="-",
                show_default=True,
                type=click.Path(dir_okay=False, writable=True, allow_dash=True),
                help="File to write (replaced only once the export is complete); - is stdout.",
            ),
        ]
    ):
        command = option(command)
    return command


@click.group()
def export() -> None:
    """Export stored history as CSV or JSON (columns in the README)."""


@export.command("history")
@click.option(
    "--app",
    "app_refs",
    multiple=True,
    help="Only this app (store id or name; repeatable). Default: every tracked app.",
)
@_options
@click.pass_context
def export_history(
    ctx: click.Context,
    app_refs: tuple[str, ...],
    fmt: str,
    since: dt.datetime | None,
    until: dt.datetime | None,
    output: str,
) -> None:
    """Tracked apps' rank series, one row per app, chart and snapshot (or failed fetch), as
    `history` shows them: by app, then chart, then time."""
    _check_range(since, until)
    settings = settings_of(ctx)
    names = watchlist_names(settings.watched_apps())
    with reading(settings) as repository:
        chosen = _apps(repository, app_refs)
        progress = Progress("export history", log)
        with (
            click.open_file(output, "w", encoding="utf-8", atomic=True) as out,
            _RowWriter(out, ExportFormat(fmt), HISTORY_COLUMNS) as writer,
        ):
            for done, app in enumerate(chosen, start=1):
                # The watchlist's name, as alerts and metrics call the app; else the store's.
                name = names.get((app.store, app.store_id), app.name)
                named = {"app": name, "store_id": app.store_id}
                for point in repository.history(app.id, since=since, until=until):
                    writer.write(named | point_document(point))
                progress(done, len(chosen))


@export.command("charts")
@_options
@click.pass_context
def export_charts(
    ctx: click.Context,
    fmt: str,
    since: dt.datetime | None,
    until: dt.datetime | None,
    output: str,
) -> None:
    """Every stored snapshot's entries, one row per chart, snapshot and rank: chart by chart,
    oldest first. A snapshot is stored when a chart changed; it stood until the next one."""
    _check_range(since, until)
    with reading(settings_of(ctx)) as repository:
        total = repository.count_snapshots(since=since, until=until)
        progress = Progress("export charts", log)
        done = 0
        with (
            click.open_file(output, "w", encoding="utf-8", atomic=True) as out,
            _RowWriter(out, ExportFormat(fmt), CHART_COLUMNS) as writer,
        ):
            for view in _snapshots(repository, since, until):
                for row in _chart_rows(view):
                    writer.write(row)
                done += 1
                progress(done, max(total, done))


def _check_range(since: dt.datetime | None, until: dt.datetime | None) -> None:
    if since is not None and until is not None and since > until:
        raise click.BadParameter(
            f"--since {since.isoformat()} is after --until {until.isoformat()}",
            param_hint="--since/--until",
        )


def _apps(repository: Repository, refs: Sequence[str]) -> list[AppInfo]:
    if not refs:
        return [status.app for status in repository.tracked_apps()]
    try:
        return [one_app(repository, ref) for ref in refs]
    except LookupFailed as exc:
        raise CommandFailed(str(exc)) from None


def _snapshots(
    repository: Repository, since: dt.datetime | None, until: dt.datetime | None
) -> Iterator[ChartView]:
    after = None
    while True:
        views, after = repository.snapshot_page(
            since=since, until=until, after=after, limit=SNAPSHOTS_PER_PAGE
        )
        yield from views
        if after is None:
            return


def _chart_rows(view: ChartView) -> Iterator[dict[str, Any]]:
    chart = view.chart
    common = {
        "fetched_at": view.fetched_at.isoformat(),
        "chart": chart.slug,
        "store": chart.store.value,
        "country": chart.country,
        "collection": chart.collection.value,
        "device": chart.device.value,
        "genre": chart.genre,
        "source": view.source.value,
        "visible_depth": view.visible_depth,
    }
    for entry in view.entries:
        yield common | {
            "rank": entry.rank,
            "store_id": entry.store_id,
            "name": entry.name,
            "developer": entry.developer,
        }
