"""`demo`: the service on the recorded DeepSeek scenario in simulated time (monitor.demo)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shlex
import tempfile
from pathlib import Path

import click

from monitor.cli_support import CliState, CommandFailed, settings_of
from monitor.config_types import format_duration
from monitor.demo.driver import DemoOptions, DemoPlaces, run_demo
from monitor.demo.summary import DemoSummary
from monitor.errors import MonitorError
from monitor.replay import LAYOUT, find_payloads
from monitor.worker import stopped_by_signals

SCENARIO = Path("scenarios") / "deepseek-2025-01"  # in the seeds folder


def simulated_time(ctx: click.Context, param: click.Parameter, value: str | None) -> object:
    """An ISO 8601 date or date-time, UTC unless it has an offset (no "24h ago": the demo's
    time is the scenario's)."""
    if value is None:
        return None
    try:
        at = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"expected an ISO 8601 date or date-time, got {value!r}") from None
    return at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at.astimezone(dt.UTC)


@click.command("demo")
@click.option(
    "--speed",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    metavar="HOURS_PER_SECOND",
    help="Simulated hours per real second.",
)
@click.option(
    "--mail-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder the alert emails are written to as .eml files (default: a new folder).",
)
@click.option(
    "--smtp",
    "use_smtp",
    is_flag=True,
    help="Send the alert emails through the [smtp] server instead of writing files.",
)
@click.option("--serve", is_flag=True, help="Keep serving after the replay, until Ctrl-C.")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    help="Port of the status page on 127.0.0.1 (default: [http] port, or a free one if taken).",
)
@click.option(
    "--until",
    callback=simulated_time,
    help="End the replay at this simulated time (ISO 8601, UTC), e.g. 2025-01-27.",
)
@click.option(
    "--scenario",
    "scenario_dir",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help=f"Folder of recorded payloads to replay (default: <seeds>/{SCENARIO.as_posix()}).",
)
@click.pass_context
def demo(
    ctx: click.Context,
    speed: float,
    mail_dir: Path | None,
    use_smtp: bool,
    serve: bool,
    port: int | None,
    until: dt.datetime | None,
    scenario_dir: Path | None,
) -> None:
    """Watch the service work offline: replay the reconstructed DeepSeek surge of January
    2025 (top free iPhone charts of us, gb, de, jp, in) from a local feed server, polled
    step by step through the real poller, alert rules and outbox in simulated time, into a
    new SQLite database. Alert emails are written to a folder (or sent with --smtp); the
    status page, /metrics and the read API are served while it runs. Ends with a summary,
    or serves on with --serve."""
    if use_smtp and mail_dir is not None:
        raise click.UsageError("--smtp and --mail-dir exclude each other")
    settings = settings_of(ctx)
    folder = scenario_dir or settings.seeds.dir / SCENARIO
    payloads, unusable = find_payloads(folder)
    if unusable or not payloads:
        problem = unusable[0].error if unusable else f"no recorded payloads: expected {LAYOUT}"
        raise CommandFailed(f"cannot replay {folder}: {problem}")
    workspace = Path(tempfile.mkdtemp(prefix="app-rank-monitor-demo-"))
    options = DemoOptions(
        database_file=workspace / "demo.sqlite3",
        mail_dir=None if use_smtp else (mail_dir or workspace / "mail").absolute(),
        speed=speed,
        until=until,
        port=port,
        serve=serve,
    )
    if options.mail_dir is not None:
        try:
            options.mail_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CommandFailed(f"cannot create the mail folder: {exc}") from None
    emails_went_to = (
        f"sent to {settings.smtp.host}:{settings.smtp.port}"
        if options.mail_dir is None
        else f"written to {options.mail_dir}"
    )

    def started(places: DemoPlaces) -> None:
        plan = places.plan
        hours = (plan.last_poll - plan.start) / dt.timedelta(hours=1)
        lasting = dt.timedelta(seconds=max(1, round(hours / speed)))
        lines = [
            f"replaying {folder} from {plan.start:%Y-%m-%d %H:%M} to "
            f"{plan.last_poll:%Y-%m-%d %H:%M} UTC, a poll every {format_duration(plan.step)}, "
            f"{speed:g} simulated hours per second (at least {format_duration(lasting)})",
            f"status page:  {places.status_page}",
            f"metrics:      {places.status_page}metrics",
            f"read API:     {places.status_page}api/v1/apps",
            f"emails:       {emails_went_to}",
            f"database:     {options.database_file}",
            f"feeds:        {places.feeds} (the scenario as of the simulated time)",
            f"try:          {history_command(ctx, options.database_file)}",
        ]
        click.echo("\n".join(lines))

    def replayed(summary: DemoSummary) -> None:
        ended = "demo finished" if summary.complete else "demo stopped early"
        lines = summary.lines(emails_went_to=emails_went_to)
        click.echo(f"{ended}:\n  " + "\n  ".join(lines))
        if serve:
            click.echo(f"serving until Ctrl-C; database {options.database_file}")

    async def main() -> None:
        stop = asyncio.Event()
        async with stopped_by_signals(stop):
            await run_demo(
                settings, payloads, options, stop=stop, started=started, replayed=replayed
            )

    # The driver logs each round with its simulated time instead.
    rounds_log = logging.getLogger("monitor.rounds")
    level = rounds_log.level
    rounds_log.setLevel(max(logging.WARNING, rounds_log.getEffectiveLevel()))
    try:
        asyncio.run(main())
    except MonitorError as exc:
        raise CommandFailed(str(exc)) from None
    finally:
        rounds_log.setLevel(level)


def history_command(ctx: click.Context, database_file: Path) -> str:
    """A `history` command line reading the demo's database."""
    state = ctx.find_object(CliState)
    config = ["--config", str(state.config_path)] if state and state.config_path else []
    words = ["app-rank-monitor", *config, "history", "--app", "deepseek", "--country", "us"]
    url = shlex.quote(f"sqlite:///{database_file}")
    return f"MONITOR_DATABASE_URL={url} {shlex.join(words)}"
