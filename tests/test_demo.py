"""`app-rank-monitor demo`: the reconstructed DeepSeek surge replayed through the real service
in simulated time.

In-process, the whole scenario as fast as the machine goes: the emails written include
DeepSeek taking #1 in the US, each went out `group_wait` of simulated time after its poll,
and the summary's numbers are those of the database. As a real process, part of it at a
pace one can watch, sending its mail to an SMTP server: the status page, /metrics and the
read API answer while it replays and, with --serve, after it, until SIGINT ends it with exit
0. The file sender writes exactly what the SMTP path sends.
"""

from __future__ import annotations

import collections
import datetime as dt
import email
import email.policy
import json
import re
import signal
import subprocess
import sys
import tempfile
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest

from monitor.alerts.email import MailFileSender, SmtpSender
from monitor.alerts.render import render_email
from monitor.demo.driver import DemoPlan
from monitor.errors import DeliveryError
from monitor.replay import find_payloads
from monitor.store.engine import open_database
from monitor.store.repository import Repository
from tests.support.processes import environment, free_port, wait_for
from tests.support.smtp_server import SmtpServer
from tests.test_cli import ok, run_cli
from tests.test_email import SENDER, simple_message, smtp_settings, two_app_notification

SCENARIO = Path(__file__).resolve().parents[1] / "seeds" / "scenarios" / "deepseek-2025-01"
DEEPSEEK_TAKES_US = "DeepSeek #1 in US Top Free iPhone (was #2)"
# Among the emails, in this order: DeepSeek's climb in the US, as the news reported it.
EXPECTED_SUBJECTS = [
    "DeepSeek up 11 to #42 in US Top Free iPhone (was #53)",
    "DeepSeek in the top 10 of US Top Free iPhone at #8 (was #11)",
    f"{DEEPSEEK_TAKES_US} (and 5 more)",
]


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def read_emails(folder: Path) -> list[EmailMessage]:
    messages = []
    for path in sorted(folder.glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        messages.append(message)
    return messages


def summary_of(output: str) -> dict[str, str]:
    """The `name: value` lines after "demo finished:"."""
    _, _, summary = output.partition("demo finished:\n")
    assert summary, output
    lines = [line.strip().partition(": ") for line in summary.splitlines() if ": " in line]
    return {name: value for name, _, value in lines}


# -- the whole scenario, in-process ---------------------------------------------------------


@pytest.mark.slow
def test_the_demo_replays_the_surge_and_mails_deepseek_taking_number_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where its database goes
    mail = tmp_path / "mail"
    result = ok(run_cli(None, "demo", "--speed", "1e6", "--mail-dir", str(mail),
                        "--port", str(free_port())))  # fmt: skip

    emails = read_emails(mail)
    subjects = [str(message["Subject"]) for message in emails]
    assert [s for s in subjects if s in EXPECTED_SUBJECTS] == EXPECTED_SUBJECTS, subjects
    assert all(message["To"] == "demo@localhost" for message in emails)
    # Each email went out group_wait (1 minute) of simulated time after its poll step.
    sent_at = [message["Date"].datetime for message in emails]
    assert all(at.minute == 1 and at.hour % 3 == 0 for at in sent_at), sent_at
    assert utc("2025-01-20T00:00") < min(sent_at) < max(sent_at) < utc("2025-02-01T00:00")
    takes_us = emails[subjects.index(EXPECTED_SUBJECTS[-1])]
    assert takes_us["Date"].datetime == utc("2025-01-26T06:01")

    summary = summary_of(result.stdout)
    (database_file,) = tmp_path.glob("app-rank-monitor-demo-*/demo.sqlite3")
    database_url = f"sqlite:///{database_file}"
    assert f"database:     {database_file}" in result.stdout
    payloads, _ = find_payloads(SCENARIO)
    with open_database(database_url, writer=False) as database:
        stored = Repository(database).count_snapshots(since=None, until=None)
    # The US charts of 03:00 repeat those of 00:00 (see the scenario's README).
    assert stored == len(payloads) - 12
    assert summary["snapshots stored"] == str(stored)
    # Every chart every 3 hours, the 6-hourly ones confirmed in between: none failed.
    assert summary["polls"] == f"{5 * 96} (0 failed)"
    events = json.loads(
        ok(
            run_cli(
                None,
                "alerts",
                "list",
                "--limit",
                "100000",
                "--format",
                "json",
                env={"MONITOR_DATABASE_URL": database_url},
            )
        ).stdout
    )
    fired = collections.Counter(e["rule"] for e in events if e["state"] == "firing")
    total, _, rules = summary["alerts fired"].removesuffix(")").partition(" (")
    counted = dict(rule_count.rsplit(" ", 1) for rule_count in rules.split(", "))
    assert (int(total), {rule: int(n) for rule, n in counted.items()}) == (fired.total(), fired)
    assert fired["top-top1"] >= 5  # DeepSeek in each storefront, ChatGPT in the US
    # One recipient: one message per moment with news, recorded as sent at that moment.
    sent = {d["sent_at"] for e in events for d in e["deliveries"] if d["state"] == "sent"}
    assert sent == {at.isoformat() for at in sent_at}
    assert summary["emails"] == f"{len(emails)} written to {mail}"
    assert "#1: DeepSeek in US Top Free iPhone at 2025-01-26 06:00 UTC" in result.stdout


def test_the_plan_steps_by_the_scenario_and_sends_each_rounds_news_group_wait_later() -> None:
    payloads, _ = find_payloads(SCENARIO)
    recorded = sorted({payload.fetched_at for payload in payloads})
    plan = DemoPlan.of(recorded, until=None, group_wait=dt.timedelta(minutes=1))
    assert (plan.start, plan.step, plan.last_poll) == (
        utc("2025-01-20T00:00"), dt.timedelta(hours=3), utc("2025-01-31T21:00"))  # fmt: skip
    moments = plan.moments()
    assert len(moments) == 2 * 96
    assert moments[:3] == [utc("2025-01-20T00:00"), utc("2025-01-20T00:01"),
                           utc("2025-01-20T03:00")]  # fmt: skip
    short = DemoPlan.of(recorded, until=utc("2025-01-26T07:30"), group_wait=dt.timedelta(0))
    assert short.moments()[-1] == utc("2025-01-26T06:00")


# -- the emails written are the emails sent ---------------------------------------------------


def test_an_email_file_holds_exactly_what_the_smtp_server_receives(tmp_path: Path) -> None:
    message = render_email(two_app_notification(), sender=SENDER, grafana_url=None)
    # Left unset, a MIME boundary is drawn at random each time the message is flattened.
    message.set_boundary("the-outer-boundary")
    with SmtpServer() as server:
        SmtpSender(smtp_settings(server)).send(message)
    files = MailFileSender(tmp_path / "mail")
    files.send(message)
    [received] = server.messages
    [written] = files.written
    assert written.read_bytes() == received.raw
    assert written.name.startswith("0001-")
    assert written.suffix == ".eml"
    # A second run into the same folder numbers on, and keeps what was there.
    again = MailFileSender(tmp_path / "mail")
    again.send(message)
    assert again.written[0].name.startswith("0002-")
    assert written.exists()


def test_an_email_to_an_invalid_address_is_dead_on_arrival_and_writes_no_file(
    tmp_path: Path,
) -> None:
    files = MailFileSender(tmp_path)
    with pytest.raises(DeliveryError) as info:
        files.send(simple_message(to="not an address"))
    assert info.value.permanent
    assert "invalid recipient address" in str(info.value)
    assert list(tmp_path.iterdir()) == []


# -- a real process, at a pace, with --serve and SMTP -----------------------------------------


@pytest.mark.slow
def test_the_demo_process_serves_its_pages_while_it_replays_and_after_until_sigint(
    tmp_path: Path,
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    output = tmp_path / "output.txt"
    with SmtpServer() as smtp:
        demo = ["demo", "--smtp", "--serve", "--port", str(port), "--speed", "40",
                "--until", "2025-01-26T06:00"]  # fmt: skip
        command = [sys.executable, "-m", "monitor", *demo]
        env = environment() | {
            "TMPDIR": str(tmp_path),  # where its database goes
            "MONITOR_SMTP_HOST": "127.0.0.1",
            "MONITOR_SMTP_PORT": str(smtp.port),
            "MONITOR_ALERTS_RECIPIENTS": "ops@example.com",
        }
        with output.open("w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            wait_for(lambda: answers(f"{base}/readyz"), "the status listener", 30)
            during = [httpx.get(f"{base}{path}", timeout=5) for path in ("/", "/metrics")]
            assert "demo finished" not in output.read_text(), "the replay ended too soon to watch"
            assert [response.status_code for response in during] == [200, 200]
            assert "apprank_build_info" in during[1].text
            wait_for(lambda: "demo finished" in output.read_text(), "the replay to end", 60)
            assert process.poll() is None, output.read_text()

            metrics = httpx.get(f"{base}/metrics", timeout=5).text
            apps = httpx.get(f"{base}/api/v1/apps", timeout=5).json()
            page = httpx.get(f"{base}/", timeout=5).text
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=20)
    text = output.read_text()
    assert process.returncode == 0, text

    deepseek_us = re.search(r'^apprank_rank\{app="DeepSeek",[^}]*country="us"[^}]*\} (\S+)$',
                            metrics, re.MULTILINE)  # fmt: skip
    assert deepseek_us is not None, metrics
    assert float(deepseek_us.group(1)) == 1.0
    deepseek = next(app for app in apps["apps"] if app["name"] == "DeepSeek")
    assert deepseek["best_rank"] == 1
    assert "DeepSeek" in page
    subjects = [str(received.message["Subject"]) for received in smtp.messages]
    assert any(subject.startswith(DEEPSEEK_TAKES_US) for subject in subjects), subjects
    assert all(received.rcpt_tos == ("ops@example.com",) for received in smtp.messages)
    summary = summary_of(text)
    assert summary["emails"] == f"{len(subjects)} sent to 127.0.0.1:{smtp.port}"
    assert summary["simulated"].startswith("2025-01-20 00:00 UTC to 2025-01-26 06:01 UTC")


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
