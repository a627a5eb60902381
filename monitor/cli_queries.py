"""Read commands: history, chart, apps. They take no lock and work beside a running service."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import click

from monitor.cli_support import (
    FORMAT_OPTION,
    CommandFailed,
    country_option,
    reading,
    settings_of,
    time_option,
)
from monitor.documents import chart_document, point_document
from monitor.lookups import LookupFailed, one_app
from monitor.model import ALL_GENRES, ChartKey, Collection, Device, Resolution, Store
from monitor.output import OutputFormat, render
from monitor.store.repository import AppInfo, Repository


@click.command()
@click.option("--app", "app_ref", required=True, help="Store id or (part of) the app name.")
@click.option("--country", callback=country_option, help="Two-letter storefront code, e.g. us.")
@click.option("--collection", type=click.Choice([c.value for c in Collection]))
@click.option("--device", type=click.Choice([d.value for d in Device]))
@click.option(
    "--since", callback=time_option, help="ISO date/time (UTC) or a duration ago, e.g. 7d."
)
@click.option("--until", callback=time_option, help="ISO date/time (UTC) or a duration ago.")
@FORMAT_OPTION
@click.pass_context
def history(
    ctx: click.Context,
    app_ref: str,
    country: str | None,
    collection: str | None,
    device: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    fmt: str,
) -> None:
    """One app's rank series: time, chart, rank or null, and why null."""
    if since is not None and until is not None and since > until:
        raise click.BadParameter(
            f"--since {since.isoformat()} is after --until {until.isoformat()}",
            param_hint="--since/--until",
        )
    with reading(settings_of(ctx)) as repository:
        app = _one_app(repository, app_ref)
        points = repository.history(
            app.id,
            country=country.lower() if country else None,
            collection=collection,
            device=device,
            since=since,
            until=until,
        )
    rows = [point_document(point) for point in points]
    columns = ["time", "chart", "status", "rank", "depth", "error"]
    if fmt != OutputFormat.TABLE:
        columns[2:2] = ["store", "country", "collection", "device", "genre"]
    # A table shows a day's figures only when there are days; other formats have a fixed shape.
    if fmt != OutputFormat.TABLE or any(p.resolution is Resolution.DAY for p in points):
        columns += ["resolution", "best", "worst", "hours_listed"]
    click.echo(render(rows, columns, OutputFormat(fmt)), nl=False)


def _one_app(repository: Repository, ref: str) -> AppInfo:
    try:
        return one_app(repository, ref)
    except LookupFailed as exc:
        raise CommandFailed(str(exc)) from None


@click.command()
@click.option(
    "--country", required=True, callback=country_option, help="Two-letter storefront code, e.g. us."
)
@click.option("--collection", required=True, type=click.Choice([c.value for c in Collection]))
@click.option("--device", type=click.Choice([d.value for d in Device]), default=Device.IPHONE.value)
@click.option("--genre", default=ALL_GENRES, show_default=True, help="Genre id or 'all'.")
@click.option("--at", "at", callback=time_option, help="Show the chart as stored at this time.")
@FORMAT_OPTION
@click.pass_context
def chart(
    ctx: click.Context,
    country: str,
    collection: str,
    device: str,
    genre: str,
    at: dt.datetime | None,
    fmt: str,
) -> None:
    """The chart as stored at a time (default: the latest snapshot)."""
    try:
        key = ChartKey(Store.APPLE, country, Collection(collection), Device(device), genre)
    except ValueError as exc:  # the country was checked already: the genre is wrong
        raise click.BadParameter(str(exc), param_hint="--genre") from None
    with reading(settings_of(ctx)) as repository:
        view = repository.chart_at(key, at)
    if view is None:
        when = f" at or before {at.isoformat()}" if at else ""
        raise CommandFailed(f"no snapshot of {key} stored{when}")
    columns = ["rank", "store_id", "name", "developer"]
    rows = [dataclasses.asdict(entry) for entry in view.entries]
    if fmt == OutputFormat.JSON:
        document = chart_document(view)
        click.echo(json.dumps(document, indent=2))
        return
    if fmt == OutputFormat.TABLE:
        click.echo(
            f"{key} fetched {view.fetched_at.isoformat()} (last confirmed "
            f"{view.confirmed_at.isoformat()}) from {view.source}, "
            f"{view.visible_depth} of {view.requested_depth} positions"
        )
    click.echo(render(rows, columns, OutputFormat(fmt)), nl=False)


@click.command()
@FORMAT_OPTION
@click.pass_context
def apps(ctx: click.Context, fmt: str) -> None:
    """Tracked apps with their current best rank."""
    with reading(settings_of(ctx)) as repository:
        statuses = repository.tracked_apps()
    rows = [status.as_row() for status in statuses]
    columns = ["store_id", "name", "best_rank", "best_chart", "charts_listed"]
    click.echo(render(rows, columns, OutputFormat(fmt)), nl=False)
