"""Alert emails: rendered from a notification, delivered to a real SMTP server (aiosmtpd on
loopback), and every way delivery fails mapped to a transient or a permanent DeliveryError."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import io
import logging
import re
import time
import traceback
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from PIL import Image

from monitor.alerts.email import SmtpSender
from monitor.alerts.model import (
    AlertEvent,
    AppNews,
    AppRef,
    EventState,
    Notification,
    RankSeries,
    RuleKind,
    Severity,
    chart_title,
)
from monitor.alerts.rank_plot import BACKGROUND, LINE_COLOURS, PLOT_HEIGHT, draw_rank_plot
from monitor.alerts.render import SUBJECT_MAX_CHARS, header_text, one_line, render_email
from monitor.config import SmtpSettings
from monitor.errors import DeliveryError
from monitor.model import ChartKey, Collection, Device, Store
from tests.support.smtp_server import (
    Certificate,
    Faults,
    Login,
    Security,
    SmtpServer,
    make_certificate,
    refusing_port,
    silent_server,
)

SENDER = "rank-alerts@example.org"
RECIPIENT = "ops@example.com"
GRAFANA = "https://grafana.example.com/d/apprank-rankings"
USER, PASSWORD = "alerts", "pa55-W0rd-that-must-not-leak"
NOW = dt.datetime(2025, 1, 26, 9, 0, tzinfo=dt.UTC)
US_FREE = ChartKey(Store.APPLE, "us", Collection.TOP_FREE, Device.IPHONE)
GB_FREE = ChartKey(Store.APPLE, "gb", Collection.TOP_FREE, Device.IPHONE)
JP_PAID = ChartKey(Store.APPLE, "jp", Collection.TOP_PAID, Device.IPHONE)
EVIL_NAME = '<script>alert(1)</script> & "Co"\r\nBcc: evil@x'
DEEPSEEK = AppRef(Store.APPLE, "6737597349", "DeepSeek")
EVIL = AppRef(Store.APPLE, "1234567890", EVIL_NAME)


# -- building notifications -------------------------------------------------------------------


def series(chart: ChartKey, *ranks: int | None, hours: int = 12) -> RankSeries:
    start = NOW - dt.timedelta(hours=hours * (len(ranks) - 1))
    points = tuple((start + dt.timedelta(hours=hours * i), rank) for i, rank in enumerate(ranks))
    return RankSeries(chart, points, depth=100)


def event(
    app: AppRef,
    chart: ChartKey | None,
    summary: str,
    rank: int | None,
    previous: int | None,
    **facts: str,
) -> AlertEvent:
    return AlertEvent(
        rule="swing",
        kind=RuleKind.MOVED,
        state=EventState.FIRING,
        severity=Severity.CRITICAL,
        app=app,
        chart=chart,
        scope="Top Free iPhone" if chart is None else "",
        at=NOW,
        rank=rank,
        previous_rank=previous,
        depth=100,
        summary=summary,
        facts=facts,
        dedupe_key=f"{app.store_id}:{summary}",
    )


def two_app_notification() -> Notification:
    deepseek = AppNews(
        DEEPSEEK,
        (
            event(
                DEEPSEEK, US_FREE, "DeepSeek is #1 on US Top Free iPhone", 1, 31, passed="ChatGPT"
            ),
            event(DEEPSEEK, GB_FREE, "DeepSeek climbed 40 places on GB Top Free iPhone", 3, 43),
        ),
        (
            series(US_FREE, 31, 28, 20, 12, 5, 2, 1),
            series(GB_FREE, 43, None, None, 30, 12, 6, 3),
        ),
    )
    evil = AppNews(
        EVIL,
        (
            event(EVIL, JP_PAID, f"{EVIL_NAME} left the top 10", 14, 8, note=EVIL_NAME),
            event(EVIL, None, f"{EVIL_NAME} is in the top 10 in 3 countries", None, None),
        ),
        (series(JP_PAID, 8, 9, 14),),
    )
    return Notification(
        RECIPIENT, "<0f1e2d3c4b5a69788796a5b4c3d2e1f0@example.org>", NOW, (deepseek, evil)
    )


def simple_message(to: str = RECIPIENT) -> EmailMessage:
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = to
    message["Subject"] = "test"
    message.set_content("hello\n")
    return message


def smtp_settings(server: tuple[str, int] | SmtpServer, **overrides: Any) -> SmtpSettings:
    host, port = (server.host, server.port) if isinstance(server, SmtpServer) else server
    values: dict[str, Any] = {"host": host, "port": port, "from_address": SENDER}
    values["timeout_seconds"] = 5
    return SmtpSettings(**(values | overrides))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    with SmtpServer() as running:
        yield running


def delivery_error(settings: SmtpSettings, message: EmailMessage, **kwargs: Any) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        SmtpSender(settings, **kwargs).send(message)
    return info.value


# -- a rendered notification, delivered -------------------------------------------------------


def received_notification(server: SmtpServer, grafana_url: str | None) -> EmailMessage:
    message = render_email(two_app_notification(), sender=SENDER, grafana_url=grafana_url)
    SmtpSender(smtp_settings(server)).send(message)
    [received] = server.messages
    assert (received.mail_from, received.rcpt_tos) == (SENDER, (RECIPIENT,))
    return received.message


def text_of(message: EmailMessage, subtype: str) -> str:
    part = message.get_body((subtype,))
    assert isinstance(part, EmailMessage)
    content = part.get_content()
    assert isinstance(content, str)
    return content


def pictures_of(message: EmailMessage) -> dict[str, bytes]:
    return {
        str(part["Content-ID"]).strip("<>"): part.get_content()
        for part in message.walk()
        if part.get_content_type() == "image/png"
    }


def test_a_notification_arrives_with_its_headers_and_nothing_injected(server: SmtpServer) -> None:
    message = received_notification(server, GRAFANA)
    notification = two_app_notification()

    assert message["From"].addresses[0].addr_spec == SENDER
    assert str(message["To"]) == RECIPIENT
    assert str(message["Subject"]) == "DeepSeek is #1 on US Top Free iPhone (and 3 more)"
    assert str(message["Message-ID"]) == notification.message_id
    assert message["Date"].datetime == NOW
    assert str(message["Auto-Submitted"]) == "auto-generated"
    assert message["Bcc"] is None
    raw_headers = bytes(server.messages[0].raw).split(b"\r\n\r\n", 1)[0]
    assert not re.search(rb"^bcc:", raw_headers, re.IGNORECASE | re.MULTILINE)


def test_the_evil_name_reaches_no_header_even_in_the_subject() -> None:
    first = event(EVIL, JP_PAID, f"{EVIL_NAME} is #1", 1, 2)
    notification = Notification(RECIPIENT, "<id@example.org>", NOW, (AppNews(EVIL, (first,), ()),))

    message = render_email(notification, sender=SENDER, grafana_url=None)
    parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)

    assert str(parsed["Subject"]) == '<script>alert(1)</script> & "Co" Bcc: evil@x is #1'
    assert parsed["Bcc"] is None
    assert [name for name, _ in parsed.items()].count("Subject") == 1


def test_both_alternatives_carry_every_event_with_chart_ranks_and_facts(
    server: SmtpServer,
) -> None:
    message = received_notification(server, GRAFANA)

    assert message.get_content_type() == "multipart/alternative"
    plain, html = text_of(message, "plain"), text_of(message, "html")
    for body in (plain, html):
        assert "DeepSeek is #1 on US Top Free iPhone" in body
        assert chart_title(GB_FREE) in body
        assert "#3" in body
        assert "#43" in body
        assert "ChatGPT" in body
        assert "Top Free iPhone" in body  # the breadth event's scope, it has no chart
    for body in (plain, html):
        assert "US Top Free iPhone: #1 (was #31)" in body
        assert "JP Top Paid iPhone: #14 (was #8)" in body
        assert "was not in the top" not in body  # the breadth event has no rank of its own


def test_store_names_are_escaped_in_html_and_kept_on_one_line_in_text(server: SmtpServer) -> None:
    message = received_notification(server, GRAFANA)
    plain, html = text_of(message, "plain"), text_of(message, "html")

    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &#34;Co&#34; Bcc: evil@x" in html
    assert '<script>alert(1)</script> & "Co" Bcc: evil@x left the top 10' in plain
    assert not any(line.startswith("Bcc:") for line in plain.splitlines())
    assert "\r" not in plain.replace("\r\n", "\n")


def test_each_app_gets_an_inline_png_referenced_by_the_html(server: SmtpServer) -> None:
    message = received_notification(server, GRAFANA)
    html = text_of(message, "html")

    pictures = pictures_of(message)
    assert len(pictures) == 2
    assert re.findall(r'src="cid:([^"]+)"', html) == list(pictures)
    for png in pictures.values():
        with Image.open(io.BytesIO(png)) as image:
            assert image.format == "PNG"
            image.verify()
    related = next(p for p in message.walk() if p.get_content_type() == "multipart/related")
    assert [p.get_content_type() for p in related.iter_parts()] == [
        "text/html",
        "image/png",
        "image/png",
    ]


def test_links_go_to_the_store_page_and_to_grafana_with_the_app_selected(
    server: SmtpServer,
) -> None:
    message = received_notification(server, GRAFANA)
    plain, html = text_of(message, "plain"), text_of(message, "html")

    evil_link = (
        f"{GRAFANA}?var-app=%3Cscript%3Ealert%281%29%3C%2Fscript%3E%20%26%20%22Co%22%0D%0ABcc"
        "%3A%20evil%40x"
    )
    assert f"{GRAFANA}?var-app=DeepSeek" in plain
    assert evil_link in plain
    assert f'href="{GRAFANA}?var-app=DeepSeek"' in html
    assert f'href="{evil_link}"' in html.replace("&amp;", "&")
    for body in (plain, html):
        assert "https://apps.apple.com/app/id6737597349" in body
        assert "https://apps.apple.com/app/id1234567890" in body


def test_without_a_grafana_url_there_is_no_grafana_link() -> None:
    message = render_email(two_app_notification(), sender=SENDER, grafana_url=None)

    assert "var-app" not in text_of(message, "plain")
    assert "var-app" not in text_of(message, "html")
    assert "https://apps.apple.com/app/id6737597349" in text_of(message, "html")


def test_a_grafana_url_with_a_query_gets_the_app_appended() -> None:
    notification = two_app_notification()
    message = render_email(notification, sender=SENDER, grafana_url=f"{GRAFANA}?orgId=1")

    assert f"{GRAFANA}?orgId=1&var-app=DeepSeek" in text_of(message, "plain")


def test_an_app_without_rank_points_gets_no_picture() -> None:
    news = AppNews(DEEPSEEK, (event(DEEPSEEK, US_FREE, "DeepSeek is #1", 1, 2),), ())
    message = render_email(
        Notification(RECIPIENT, "<id@example.org>", NOW, (news,)), sender=SENDER, grafana_url=None
    )

    assert pictures_of(message) == {}
    assert "cid:" not in text_of(message, "html")


def test_rendering_for_an_invalid_recipient_is_a_permanent_delivery_error() -> None:
    notification = two_app_notification()
    broken = Notification("ops@", notification.message_id, NOW, notification.news)

    with pytest.raises(DeliveryError, match="invalid recipient address 'ops@'") as info:
        render_email(broken, sender=SENDER, grafana_url=None)

    assert info.value.permanent


def test_an_app_that_dropped_out_shows_the_depth_it_fell_below() -> None:
    dropped = event(DEEPSEEK, US_FREE, "DeepSeek dropped out of US Top Free iPhone", None, 97)
    message = render_email(
        Notification(RECIPIENT, "<id@example.org>", NOW, (AppNews(DEEPSEEK, (dropped,), ()),)),
        sender=SENDER,
        grafana_url=None,
    )

    for subtype in ("plain", "html"):
        assert "US Top Free iPhone: not in the top 100 (was #97)" in text_of(message, subtype)


# -- header sanitizing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Deep\r\nBcc: evil@x", "Deep Bcc: evil@x"),
        ("tab\there\x00nul\x7fdel", "tab here nul del"),
        ("line\u2028separator\u2029paragraph\x85next", "line separator paragraph next"),
        ("  spaced   out \n", "spaced out"),
        ("Ünïcödé 名前 stays", "Ünïcödé 名前 stays"),
    ],
)
def test_one_line_turns_control_characters_into_single_spaces(text: str, expected: str) -> None:
    assert one_line(text) == expected


def test_header_text_is_cut_with_an_ellipsis() -> None:
    assert header_text("x" * 10, max_chars=10) == "x" * 10
    assert header_text("word " * 10, max_chars=12) == "word word w\u2026"


def test_a_long_subject_is_capped() -> None:
    first = event(DEEPSEEK, US_FREE, "very " * 100 + "long", 1, 2)
    notification = Notification(
        RECIPIENT, "<id@example.org>", NOW, (AppNews(DEEPSEEK, (first,), ()),)
    )

    subject = str(render_email(notification, sender=SENDER, grafana_url=None)["Subject"])

    assert len(subject) == SUBJECT_MAX_CHARS
    assert subject.endswith("\u2026")


# -- the rank picture -------------------------------------------------------------------------


def rows_and_columns(png: bytes, colour: tuple[int, int, int]) -> tuple[set[int], set[int]]:
    with Image.open(io.BytesIO(png)) as image:
        rgb = image.convert("RGB")
        width, height = rgb.size
        pixels = rgb.load()
        assert pixels is not None
        hits = [(x, y) for y in range(height) for x in range(width) if pixels[x, y] == colour]
    return {y for _, y in hits}, {x for x, _ in hits}


def test_rank_one_is_drawn_above_rank_fifty() -> None:
    png = draw_rank_plot([series(US_FREE, 1, 1, 1, 1), series(GB_FREE, 50, 50, 50, 50)])

    top_rows, _ = rows_and_columns(png, LINE_COLOURS[0])
    low_rows, _ = rows_and_columns(png, LINE_COLOURS[1])
    # The legend swatches are below the plot: the highest row of each colour is its line.
    assert min(top_rows) < min(low_rows)
    assert min(low_rows) - min(top_rows) > PLOT_HEIGHT // 2  # 50 is the bottom of the axis


def test_a_climb_goes_up_the_picture() -> None:
    png = draw_rank_plot([series(US_FREE, 40, 1)])

    with Image.open(io.BytesIO(png)) as image:
        rgb = image.convert("RGB")
        left, right = 60, rgb.width - 20
        column_rows = [
            min(y for y in range(rgb.height) if rgb.getpixel((x, y)) == LINE_COLOURS[0])
            for x in (left, right)
        ]
    assert column_rows[1] < column_rows[0]


def test_the_line_breaks_where_the_app_was_not_listed() -> None:
    png = draw_rank_plot([series(US_FREE, 5, 5, 5, None, None, None, 5, 5, 5)])

    _, columns = rows_and_columns(png, LINE_COLOURS[0])
    with Image.open(io.BytesIO(png)) as image:
        width = image.width
    plot_columns = [x for x in columns if x > 44 and x < width - 14]
    left, right = min(plot_columns), max(plot_columns)
    middle = (left + right) // 2
    # Listed at 0-2 and 6-8 of 9 points: the line is missing over the middle half.
    assert {left + 10, right - 10} <= columns
    assert not {middle - 100, middle, middle + 100} & columns


def test_the_picture_is_a_png_with_a_white_background_and_a_legend_per_chart() -> None:
    many = [series(ChartKey(Store.APPLE, c, Collection.TOP_FREE, Device.IPHONE), 3, 2)
            for c in ("us", "gb", "de", "fr", "jp", "kr", "cn", "in", "br", "ca")]  # fmt: skip

    png = draw_rank_plot(many)

    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        assert image.convert("RGB").getpixel((1, 1)) == BACKGROUND
    for colour in LINE_COLOURS:  # eight lines drawn, two charts only named in the legend
        assert rows_and_columns(png, colour)[0]


def test_nothing_to_draw_is_an_error() -> None:
    with pytest.raises(ValueError, match="nothing to draw"):
        draw_rank_plot([])
    with pytest.raises(ValueError, match="nothing to draw"):
        draw_rank_plot([RankSeries(US_FREE, (), 100)])


# -- delivery faults --------------------------------------------------------------------------


def test_a_refused_connection_is_transient() -> None:
    with refusing_port() as (host, port):
        error = delivery_error(smtp_settings((host, port)), simple_message())

    assert not error.permanent
    assert error.smtp_code is None
    assert f"{host}:{port}" in str(error)
    assert "ConnectionRefusedError" in str(error)


@pytest.mark.parametrize("security", ["none", "starttls", "tls"])
def test_a_server_that_never_speaks_fails_within_the_timeout(security: str) -> None:
    with silent_server() as (host, port):
        started = time.monotonic()
        error = delivery_error(
            smtp_settings((host, port), timeout_seconds=0.5, security=security), simple_message()
        )
        elapsed = time.monotonic() - started

    assert not error.permanent
    assert 0.4 < elapsed < 3
    assert "timed out" in str(error)


def test_451_to_data_is_transient_and_the_next_attempt_goes_through(server: SmtpServer) -> None:
    server.faults.defer_data = 1
    sender = SmtpSender(smtp_settings(server))

    with pytest.raises(DeliveryError) as info:
        sender.send(simple_message())
    sender.send(simple_message())

    assert not info.value.permanent
    assert info.value.smtp_code == 451
    assert f"{server.host}:{server.port}" in str(info.value)
    assert "451 4.3.0 Temporary failure" in str(info.value)
    assert len(server.messages) == 1


def test_451_to_rcpt_is_transient(server: SmtpServer) -> None:
    server.faults.defer_rcpt = 1

    error = delivery_error(smtp_settings(server), simple_message())

    assert (error.permanent, error.smtp_code) == (False, 451)
    assert RECIPIENT in str(error)


def test_550_to_the_recipient_is_permanent() -> None:
    with SmtpServer(faults=Faults(reject_rcpt=frozenset({"gone@example.com"}))) as server:
        error = delivery_error(smtp_settings(server), simple_message(to="gone@example.com"))

        assert (error.permanent, error.smtp_code) == (True, 550)
        assert "gone@example.com: 550 5.1.1" in str(error)
        assert not server.messages


def test_a_refusal_of_some_recipients_is_an_error_although_the_others_got_it() -> None:
    with SmtpServer(faults=Faults(reject_rcpt=frozenset({"gone@example.com"}))) as server:
        message = simple_message(to=f"{RECIPIENT}, gone@example.com")
        error = delivery_error(smtp_settings(server), message)

        [received] = server.messages
    assert received.rcpt_tos == (RECIPIENT,)
    assert (error.permanent, error.smtp_code) == (True, 550)
    assert "accepted the message for the other recipients" in str(error)
    assert "gone@example.com: 550" in str(error)


def test_5xx_to_data_is_permanent(server: SmtpServer) -> None:
    server.faults.reject_data = 1

    error = delivery_error(smtp_settings(server), simple_message())

    assert (error.permanent, error.smtp_code) == (True, 554)


@pytest.mark.parametrize(
    "address", ["not an address", "a@b@c", "ops@exa_mple.com", "ops@-bad.com", "ümlaut@example.com"]
)
def test_an_invalid_recipient_address_is_permanent_without_connecting(address: str) -> None:
    message = simple_message()
    del message["To"]
    message["To"] = address
    with refusing_port() as (host, port):  # would be transient, had it connected
        error = delivery_error(smtp_settings((host, port)), message)

    assert error.permanent
    assert "invalid recipient address" in str(error)


def test_a_connection_dropped_after_the_data_is_transient(server: SmtpServer) -> None:
    server.faults.drop_after_data = 1

    error = delivery_error(smtp_settings(server), simple_message())

    assert (error.permanent, error.smtp_code) == (False, None)
    assert "SMTPServerDisconnected" in str(error)
    assert not server.messages


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_tls_delivers(certificate: Certificate, security: Security) -> None:
    with SmtpServer(security=security, certificate=certificate) as server:
        sender = SmtpSender(
            smtp_settings(server, security=security), ssl_context=certificate.client_context()
        )
        sender.send(simple_message())

        [received] = server.messages
        assert received.tls
        assert str(received.message["Subject"]) == "test"


def test_a_certificate_the_client_does_not_trust_fails_the_attempt(
    certificate: Certificate,
) -> None:
    with SmtpServer(security="tls", certificate=certificate) as server:
        error = delivery_error(smtp_settings(server, security="tls"), simple_message())

        assert not error.permanent  # like FetchConnectError: TLS failures are transient
        assert "CERTIFICATE_VERIFY_FAILED" in str(error)
        assert not server.messages


def test_starttls_required_but_not_offered_is_permanent(server: SmtpServer) -> None:
    error = delivery_error(smtp_settings(server, security="starttls"), simple_message())

    assert error.permanent
    assert "STARTTLS" in str(error)
    assert not server.messages


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_login_over_starttls_delivers(certificate: Certificate, mechanism: str) -> None:
    with SmtpServer(
        security="starttls",
        certificate=certificate,
        login=(USER, PASSWORD),
        mechanisms=(mechanism,),
    ) as server:
        settings = smtp_settings(server, security="starttls", username=USER, password=PASSWORD)
        SmtpSender(settings, ssl_context=certificate.client_context()).send(simple_message())

        assert server.logins == [Login(mechanism, USER, accepted=True)]
        assert len(server.messages) == 1


def test_login_over_implicit_tls_delivers(certificate: Certificate) -> None:
    with SmtpServer(security="tls", certificate=certificate, login=(USER, PASSWORD)) as server:
        settings = smtp_settings(server, security="tls", username=USER, password=PASSWORD)
        SmtpSender(settings, ssl_context=certificate.client_context()).send(simple_message())

        assert server.logins == [Login("PLAIN", USER, accepted=True)]
        assert len(server.messages) == 1


def test_a_server_requiring_login_refuses_a_sender_without_credentials(
    certificate: Certificate,
) -> None:
    with SmtpServer(security="starttls", certificate=certificate, login=(USER, PASSWORD)) as server:
        settings = smtp_settings(server, security="starttls")
        error = delivery_error(settings, simple_message(), ssl_context=certificate.client_context())

    assert (error.permanent, error.smtp_code) == (True, 530)


def test_a_wrong_password_is_permanent_and_never_shown(
    certificate: Certificate, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-" + PASSWORD
    with SmtpServer(security="starttls", certificate=certificate, login=(USER, PASSWORD)) as server:
        settings = smtp_settings(server, security="starttls", username=USER, password=wrong)
        error = delivery_error(settings, simple_message(), ssl_context=certificate.client_context())

        assert (error.permanent, error.smtp_code) == (True, 535)
        assert f"{server.host}:{server.port}" in str(error)
        assert not server.messages
        assert all(not login.accepted for login in server.logins)
    shown = [str(error), repr(error), "".join(traceback.format_exception(error)), caplog.text]
    assert not [text for text in shown if wrong in text or PASSWORD in text]


def test_the_password_is_scrubbed_from_a_server_reply_that_echoes_it() -> None:
    # Not something a sane server does; the scrubbing is there for the ones that are not.
    faults = Faults(reject_rcpt=frozenset({"s3cret@example.com"}))
    with SmtpServer(login=(USER, "s3cret"), faults=faults) as server:
        settings = smtp_settings(server, username=USER, password="s3cret")
        error = delivery_error(settings, simple_message(to="s3cret@example.com"))

        assert server.logins == [Login("PLAIN", USER, accepted=True)]
    assert error.smtp_code == 550
    assert "s3cret" not in str(error)
    assert "***@example.com: 550" in str(error)


def test_a_successful_send_logs_no_password(
    certificate: Certificate, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with SmtpServer(security="starttls", certificate=certificate, login=(USER, PASSWORD)) as server:
        settings = smtp_settings(server, security="starttls", username=USER, password=PASSWORD)
        message = render_email(two_app_notification(), sender=SENDER, grafana_url=GRAFANA)
        SmtpSender(settings, ssl_context=certificate.client_context()).send(message)

        assert len(server.messages) == 1
    assert PASSWORD not in caplog.text
    assert "sent email" in caplog.text


def test_render_and_send_use_the_same_message_id_on_a_second_attempt(server: SmtpServer) -> None:
    server.faults.defer_data = 1
    sender = SmtpSender(smtp_settings(server))
    notification = two_app_notification()

    with pytest.raises(DeliveryError):
        sender.send(render_email(notification, sender=SENDER, grafana_url=None))
    sender.send(render_email(notification, sender=SENDER, grafana_url=None))

    [received] = server.messages
    assert str(received.message["Message-ID"]) == notification.message_id
