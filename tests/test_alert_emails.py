"""Alert emails end to end: `app-rank-monitor run` polls a local fake Apple replaying DeepSeek's
climb past ChatGPT, and a real SMTP server on loopback receives what the outbox sends.

Exactly the expected emails arrive, one per poll round, in order; a glitch snapshot and a feed
outage in the middle of the climb add none. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fake_apple import DEEPSEEK, FakeAppleCharts
from tests.support.http_server import Request, Response, ScriptedServer
from tests.support.processes import environment, free_port, running, wait_for
from tests.support.smtp_server import SmtpServer

pytestmark = pytest.mark.slow

CHATGPT_ID = "6448311069"
US_TOP_FREE_V2 = "/api/v2/us/apps/top-free/100/apps.json"
US_TOP_FREE_LEGACY = "/us/rss/topfreeapplications/limit=100/json"
# Rules on the US top free chart only: the other charts of the fake reshuffle a little every
# other poll, which is not what these tests are about.
RULES = """
    [[alerts.rules]]
    name = "big-move"
    kind = "moved"
    places_up = 10
    places_down = 10
    send_resolved = false
    countries = ["us"]
    collections = ["top_free"]

    [[alerts.rules]]
    name = "top"
    kind = "entered_top"
    top = [1, 10]
    countries = ["us"]
    collections = ["top_free"]

    [[alerts.rules]]
    name = "passed"
    kind = "rival_passed"
    apps = ["DeepSeek"]
    rival = "ChatGPT"
    send_resolved = false
    countries = ["us"]
    collections = ["top_free"]
"""
EXPECTED_SUBJECTS = [
    "DeepSeek up 19 to #12 in US Top Free iPhone (was #31)",
    "DeepSeek in the top 10 of US Top Free iPhone at #4 (was #12)",
    "DeepSeek #1 in US Top Free iPhone (was #4) (and 2 more)",
]
EXPECTED_NEWS_OF_THE_LAST = [
    "ChatGPT no longer #1 in US Top Free iPhone (now #2)",
    "DeepSeek passed ChatGPT in US Top Free iPhone: #1 vs #2",
]


def write_config(
    directory: Path, database_url: str, apple: ScriptedServer, smtp: SmtpServer, port: int
) -> Path:
    config = directory / "monitor.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [database]
            url = "{database_url}"

            [http]
            port = {port}

            [itunes]
            base_url = "{apple.url("")}"

            [apple_rss]
            base_url = "{apple.url("")}"

            [poll]
            interval = "3s"
            tick = "1s"

            [fetch]
            requests_per_minute = 0
            max_attempts = 1

            [charts]
            storefronts = ["us", "gb"]
            collections = ["top_free", "top_paid"]

            [smtp]
            host = "127.0.0.1"
            port = {smtp.port}
            from_address = "monitor@example.com"

            [alerts]
            recipients = ["ops@example.com"]
            group_wait = "1s"
            """
        )
        + textwrap.dedent(RULES),
        encoding="utf-8",
    )
    return config


def serve(charts: FakeAppleCharts, us_top_free: Callable[[int], Response] | None = None) -> (
    Callable[[Request], Response]
):  # fmt: skip
    polls = {"us": 0}

    def respond(request: Request) -> Response:
        if us_top_free is not None and request.path in (US_TOP_FREE_V2, US_TOP_FREE_LEGACY):
            poll = polls["us"]
            if request.path == US_TOP_FREE_V2:
                polls["us"] += 1
            return us_top_free(poll)
        body = charts.respond(request.path)
        return Response(404) if body is None else Response(200, body)

    return respond


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


def run_until(
    config: Path, port: int, smtp: SmtpServer, emails: int, apple: ScriptedServer, polls: int
) -> str:
    """Run the service until `emails` arrived and the US top free chart had `polls` more
    polls with nothing more to say; returns its output."""
    command = [sys.executable, "-m", "monitor", "--config", str(config), "run"]
    with running(command, env=environment()) as service:
        process = service.process
        wait_for(
            lambda: process.poll() is not None or len(smtp.messages) >= emails,
            f"{emails} alert emails",
            60,
        )
        assert process.poll() is None, "the service stopped"
        settled = len(apple.requests_to(US_TOP_FREE_V2)) + polls
        wait_for(lambda: len(apple.requests_to(US_TOP_FREE_V2)) >= settled, "quiet polls", 30)
        # The sender runs every tick: give a late email the chance to show up.
        wait_for(lambda: sent_count(port) >= emails, "the outbox to record its sends", 10)
    assert process.returncode == 0, service.output
    return service.output


def sent_count(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    line = next(
        (line for line in text.splitlines()
         if line.startswith('apprank_notifications_total{channel="email",result="sent"}')),
        None,
    )  # fmt: skip
    return float(line.split()[-1]) if line else 0.0


def test_each_round_of_the_climb_sends_one_email_with_its_news(
    tmp_path: Path, database_url: str, smtp: SmtpServer
) -> None:
    charts = FakeAppleCharts(climb=(31, 12, 4, 1))
    with ScriptedServer(fallback=serve(charts)) as apple:
        port = free_port()
        config = write_config(tmp_path, database_url, apple, smtp, port)
        run_until(config, port, smtp, len(EXPECTED_SUBJECTS), apple, polls=2)

    subjects = [received.message["Subject"] for received in smtp.messages]
    assert subjects == EXPECTED_SUBJECTS
    last = smtp.messages[-1].message.get_body(("plain",))
    assert last is not None
    text = last.get_content()
    for news in EXPECTED_NEWS_OF_THE_LAST:
        assert news in text
    assert len({received.message["Message-ID"] for received in smtp.messages}) == 3
    assert all(received.rcpt_tos == ("ops@example.com",) for received in smtp.messages)


def test_a_glitch_and_an_outage_in_the_climb_send_no_false_alert(
    tmp_path: Path, database_url: str, smtp: SmtpServer
) -> None:
    charts = FakeAppleCharts()
    apps = charts.chart("us", "top-free", 0)

    def with_deepseek_at(rank: int) -> list[dict[str, object]]:
        others = [app for app in apps if app["id"] != DEEPSEEK["id"]]
        return [*others[: rank - 1], DEEPSEEK, *others[rank - 1 :]][:100]

    def glitch() -> list[dict[str, object]]:
        # Another chart entirely, DeepSeek on top and ChatGPT gone: a feed fault, not news.
        return [DEEPSEEK, *[app for app in reversed(apps) if app["id"] not in (
            DEEPSEEK["id"], CHATGPT_ID)]][:100]  # fmt: skip

    script = [with_deepseek_at(31), glitch(), with_deepseek_at(12), None, with_deepseek_at(4),
              with_deepseek_at(1)]  # fmt: skip

    def us_top_free(poll: int) -> Response:
        ranked = script[min(poll, len(script) - 1)]
        if ranked is None:
            return Response(503, b"unavailable")
        return Response(200, charts.v2_payload("us", "top-free", ranked))

    with ScriptedServer(fallback=serve(charts, us_top_free)) as apple:
        port = free_port()
        config = write_config(tmp_path, database_url, apple, smtp, port)
        output = run_until(config, port, smtp, len(EXPECTED_SUBJECTS), apple, polls=2)

    assert [received.message["Subject"] for received in smtp.messages] == EXPECTED_SUBJECTS
    assert "held back from alerting, it looks like a feed glitch" in output
    assert "HttpStatusError" in output  # the outage was a failed poll, not a drop
