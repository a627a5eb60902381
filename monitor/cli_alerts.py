"""`alerts list` (stored events and their deliveries) and `alerts test-email`."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Sequence
from email.message import EmailMessage
from typing import Any

import click

from monitor.alerts.email import SmtpSender
from monitor.alerts.model import (
    AlertEvent,
    AppNews,
    AppRef,
    EventState,
    Notification,
    RuleKind,
    Severity,
    message_id,
)
from monitor.alerts.render import render_email
from monitor.cli_support import (
    FORMAT_OPTION,
    CommandFailed,
    reading,
    settings_of,
    time_option,
    watchlist_apps,
)
from monitor.config import Settings
from monitor.config_types import is_mail_address
from monitor.documents import alert_document, delivery_recipient
from monitor.errors import DeliveryError
from monitor.model import Store, watchlist_names
from monitor.output import OutputFormat, render
from monitor.store.alert_queries import AlertRecord, DeliveryState
from monitor.wiring import utc_now

TEST_APP = AppRef(Store.APPLE, "0", "app-rank-monitor test")
# More than anyone reads in a terminal; a bound keeps the query's LIMIT a valid integer.
MAX_LIMIT = 100_000


@click.group()
def alerts() -> None:
    """Alert events and their delivery."""


@alerts.command("list")
@click.option("--limit", type=click.IntRange(min=1, max=MAX_LIMIT), default=50, show_default=True)
@click.option("--app", "app_ref", help="Watchlist name or store id of the app.")
@click.option(
    "--since", callback=time_option, help="ISO date/time (UTC) or a duration ago, e.g. 7d."
)
@FORMAT_OPTION
@click.pass_context
def list_alerts(
    ctx: click.Context, limit: int, app_ref: str | None, since: dt.datetime | None, fmt: str
) -> None:
    """Recent alert events, newest first: what fired or resolved, and where it was sent."""
    settings = settings_of(ctx)
    names = watchlist_names(settings.watched_apps())
    of_apps = None if app_ref is None else watchlist_apps(app_ref, names, param_hint="--app")
    with reading(settings) as repository:
        records = repository.recent_alerts(
            limit=limit, since=since, of_apps=of_apps, app_names=names
        )
    rows = [_alert_row(record) for record in records]
    if fmt == OutputFormat.JSON:
        columns = [
            "id", "at", "app", "store_id", "chart", "scope", "rule", "kind", "state", "severity",
            "summary", "silenced_by", "deliveries",
        ]  # fmt: skip
    else:
        columns = ["at", "app", "rule", "state", "summary", "silenced_by", "delivery"]
    click.echo(render(rows, columns, OutputFormat(fmt)), nl=False)


def _alert_row(record: AlertRecord) -> dict[str, Any]:
    day = record.event.at.date()
    return {
        **alert_document(record),
        "delivery": "; ".join(_delivery_text(one, day) for one in record.deliveries)
        or ("" if record.silenced_by else "none (no recipients)"),
    }


def _delivery_text(delivery: DeliveryState, day: dt.date) -> str:
    """e.g. "email ops@example.com: sent 12:03 (2 attempts)"; times on the event's day (UTC)
    without their date."""
    where = f"{delivery.channel} {delivery_recipient(delivery)}"
    tries = f"{delivery.attempts} attempt{'' if delivery.attempts == 1 else 's'}"
    if delivery.state == "sent" and delivery.sent_at is not None:
        return f"{where}: sent {_time(delivery.sent_at, day)} ({tries})"
    if delivery.state == "dead":
        return f"{where}: dead after {tries}: {delivery.last_error}"
    pending = f"{where}: pending until {_time(delivery.not_before, day)}"
    if delivery.attempts:
        pending += f" (retrying after {tries}: {delivery.last_error})"
    return pending


def _time(moment: dt.datetime, day: dt.date) -> str:
    return moment.strftime("%H:%M" if moment.date() == day else "%Y-%m-%d %H:%M")


@alerts.command("test-email")
@click.option(
    "--to",
    "addresses",
    multiple=True,
    help="Address to send to (repeatable). Default: every [alerts] recipient.",
)
@click.pass_context
def test_email(ctx: click.Context, addresses: Sequence[str]) -> None:
    """Send a test email through the [smtp] settings; exit 1 if it could not be sent."""
    settings = settings_of(ctx)
    for address in addresses:
        if not is_mail_address(address):
            raise click.BadParameter(
                f"{address!r} is not a plain ASCII email address", param_hint="--to"
            )
    recipients = list(addresses) or settings.alerts.recipients
    if not recipients:
        raise CommandFailed(
            "no recipient: give --to ADDRESS, or set [alerts] recipients "
            "(MONITOR_ALERTS_RECIPIENTS)"
        )
    smtp = SmtpSender(settings.smtp)
    server = f"SMTP server {settings.smtp.host}:{settings.smtp.port}"
    failed = False
    for recipient in recipients:
        try:
            smtp.send(_test_message(settings, recipient))
        except DeliveryError as exc:
            click.echo(f"test email to {recipient} not sent: {exc}", err=True)
            failed = True
        else:
            click.echo(f"sent a test email to {recipient} through {server}")
    if failed:
        sys.exit(1)


def _test_message(settings: Settings, recipient: str) -> EmailMessage:
    """One notification with one sample event, saying in its subject and its text that it is
    a test: an alert email rendered the way the service renders them."""
    now = utc_now()
    event = AlertEvent(
        rule="test-email",
        kind=RuleKind.ENTERED_TOP,
        state=EventState.FIRING,
        severity=Severity.INFO,
        app=TEST_APP,
        chart=None,
        scope="Test message, about no chart",
        at=now,
        rank=None,
        previous_rank=None,
        depth=None,
        summary="Test email from app-rank-monitor: alert emails reach you",
        facts={"test": "sent by `app-rank-monitor alerts test-email`; no rank changed"},
        dedupe_key=f"test-email {now.isoformat()}",
    )
    notification = Notification(
        recipient=recipient,
        message_id=message_id(recipient, [event.dedupe_key], settings.smtp.message_id_domain),
        created_at=now,
        news=(AppNews(TEST_APP, (event,), ()),),
    )
    # No dashboard link: the sample app has no rank history to show.
    return render_email(notification, sender=settings.smtp.from_address, grafana_url=None)
