"""`fetches`: the fetch log, newest first, with what a feed served when it was no chart."""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from monitor.cli_support import FORMAT_OPTION, reading, settings_of, time_option
from monitor.model import ChartKey
from monitor.output import OutputFormat, render
from monitor.store.fetch_queries import LoggedFetch

# A table row shows this much of a body sample; CSV and JSON show all of it (at most the
# 2 KiB monitor.polling keeps).
TABLE_SAMPLE_CHARS = 60


def _chart_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return ChartKey.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.option(
    "--chart",
    callback=_chart_option,
    help="Only this chart, e.g. us/top_free or apple/jp/top_paid/ipad/6014.",
)
@click.option("--failed", "failed_only", is_flag=True, help="Only failed fetches.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option(
    "--since", callback=time_option, help="ISO date/time (UTC) or a duration ago, e.g. 24h."
)
@FORMAT_OPTION
@click.pass_context
def fetches(
    ctx: click.Context,
    chart: ChartKey | None,
    failed_only: bool,
    limit: int,
    since: dt.datetime | None,
    fmt: str,
) -> None:
    """Recent feed fetches, newest first: outcome, HTTP status, error and, for a body that
    was no chart (an HTML page, cut or reshaped JSON), its first bytes."""
    with reading(settings_of(ctx)) as repository:
        logged = repository.recent_fetches(
            limit=limit, chart=chart, failed_only=failed_only, since=since
        )
    output = OutputFormat(fmt)
    rows = [_row(one, output) for one in logged]
    columns = ["time", "chart", "source", "outcome", "http_status", "attempts", "body_bytes"]
    columns += ["seconds", "error_class", "error_message", "body_sample"]
    if output is not OutputFormat.TABLE:
        columns[4:4] = ["recovered", "url"]
    click.echo(render(rows, columns, output), nl=False)


def _row(logged: LoggedFetch, output: OutputFormat) -> dict[str, Any]:
    fetch = logged.fetch
    sample = None
    if fetch.body_sample is not None:
        # Bytes that are not UTF-8 stay visible as \xNN rather than vanish.
        sample = fetch.body_sample.decode("utf-8", errors="backslashreplace")
        if output is OutputFormat.TABLE and len(sample) > TABLE_SAMPLE_CHARS:
            sample = sample[: TABLE_SAMPLE_CHARS - 3] + "..."
    return {
        "time": fetch.started_at.isoformat(),
        "chart": fetch.chart.slug,
        "source": fetch.source.value if fetch.source else None,
        "outcome": fetch.outcome.value,
        "recovered": logged.recovered,
        "url": fetch.url,
        "http_status": fetch.http_status,
        "attempts": fetch.attempts,
        "body_bytes": fetch.body_bytes,
        "seconds": round(fetch.duration_seconds, 3),
        "error_class": fetch.error_class,
        "error_message": fetch.error_message,
        "body_sample": sample,
    }
