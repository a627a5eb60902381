"""`replay DIR`: import a folder of recorded feed payloads into history (monitor.replay)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from monitor.cli_support import FORMAT_OPTION, CommandFailed, open_or_fail, settings_of
from monitor.output import OutputFormat, render
from monitor.progress import Progress
from monitor.replay import LAYOUT, ReplayReport, ReplaySettings, find_payloads, replay
from monitor.store.repository import Repository
from monitor.wiring import owner_id, service_repository, utc_now
from monitor.worker import prepare_database

log = logging.getLogger("monitor.cli")

COLUMNS = ["chart", "payloads", "stored", "unchanged", "failed", "first", "last"]


@click.command("replay")
@click.argument(
    "folder",
    metavar="DIR",
    type=click.Path(path_type=Path, exists=True, file_okay=False, readable=True),
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Only read and parse the payloads (`stored` counts those that parsed); write nothing.",
)
@click.option(
    "--alerts",
    "evaluate_alerts",
    is_flag=True,
    help="Evaluate the alert rules on each new snapshot, as polling does, and queue their "
    "notifications (sent by `run`). Default: no alerts for imported history.",
)
@FORMAT_OPTION
@click.pass_context
def replay_command(
    ctx: click.Context, folder: Path, dry_run: bool, evaluate_alerts: bool, fmt: str
) -> None:
    """Import every recorded feed payload under DIR into history, oldest first, through the
    parser and storage path of a poll. Prints one row per chart: payloads, stored (new
    snapshots), unchanged (the content of the snapshot before, which it confirms, or imported
    already: running it again stores nothing new), failed. A file that cannot be read or
    parsed is named on stderr and skipped, the others are imported (exit 1).

    \b
    Layout: DIR/<country>/<collection>[/<device>[/<genre>]]/<time>.<source>.json[.gz]
      e.g.  us/top_free/20250126T060000Z.apple_v2.json
            apple/jp/top_grossing/iphone/all/2025-01-26T06:00:00Z.itunes_rss.json.gz
    <time> is when the payload was fetched (ISO 8601, UTC unless it has an offset);
    <source> the feed: apple_v2 (Marketing Tools v2) or itunes_rss (legacy iTunes RSS).
    Other files are ignored. Charts that are not configured are added to the schedule
    disabled: their history is kept, but `run` does not poll them.
    """
    settings = settings_of(ctx)
    try:
        payloads, unusable = find_payloads(folder)
    except OSError as exc:
        raise CommandFailed(f"cannot read {folder}: {exc}") from None
    if not payloads and not unusable:
        raise CommandFailed(
            f"no recorded payloads (*.json, *.json.gz) in {folder}: expected {LAYOUT}"
        )
    report = ReplayReport()
    for failure in unusable:
        report.failed(failure)
    replay_settings = ReplaySettings(
        depth=settings.poll.depth,
        max_body_bytes=settings.fetch.max_body_bytes,
        owner=owner_id(),
        lease=settings.poll.lease,
    )
    progress = Progress("replay", log)
    if dry_run:
        replay(None, payloads, replay_settings, report=report, clock=utc_now, progress=progress)
    else:
        with open_or_fail(settings, writer=True) as database:
            repository = (
                service_repository(settings, database)
                if evaluate_alerts
                else Repository(database, clock=utc_now)
            )
            prepare_database(settings, database, repository)
            added = repository.add_disabled_charts(
                [payload.chart for payload in payloads], now=utc_now()
            )
            if added:
                log.info("replay: %d charts that are not configured added, disabled", added)
            replay(
                repository,
                payloads,
                replay_settings,
                report=report,
                clock=utc_now,
                progress=progress,
            )
    rows = [report.charts[chart].as_row() for chart in sorted(report.charts)]
    click.echo(render(rows, COLUMNS, OutputFormat(fmt)), nl=False)
    for failure in report.failures:
        click.echo(f"failed: {failure.name}: {failure.error}", err=True)
    if report.failures:
        sys.exit(1)
