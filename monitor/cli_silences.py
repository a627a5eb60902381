"""`silence add`, `silence list`, `silence expire`: silences kept in the database.

The service applies them, beside the [alerts] silences of the settings, to every event it
writes while they are active: a silenced event is stored (`alerts list` shows which silence
held it) and sent to nobody.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from typing import Any

import click

from monitor.alerts.policy import Silence
from monitor.cli_support import (
    FORMAT_OPTION,
    CommandFailed,
    reading,
    settings_of,
    watchlist_apps,
    writing,
)
from monitor.config import Settings, parse_duration
from monitor.model import watchlist_names
from monitor.output import OutputFormat, render
from monitor.store.repository import StoredSilence
from monitor.wiring import utc_now


@click.group()
def silence() -> None:
    """Silences added at run time: matching alert events are kept, not sent."""


@silence.command("add")
@click.option(
    "--until",
    "until_text",
    help="When it ends: ISO date/time, UTC unless an offset is given, e.g. 2025-02-01T00:00Z.",
)
@click.option("--for", "duration_text", help="When it ends, as a duration from now: 2h, 3d.")
@click.option("--app", "app_refs", multiple=True, help="Watchlist name or store id (repeatable).")
@click.option("--country", "countries", multiple=True, help="Storefront, e.g. us (repeatable).")
@click.option("--rule", "rules", multiple=True, help="Alert rule name (repeatable).")
@click.option("--comment", default="", help="Why, for whoever reads `silence list`.")
@click.option(
    "--all-alerts", is_flag=True, help="Silence every alert: no --app, --country or --rule."
)
@click.pass_context
def add(
    ctx: click.Context,
    until_text: str | None,
    duration_text: str | None,
    app_refs: Sequence[str],
    countries: Sequence[str],
    rules: Sequence[str],
    comment: str,
    all_alerts: bool,
) -> None:
    """Hold back the alerts matching every option given, until a time."""
    settings = settings_of(ctx)
    if all_alerts and (app_refs or countries or rules):
        raise click.UsageError(
            "--all-alerts silences every alert: leave out --app, --country and --rule, "
            "or --all-alerts"
        )
    if not (all_alerts or app_refs or countries or rules):
        raise click.UsageError(
            "a silence without --app, --country or --rule holds back every alert: "
            "say so with --all-alerts"
        )
    now = utc_now()
    value = Silence(
        until=_end(until_text, duration_text, now),
        apps=frozenset(_app_names(settings, app_refs)),
        countries=frozenset(_countries(settings, countries)),
        rules=frozenset(_rules(settings, rules)),
        comment=comment.strip(),
    )
    with writing(settings) as repository:
        silence_id = repository.add_silence(value, now=now)
    click.echo(f"added {value.describe()} (id {silence_id})")


def _end(until_text: str | None, duration_text: str | None, now: dt.datetime) -> dt.datetime:
    if (until_text is None) == (duration_text is None):
        raise click.UsageError("give either --until TIME or --for DURATION")
    if duration_text is not None:
        try:
            duration = parse_duration(duration_text)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--for") from None
        if duration <= dt.timedelta(0):
            raise click.BadParameter("a silence must last longer than 0s", param_hint="--for")
        try:
            # Whole seconds: the end is shown wherever the silence is; a fraction says nothing.
            return (now + duration).replace(microsecond=0)
        except OverflowError:
            raise click.BadParameter(
                f"{duration_text!r} from now is past the year 9999", param_hint="--for"
            ) from None
    assert until_text is not None
    try:
        until = dt.datetime.fromisoformat(until_text.strip())
    except ValueError:
        raise click.BadParameter(
            f"{until_text!r} is not an ISO date/time such as 2025-02-01T00:00Z "
            "(for a duration from now, use --for)",
            param_hint="--until",
        ) from None
    try:
        until = until.replace(tzinfo=dt.UTC) if until.tzinfo is None else until.astimezone(dt.UTC)
    except OverflowError:
        raise click.BadParameter(f"{until_text!r} is past the year 9999 in UTC",
                                 param_hint="--until") from None  # fmt: skip
    if until <= now:
        raise click.BadParameter(f"{until.isoformat()} is already past", param_hint="--until")
    return until


def _app_names(settings: Settings, refs: Sequence[str]) -> set[str]:
    """What each --app is matched on: the store id if that was given, else the watchlist
    name, spelled as the watchlist spells it (silences compare names exactly)."""
    names = watchlist_names(settings.watched_apps())
    matched: set[str] = set()
    for ref in refs:
        apps = watchlist_apps(ref, names, param_hint="--app")
        by_id = [store_id for _, store_id in apps if store_id == ref.strip()]
        matched.update(by_id or {names[app] for app in apps})
    return matched


def _countries(settings: Settings, given: Sequence[str]) -> set[str]:
    polled = {chart.country for chart in settings.chart_keys()}
    codes = {code.strip().lower() for code in given}
    unknown = sorted(codes - polled)
    if unknown:
        raise click.BadParameter(
            f"{unknown[0]!r} is not a storefront polled (see `check-config`)",
            param_hint="--country",
        )
    return codes


def _rules(settings: Settings, given: Sequence[str]) -> set[str]:
    names = [rule.name for rules in settings.alerts.rules for rule in rules.rules()]
    for name in given:
        if name not in names:
            raise click.BadParameter(
                f"{name!r} is not an alert rule ({', '.join(names) or 'none is configured'})",
                param_hint="--rule",
            )
    return set(given)


@silence.command("list")
@click.option("--all", "show_all", is_flag=True, help="Also the ones that ended or were expired.")
@FORMAT_OPTION
@click.pass_context
def list_silences(ctx: click.Context, show_all: bool, fmt: str) -> None:
    """The silences added at run time that are active now (or all of them)."""
    now = utc_now()
    with reading(settings_of(ctx)) as repository:
        stored = repository.silences(active_at=None if show_all else now)
    output = OutputFormat(fmt)
    rows = [_silence_row(one, now, output) for one in stored]
    columns = ["id", "state", "until", "apps", "countries", "rules", "comment"]
    if output is not OutputFormat.TABLE:
        columns[2:2] = ["created_at", "expired_at"]
    click.echo(render(rows, columns, output), nl=False)


def _silence_row(stored: StoredSilence, now: dt.datetime, output: OutputFormat) -> dict[str, Any]:
    value = stored.silence

    def selection(values: Collection[str]) -> Any:
        # A list in JSON; in a table an empty selection (any value matches) says so.
        if output is OutputFormat.JSON:
            return sorted(values)
        return ", ".join(sorted(values)) or ("any" if output is OutputFormat.TABLE else "")

    if stored.expired_at is not None and stored.expired_at <= now:
        state = "expired"
    else:
        state = "active" if value.until > now else "ended"
    return {
        "id": stored.id,
        "state": state,
        "created_at": stored.created_at.isoformat(),
        "expired_at": stored.expired_at.isoformat() if stored.expired_at else None,
        "until": value.until.isoformat(),
        "apps": selection(value.apps),
        "countries": selection(value.countries),
        "rules": selection(value.rules),
        "comment": value.comment,
    }


@silence.command("expire")
@click.argument("silence_id", metavar="ID", type=click.IntRange(min=1))
@click.pass_context
def expire(ctx: click.Context, silence_id: int) -> None:
    """End an active silence now (its id is in `silence list`)."""
    with writing(settings_of(ctx)) as repository:
        ended = repository.expire_silence(silence_id, now=utc_now())
    if not ended:
        raise CommandFailed(f"no active silence has id {silence_id} (see `silence list --all`)")
    click.echo(f"silence {silence_id} expired")
