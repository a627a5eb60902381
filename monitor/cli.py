"""The command line: `app-rank-monitor [--config FILE] COMMAND`.

Exit codes: 0 success; 1 the work ran but something failed (a chart, a drift check);
2 the command could not run (bad configuration, database locked or missing, bad arguments).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from monitor import (
    __version__,
    cli_alerts,
    cli_demo,
    cli_export,
    cli_fetches,
    cli_queries,
    cli_replay,
    cli_silences,
)
from monitor.cli_support import (
    FORMAT_OPTION,
    CliState,
    CommandFailed,
    MonitorGroup,
    open_or_fail,
    quiet_alembic,
    settings_of,
)
from monitor.config import Settings
from monitor.config_types import format_duration
from monitor.errors import MonitorError
from monitor.model import ChartKey
from monitor.output import OutputFormat, render
from monitor.progress import Progress
from monitor.retention_job import policy_of
from monitor.rounds import RoundSummary
from monitor.store.migrate import check_drift, current_revision, upgrade
from monitor.store.repository import Repository
from monitor.wiring import polling, service_metrics, utc_now
from monitor.worker import prepare_database, run_service

log = logging.getLogger("monitor.cli")

# poll-once's outcome for a chart named with --chart that it could not poll.
NOT_POLLED = "not_polled"


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
    settings = settings_of(ctx)
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
    settings = settings_of(ctx)
    with open_or_fail(settings, writer=not check) as database:
        if check:
            with quiet_alembic():
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
    settings = settings_of(ctx)
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
    settings = settings_of(ctx)
    charts = _configured_charts(settings, chart_slugs)

    async def poll(repository: Repository) -> RoundSummary:
        metrics = service_metrics(settings, repository)
        async with polling(settings, repository, metrics=metrics) as rounds:
            return await rounds.run_round(charts)

    with open_or_fail(settings, writer=True) as database:
        summary = asyncio.run(poll(prepare_database(settings, database)))
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
@click.pass_context
def rebuild(ctx: click.Context) -> None:
    """Recompute the derived rank history from the stored snapshots."""
    settings = settings_of(ctx)
    with open_or_fail(settings, writer=True) as database:
        upgrade(database)
        count = Repository(database).rebuild_derived(progress=Progress("rebuild", log))
    click.echo(f"rebuilt {count} rank points from stored snapshots")


@cli.command()
@FORMAT_OPTION
@click.pass_context
def retention(ctx: click.Context, fmt: str) -> None:
    """Fold and remove what [retention] no longer keeps, now (the service does it daily);
    exit 1 if a chart could not be folded."""
    settings = settings_of(ctx)
    with open_or_fail(settings, writer=True) as database:
        upgrade(database)
        report = Repository(database).run_retention(
            policy_of(settings), now=utc_now(), progress=Progress("retention", log)
        )
    row = {
        "folded_before": report.horizon.isoformat(),
        "chart_days_folded": report.days_folded,
        "snapshots_deleted": report.snapshots_deleted,
        "fetch_log_cutoff": report.fetch_log_cutoff.isoformat(),
        "fetches_deleted": report.fetches_deleted,
        "partitions_dropped": " ".join(report.partitions_dropped),
        "partitions_made": " ".join(report.partitions_made),
        "bytes_reclaimed": report.bytes_reclaimed,
        "charts_not_folded": " ".join(report.failed_charts),
    }
    click.echo(render([row], list(row), OutputFormat(fmt)), nl=False)
    if report.failed_charts:
        sys.exit(1)


for command in (
    cli_queries.history,
    cli_queries.chart,
    cli_queries.apps,
    cli_fetches.fetches,
    cli_export.export,
    cli_alerts.alerts,
    cli_silences.silence,
    cli_replay.replay_command,
    cli_demo.demo,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="app-rank-monitor")
