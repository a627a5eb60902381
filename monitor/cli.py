"""The command line: `app-rank-monitor [--config FILE] COMMAND`.

Exit codes: 0 success; 1 the work ran but something failed (a chart, a drift check);
2 the command could not run (bad configuration, database locked or missing, bad arguments).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from monitor import __version__
from monitor.config import Settings, load_settings, parse_duration
from monitor.config_types import format_duration, redact_url_password
from monitor.errors import MonitorError
from monitor.logs import configure_logging
from monitor.model import ALL_GENRES, ChartKey, Collection, Device, RankPoint, Store
from monitor.output import OutputFormat, printable, render
from monitor.progress import Progress
from monitor.rounds import RoundSummary
from monitor.store.engine import Database, open_database
from monitor.store.migrate import check_drift, current_revision, upgrade
from monitor.store.repository import AppInfo, Repository
from monitor.wiring import polling
from monitor.worker import prepare_database, run_service

log = logging.getLogger("monitor.cli")

# poll-once's outcome for a chart named with --chart that it could not poll.
NOT_POLLED = "not_polled"

FORMAT_OPTION = click.option(
    "--format",
    "fmt",
    type=click.Choice([f.value for f in OutputFormat]),
    default=OutputFormat.TABLE.value,
    show_default=True,
    help="Output format.",
)


class CommandFailed(click.ClickException):
    """The command could not run at all."""

    exit_code = 2


@dataclasses.dataclass
class CliState:
    config_path: Path | None
    settings: Settings | None = None


class MonitorGroup(click.Group):
    """Turns the service's errors into exit status 2 with one line, not a traceback.

    MonitorError covers what the store reports (a locked file, a failed transaction); a
    database that cannot be reached at all fails inside SQLAlchemy or Alembic first.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MonitorError as exc:
            raise CommandFailed(str(exc)) from None
        except SQLAlchemyError as exc:
            raise CommandFailed(_database_problem(ctx, exc)) from None


def _database_problem(ctx: click.Context, exc: SQLAlchemyError) -> str:
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    detail = lines[0] if lines else type(cause).__name__
    state = ctx.find_object(CliState)
    if state is None or state.settings is None:
        return f"database error: {detail}"
    url = redact_url_password(state.settings.database.url)
    return f"cannot use the database {url}: {detail}"


def _settings(ctx: click.Context) -> Settings:
    state: CliState = ctx.ensure_object(CliState)
    if state.settings is None:
        try:
            state.settings = load_settings(state.config_path)
        except MonitorError as exc:
            raise CommandFailed(str(exc)) from None
        configure_logging(state.settings.log.format, state.settings.log.level)
    return state.settings


def _open(settings: Settings, *, writer: bool) -> Database:
    try:
        return open_database(settings.database.url, writer=writer)
    except MonitorError as exc:
        raise CommandFailed(str(exc)) from None


@contextlib.contextmanager
def _reading(settings: Settings) -> Iterator[Repository]:
    """A read-only repository; refuses a database without the schema instead of creating one."""
    with _open(settings, writer=False) as database:
        with _quiet_alembic():
            revision = current_revision(database)
        if revision is None:
            url = redact_url_password(settings.database.url)
            raise CommandFailed(f"database {url} has no schema: run `app-rank-monitor migrate`")
        yield Repository(database)


@contextlib.contextmanager
def _quiet_alembic() -> Iterator[None]:
    """Without Alembic's INFO lines about DDL, for commands that only read the schema
    (still shown at DEBUG)."""
    alembic_log = logging.getLogger("alembic")
    level, effective = alembic_log.level, alembic_log.getEffectiveLevel()
    if effective > logging.DEBUG:
        alembic_log.setLevel(max(logging.WARNING, effective))
    try:
        yield
    finally:
        alembic_log.setLevel(level)


def parse_time(text: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """ISO date or datetime (UTC when no offset), or a duration ago such as `24h` or `7d`.

    ISO is tried first: `20250126` is a date, not twenty million seconds ago.
    """
    try:
        parsed = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        pass
    else:
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=dt.UTC)
        return parsed.astimezone(dt.UTC)
    try:
        return (now or dt.datetime.now(dt.UTC)) - parse_duration(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither an ISO date/time nor a duration like 24h or 7d"
        ) from None


def _time_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    return None if value is None else parse_time(value)


@click.group(cls=MonitorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="MONITOR_CONFIG",
    help="TOML configuration file (env: MONITOR_CONFIG).",
)
@click.version_option(__version__, prog_name="app-rank-monitor")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None) -> None:
    """Poll App Store charts into a ranking history; query it."""
    ctx.obj = CliState(config_path)


@cli.command("check-config")
@click.pass_context
def check_config(ctx: click.Context) -> None:
    """Validate the configuration; print it resolved (secrets redacted) and the charts polled."""
    settings = _settings(ctx)
    click.echo(json.dumps(settings.redacted(), indent=2, default=str))
    charts = settings.chart_keys()
    click.echo(f"\n{len(charts)} charts will be polled:")
    for chart in charts:
        click.echo(f"  {chart}")
    apps = settings.watched_apps()
    click.echo(f"\n{len(apps)} apps on the watchlist:")
    for app in apps:
        click.echo(f"  {app.store}/{app.store_id}  {app.name}")


@cli.command()
@click.option("--check", is_flag=True, help="Only report drift between schema and code.")
@click.pass_context
def migrate(ctx: click.Context, check: bool) -> None:
    """Bring the database schema up to date (safe to run from several processes)."""
    settings = _settings(ctx)
    with _open(settings, writer=not check) as database:
        if check:
            with _quiet_alembic():
                drift = check_drift(database)
                revision = current_revision(database)
            for line in drift:
                click.echo(line)
            if drift:
                sys.exit(1)
            click.echo(f"schema matches the code (revision {revision})")
            return
        upgrade(database)
        click.echo(f"database at revision {current_revision(database)}")


@cli.command()
@click.pass_context
def run(ctx: click.Context) -> None:
    """Run the service: migrate, poll on schedule, serve /healthz and /readyz."""
    settings = _settings(ctx)
    try:
        asyncio.run(run_service(settings))
    except MonitorError as exc:
        raise CommandFailed(str(exc)) from None


@cli.command("poll-once")
@click.option(
    "--chart",
    "chart_slugs",
    multiple=True,
    help="Chart to poll, e.g. us/top_free or apple/jp/top_paid/ipad/6014 (repeatable). "
    "Default: every chart that is due.",
)
@FORMAT_OPTION
@click.pass_context
def poll_once(ctx: click.Context, chart_slugs: Sequence[str], fmt: str) -> None:
    """Poll every due chart (or the named ones) once; exit 1 if any failed."""
    settings = _settings(ctx)
    charts = _configured_charts(settings, chart_slugs)

    async def poll(database: Database) -> RoundSummary:
        async with polling(settings, database) as rounds:
            return await rounds.run_round(charts)

    with _open(settings, writer=True) as database:
        prepare_database(settings, database)
        summary = asyncio.run(poll(database))
    rows = [
        {
            "chart": r.chart.slug,
            "outcome": r.outcome.value,
            "source": r.source.value if r.source else None,
            "entries": r.entries,
            "seconds": round(r.seconds, 2),
            "error": r.error,
        }
        for r in summary.results
    ]
    # A chart asked for by name can go unpolled: another poller (or one that died) holds its
    # lease. Say so rather than print nothing and exit 0.
    polled = {r.chart for r in summary.results}
    skipped = sorted({chart for chart in charts or () if chart not in polled})
    why = f"leased by another poller (for at most {format_duration(settings.poll.lease)})"
    if summary.errors:
        why += ", or its poll crashed (see the log)"
    rows += [{"chart": chart.slug, "outcome": NOT_POLLED, "error": why} for chart in skipped]
    rows.sort(key=lambda row: str(row["chart"]))
    columns = ["chart", "outcome", "source", "entries", "seconds", "error"]
    click.echo(render(rows, columns, OutputFormat(fmt)), nl=False)
    if summary.failed or skipped:
        sys.exit(1)


def _configured_charts(settings: Settings, slugs: Sequence[str]) -> list[ChartKey] | None:
    if not slugs:
        return None
    configured = set(settings.chart_keys())
    charts = []
    for slug in slugs:
        try:
            chart = ChartKey.parse(slug)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--chart") from None
        if chart not in configured:
            raise click.BadParameter(
                f"{chart} is not a configured chart (see `check-config`)", param_hint="--chart"
            )
        charts.append(chart)
    return charts


@cli.command()
@click.option("--app", "app_ref", required=True, help="Store id or (part of) the app name.")
@click.option("--country", help="Two-letter storefront code, e.g. us.")
@click.option("--collection", type=click.Choice([c.value for c in Collection]))
@click.option("--device", type=click.Choice([d.value for d in Device]))
@click.option(
    "--since", callback=_time_option, help="ISO date/time (UTC) or a duration ago, e.g. 7d."
)
@click.option("--until", callback=_time_option, help="ISO date/time (UTC) or a duration ago.")
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
    with _reading(_settings(ctx)) as repository:
        app = _one_app(repository, app_ref)
        points = repository.history(
            app.id,
            country=country.lower() if country else None,
            collection=collection,
            device=device,
            since=since,
            until=until,
        )
    rows = [_point_row(point) for point in points]
    columns = ["time", "chart", "status", "rank", "depth", "error"]
    if fmt != OutputFormat.TABLE:
        columns[2:2] = ["store", "country", "collection", "device", "genre"]
    click.echo(render(rows, columns, OutputFormat(fmt)), nl=False)


def _point_row(point: RankPoint) -> dict[str, Any]:
    return {
        "time": point.at.isoformat(),
        "chart": point.chart.slug,
        "store": point.chart.store.value,
        "country": point.chart.country,
        "collection": point.chart.collection.value,
        "device": point.chart.device.value,
        "genre": point.chart.genre,
        "status": point.status.value,
        "rank": point.rank,
        "depth": point.depth,
        "error": point.error,
    }


APP_CANDIDATES_SHOWN = 10
_APP_MATCHES_COUNTED = 50


def _one_app(repository: Repository, ref: str) -> AppInfo:
    matches = repository.find_apps(ref, limit=_APP_MATCHES_COUNTED + 1)
    wanted = ref.strip()
    exact = [
        a
        for a in matches
        if wanted in (a.store_id, a.bundle_id) or a.name.casefold() == wanted.casefold()
    ]
    if len(exact) == 1:
        return exact[0]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise CommandFailed(f"no stored app matches {ref!r} (by store id, bundle id or name)")
    shown = matches[:APP_CANDIDATES_SHOWN]
    lines = [f"  {a.store_id}  {printable(a.name)}" for a in shown]
    if len(matches) > _APP_MATCHES_COUNTED:
        count = f"more than {_APP_MATCHES_COUNTED}"
        lines.append("  ...")
    else:
        count = str(len(matches))
        if len(matches) > len(shown):
            lines.append(f"  ... and {len(matches) - len(shown)} more")
    listed = "\n".join(lines)
    raise CommandFailed(f"{count} apps match {ref!r}; use the store id:\n{listed}")


@cli.command()
@click.option("--country", required=True, help="Two-letter storefront code, e.g. us.")
@click.option("--collection", required=True, type=click.Choice([c.value for c in Collection]))
@click.option("--device", type=click.Choice([d.value for d in Device]), default=Device.IPHONE.value)
@click.option("--genre", default=ALL_GENRES, show_default=True, help="Genre id or 'all'.")
@click.option("--at", "at", callback=_time_option, help="Show the chart as stored at this time.")
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
        key = ChartKey(
            Store.APPLE, country.strip().lower(), Collection(collection), Device(device), genre
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--country/--genre") from None
    with _reading(_settings(ctx)) as repository:
        view = repository.chart_at(key, at)
    if view is None:
        when = f" at or before {at.isoformat()}" if at else ""
        raise CommandFailed(f"no snapshot of {key} stored{when}")
    columns = ["rank", "store_id", "name", "developer"]
    rows = [dataclasses.asdict(entry) for entry in view.entries]
    if fmt == OutputFormat.JSON:
        # Shaped like the other commands' JSON: the chart as its slug, times in ISO 8601.
        document = {
            "chart": view.chart.slug,
            "snapshot_id": view.snapshot_id,
            "fetched_at": view.fetched_at.isoformat(),
            "confirmed_at": view.confirmed_at.isoformat(),
            "feed_updated_at": view.feed_updated_at.isoformat() if view.feed_updated_at else None,
            "source": view.source.value,
            "requested_depth": view.requested_depth,
            "visible_depth": view.visible_depth,
            "entries": rows,
        }
        click.echo(json.dumps(document, indent=2))
        return
    if fmt == OutputFormat.TABLE:
        click.echo(
            f"{key} fetched {view.fetched_at.isoformat()} (last confirmed "
            f"{view.confirmed_at.isoformat()}) from {view.source}, "
            f"{view.visible_depth} of {view.requested_depth} positions"
        )
    click.echo(render(rows, columns, OutputFormat(fmt)), nl=False)


@cli.command()
@FORMAT_OPTION
@click.pass_context
def apps(ctx: click.Context, fmt: str) -> None:
    """Tracked apps with their current best rank."""
    with _reading(_settings(ctx)) as repository:
        statuses = repository.tracked_apps()
    rows = [status.as_row() for status in statuses]
    columns = ["store_id", "name", "best_rank", "best_chart", "charts_listed"]
    click.echo(render(rows, columns, OutputFormat(fmt)), nl=False)


@cli.command()
@click.pass_context
def rebuild(ctx: click.Context) -> None:
    """Recompute the derived rank history from the stored snapshots."""
    settings = _settings(ctx)
    with _open(settings, writer=True) as database:
        upgrade(database)
        count = Repository(database).rebuild_derived(progress=Progress("rebuild", log))
    click.echo(f"rebuilt {count} rank points from stored snapshots")


def main() -> None:
    cli(prog_name="app-rank-monitor")
