"""Alert emails: a Notification rendered as a message ready for monitor.alerts.email.

    multipart/alternative
    +-- text/plain                  the whole news, readable without HTML
    +-- multipart/related
        +-- text/html               the same news, linking the pictures by Content-ID
        +-- image/png               one per app: its rank series (monitor.alerts.rank_plot)

The pictures belong to the HTML alone, so a text-only reader does not list them as
attachments. Names, summaries and facts come from the stores and are untrusted: the HTML
template escapes them (autoescape), and every string outside it, headers included, loses its
control characters, so a name holding CR LF cannot start a header or a line of its own.
Content-IDs derive from the Message-ID, so a message rendered again references the same ones.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import unicodedata
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from monitor.alerts.model import AlertEvent, AppNews, Notification, chart_title
from monitor.alerts.rank_plot import draw_rank_plot
from monitor.config_types import is_mail_address
from monitor.errors import DeliveryError

SENDER_NAME = "App Rank Monitor"
# Long enough for a summary and "(and N more)"; mail clients cut the rest anyway.
SUBJECT_MAX_CHARS = 200
_CONTENT_ID_UNSAFE = re.compile(r"[^A-Za-z0-9.\-]")

_TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent / "templates"),
    autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def one_line(text: str) -> str:
    """`text` without control characters or line/paragraph separators (each becomes a space),
    white space collapsed: safe in a header and as one line of text."""
    kept = "".join(
        " " if unicodedata.category(char) in ("Cc", "Zl", "Zp") else char for char in text
    )
    return " ".join(kept.split())


def header_text(text: str, max_chars: int = 998) -> str:
    """`one_line(text)`, cut to `max_chars` with an ellipsis."""
    flat = one_line(text)
    return flat if len(flat) <= max_chars else flat[: max_chars - 1].rstrip() + "\u2026"


@dataclasses.dataclass(frozen=True)
class _EventView:
    summary: str
    where: str
    state: str
    severity: str
    ranks: str | None  # "#1 (was #31)"; None when the event has no rank (breadth)
    at: str
    facts: tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class _AppView:
    name: str
    store_url: str
    grafana_url: str | None
    picture_cid: str | None  # without angle brackets, as in a cid: URL
    events: tuple[_EventView, ...]


def render_email(
    notification: Notification, *, sender: str, grafana_url: str | None
) -> EmailMessage:
    """The email for `notification`, from `sender` (a plain address, e.g. [smtp]
    from_address); `grafana_url` (the dashboard) is linked per app with `var-app` set.

    Raises DeliveryError (permanent) when the recipient is not a plain address: no retry
    can deliver that message.
    """
    pictures = {
        index: draw_rank_plot(news.series)
        for index, news in enumerate(notification.news)
        if any(one.points for one in news.series)
    }
    apps = [
        _app_view(
            news,
            grafana_url,
            _content_id(notification.message_id, index) if index in pictures else None,
        )
        for index, news in enumerate(notification.news)
    ]
    subject = header_text(notification.subject, SUBJECT_MAX_CHARS)
    message_id = header_text(notification.message_id)
    context = {
        "subject": subject,
        "apps": apps,
        "created_at": _when(notification.created_at),
        "message_id": message_id,
    }
    message = EmailMessage()
    message["From"] = Address(display_name=SENDER_NAME, addr_spec=header_text(sender))
    message["To"] = Address(addr_spec=_recipient(notification.recipient))
    message["Subject"] = subject
    message["Date"] = format_datetime(_utc(notification.created_at))
    message["Message-ID"] = message_id
    # RFC 3834: no vacation or out-of-office replies to a machine. The second header is the
    # one Microsoft Exchange reads instead.
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "All"
    message.set_content(_TEMPLATES.get_template("email.txt").render(context))
    message.add_alternative(_TEMPLATES.get_template("email.html").render(context), subtype="html")
    html_part = message.get_body(("html",))
    assert isinstance(html_part, EmailMessage)
    for index, app in enumerate(apps):
        if app.picture_cid is not None:
            html_part.add_related(
                pictures[index],
                "image",
                "png",
                cid=f"<{app.picture_cid}>",
                disposition="inline",
                filename=f"rank-{index + 1}.png",
            )
    return message


def _recipient(address: str) -> str:
    # Checked here because the email package's header parser fails on some invalid addresses
    # with an IndexError rather than a parse error.
    if not is_mail_address(address):
        raise DeliveryError(f"invalid recipient address {address!r}", permanent=True)
    return address


def grafana_link(grafana_url: str, app_name: str) -> str:
    """The dashboard at `grafana_url` with its `app` variable set to `app_name`."""
    separator = "&" if "?" in grafana_url else "?"
    return f"{grafana_url}{separator}{urlencode({'var-app': app_name}, quote_via=quote)}"


def _app_view(news: AppNews, grafana_url: str | None, picture_cid: str | None) -> _AppView:
    name = one_line(news.app.name)
    return _AppView(
        name=name,
        store_url=news.app.store_url,
        grafana_url=grafana_link(grafana_url, news.app.name) if grafana_url else None,
        picture_cid=picture_cid,
        events=tuple(_event_view(event) for event in news.events),
    )


def _event_view(event: AlertEvent) -> _EventView:
    return _EventView(
        summary=one_line(event.summary),
        where=chart_title(event.chart) if event.chart is not None else one_line(event.scope),
        state=event.state.value,
        severity=event.severity.value,
        ranks=_ranks_text(event),
        at=_when(event.at),
        facts=tuple((one_line(key), one_line(value)) for key, value in event.facts.items()),
    )


def _ranks_text(event: AlertEvent) -> str | None:
    if event.rank is None and event.previous_rank is None:
        return None
    now, before = _rank_text(event.rank, event.depth), _rank_text(event.previous_rank, event.depth)
    return f"{now} (was {before})"


def _rank_text(rank: int | None, depth: int | None) -> str:
    if rank is not None:
        return f"#{rank}"
    return f"not in the top {depth}" if depth else "not listed"


def _utc(moment: dt.datetime) -> dt.datetime:
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)
    return aware.astimezone(dt.UTC)


def _when(moment: dt.datetime) -> str:
    return _utc(moment).strftime("%Y-%m-%d %H:%M UTC")


def _content_id(message_id: str, index: int) -> str:
    """A Content-ID unique to this message and app, the same whenever it is rendered."""
    local, _, domain = message_id.strip("<> ").partition("@")
    local = _CONTENT_ID_UNSAFE.sub("", local) or "notification"
    domain = _CONTENT_ID_UNSAFE.sub("", domain) or "app-rank-monitor.invalid"
    return f"rank{index + 1}.{local}@{domain}"
