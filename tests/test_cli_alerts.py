"""`alerts list`, `alerts test-email` and `silence add/list/expire` as a user runs them.

Alert events come from the fake Apple of test_cli.py: DeepSeek climbs from #31 to #12 between
the first and the second poll of the US top free chart, which the default rules tell as a big
move. `alerts test-email` talks to a real SMTP server (tests.support.smtp_server).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.store.engine import open_database
from monitor.store.repository import Repository
from tests.support.fake_apple import DEEPSEEK
from tests.support.smtp_server import SmtpServer, refusing_port
from tests.test_cli import US_TOP_FREE, Deployment, deployment, ok, table

RECIPIENTS = ("ops@example.com", "cto@example.com", "dev@example.com")
ALERTS = f"""
[alerts]
recipients = {json.dumps(list(RECIPIENTS))}
"""
DEEPSEEK_UP_19 = "DeepSeek up 19 to #12 in US Top Free iPhone (was #31)"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def alerting(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    """A deployment with alert recipients, on SQLite and on PostgreSQL."""
    database_url: str = request.getfixturevalue(f"{request.param}_url")
    with deployment(tmp_path, database_url, ALERTS) as deployed:
        yield deployed


def climb(deployed: Deployment) -> None:
    """Two polls of the US top free chart: DeepSeek from #31 to #12."""
    for _ in range(2):
        ok(deployed.run("poll-once", "--chart", US_TOP_FREE))


# -- alerts list ------------------------------------------------------------------------------


def test_alerts_list_shows_the_events_of_a_poll_with_their_pending_deliveries(
    alerting: Deployment,
) -> None:
    climb(alerting)

    (event,) = alerting.json("alerts", "list")
    assert {key: event[key] for key in ("app", "store_id", "chart", "rule", "state")} == {
        "app": "DeepSeek",
        "store_id": DEEPSEEK["id"],
        "chart": "apple/us/top_free/iphone/all",
        "rule": "big-move",
        "state": "firing",
    }
    assert (event["summary"], event["silenced_by"]) == (DEEPSEEK_UP_19, None)
    at = dt.datetime.fromisoformat(event["at"])
    assert [(d["recipient"], d["state"], d["attempts"]) for d in event["deliveries"]] == [
        (recipient, "pending", 0) for recipient in RECIPIENTS
    ]
    not_before = dt.datetime.fromisoformat(event["deliveries"][0]["not_before"])
    assert dt.timedelta(0) < not_before - at <= dt.timedelta(minutes=2)  # the group wait

    (row,) = table(ok(alerting.run("alerts", "list")).stdout)
    assert {key: row[key] for key in ("at", "app", "rule", "state", "summary")} == {
        "at": event["at"],
        "app": "DeepSeek",
        "rule": "big-move",
        "state": "firing",
        "summary": DEEPSEEK_UP_19,
    }
    assert row["silenced_by"] == ""
    until = not_before.strftime("%H:%M" if not_before.date() == at.date() else "%Y-%m-%d %H:%M")
    assert row["delivery"] == "; ".join(
        f"email {recipient}: pending until {until}" for recipient in RECIPIENTS
    )


def test_alerts_list_shows_sent_retrying_and_dead_deliveries(alerting: Deployment) -> None:
    climb(alerting)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    outcomes = {
        "ops@example.com": ("sent", None),
        "cto@example.com": ("retrying", "SMTP server mx:25 answered 451 4.3.0 try later"),
        "dev@example.com": ("dead_lettered", "SMTP server mx:25 answered 550 5.1.1 no such user"),
    }
    with open_database(alerting.database_url, writer=True) as database:
        repository = Repository(database)
        while message := repository.claim_message(
            owner="test", now=later, lease=dt.timedelta(minutes=1), domain="example.com"
        ):
            outcome, error = outcomes[message.recipient]
            retry_at = later + dt.timedelta(minutes=10) if outcome == "retrying" else None
            repository.finish_message(
                message, outcome=outcome, now=later, error=error, retry_at=retry_at
            )

    (event,) = alerting.json("alerts", "list")
    deliveries = {d["recipient"]: d for d in event["deliveries"]}
    assert {r: (d["state"], d["attempts"]) for r, d in deliveries.items()} == {
        "ops@example.com": ("sent", 1),
        "cto@example.com": ("pending", 1),
        "dev@example.com": ("dead", 1),
    }
    assert dt.datetime.fromisoformat(deliveries["ops@example.com"]["sent_at"]) == later
    assert deliveries["dev@example.com"]["last_error"] == outcomes["dev@example.com"][1]

    (row,) = table(ok(alerting.run("alerts", "list")).stdout)
    clock = r"(\d{4}-\d\d-\d\d )?\d\d:\d\d"
    assert re.fullmatch(
        f"email ops@example.com: sent {clock} \\(1 attempt\\); "
        f"email cto@example.com: pending until {clock} \\(retrying after 1 attempt: "
        "SMTP server mx:25 answered 451 4.3.0 try later\\); "
        "email dev@example.com: dead after 1 attempt: "
        "SMTP server mx:25 answered 550 5.1.1 no such user",
        row["delivery"],
    ), row["delivery"]


def test_alerts_list_is_newest_first_and_filters_by_app_time_and_count(
    alerting: Deployment,
) -> None:
    climb(alerting)
    ok(alerting.run("poll-once", "--chart", US_TOP_FREE))  # DeepSeek climbs on

    events = alerting.json("alerts", "list")

    assert len(events) > 1
    assert events[-1]["summary"] == DEEPSEEK_UP_19
    assert [e["at"] for e in events] == sorted((e["at"] for e in events), reverse=True)
    assert alerting.json("alerts", "list", "--limit", "1") == events[:1]
    deepseek = [e for e in events if e["store_id"] == DEEPSEEK["id"]]
    assert alerting.json("alerts", "list", "--app", "deepseek") == deepseek
    assert alerting.json("alerts", "list", "--app", DEEPSEEK["id"]) == deepseek
    chatgpt = [e for e in events if e["app"] == "ChatGPT"]
    assert alerting.json("alerts", "list", "--app", "ChatGPT") == chatgpt
    newest = alerting.json("alerts", "list", "--since", events[0]["at"])
    assert newest == [e for e in events if e["at"] == events[0]["at"]]
    assert alerting.json("alerts", "list", "--since", "2099-01-01") == []


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--app", "Deepsek"], "Invalid value for --app: 'Deepsek' is neither the name nor "
                               "the store id of a watchlist app (ChatGPT, "),
        (["--limit", "0"], "Invalid value for '--limit'"),
        (["--since", "last week"], "Invalid value for '--since'"),
    ],
)  # fmt: skip
def test_alerts_list_rejects_bad_options_naming_them(
    tmp_path: Path, sqlite_url: str, args: list[str], complaint: str
) -> None:
    with deployment(tmp_path, sqlite_url, ALERTS) as deployed:
        result = deployed.run("alerts", "list", *args)

    assert result.exit_code == 2, result.output
    assert complaint in result.stderr


# -- silences ---------------------------------------------------------------------------------


def test_silence_add_list_and_expire_round_trip(alerting: Deployment) -> None:
    ok(alerting.run("migrate"))

    added = ok(alerting.run(
        "silence", "add", "--until", "2099-02-01T00:00Z", "--app", "deepseek",
        "--country", "US", "--rule", "big-move", "--comment", "launch week",
    ))  # fmt: skip
    everything = ok(alerting.run("silence", "add", "--for", "2h", "--all-alerts"))

    assert added.stdout == (
        "added silence until 2099-02-01T00:00:00+00:00; apps DeepSeek; countries us; "
        "rules big-move; 'launch week' (id 1)\n"
    )
    assert re.fullmatch(r"added silence until \S+ \(id 2\)\n", everything.stdout)
    rows = table(ok(alerting.run("silence", "list")).stdout)
    assert rows[0] == {
        "id": "1", "state": "active", "until": "2099-02-01T00:00:00+00:00", "apps": "DeepSeek",
        "countries": "us", "rules": "big-move", "comment": "launch week",
    }  # fmt: skip
    assert (rows[1]["id"], rows[1]["apps"], rows[1]["countries"], rows[1]["rules"]) == (
        "2", "any", "any", "any",
    )  # fmt: skip
    listed = alerting.json("silence", "list")
    assert listed[0]["apps"] == ["DeepSeek"]
    assert listed[1]["apps"] == []
    two_hours = dt.datetime.fromisoformat(listed[1]["until"]) - dt.datetime.fromisoformat(
        listed[1]["created_at"]
    )
    assert dt.timedelta(hours=2) - dt.timedelta(seconds=1) <= two_hours <= dt.timedelta(hours=2)

    assert ok(alerting.run("silence", "expire", "2")).stdout == "silence 2 expired\n"
    assert [row["id"] for row in table(ok(alerting.run("silence", "list")).stdout)] == ["1"]
    every = alerting.json("silence", "list", "--all")
    assert [(s["id"], s["state"]) for s in every] == [(1, "active"), (2, "expired")]
    assert every[1]["expired_at"] is not None
    again = alerting.run("silence", "expire", "2")
    assert again.exit_code == 2
    assert "no active silence has id 2 (see `silence list --all`)" in again.stderr


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--app", "DeepSeek"], "give either --until TIME or --for DURATION"),
        (["--for", "2h", "--until", "2099-01-01", "--app", "DeepSeek"],
         "give either --until TIME or --for DURATION"),
        (["--until", "tomorrow", "--app", "DeepSeek"],
         "Invalid value for --until: 'tomorrow' is not an ISO date/time"),
        (["--until", "2020-01-01", "--app", "DeepSeek"],
         "Invalid value for --until: 2020-01-01T00:00:00+00:00 is already past"),
        (["--for", "soon", "--app", "DeepSeek"], "Invalid value for --for: expected a duration"),
        (["--for", "0s", "--app", "DeepSeek"], "Invalid value for --for: a silence must last"),
        (["--for", "2h", "--app", "Deepsek"],
         "Invalid value for --app: 'Deepsek' is neither the name nor the store id"),
        (["--for", "2h", "--country", "uk"],
         "Invalid value for --country: 'uk' is not a storefront polled"),
        (["--for", "2h", "--rule", "moved"],
         "Invalid value for --rule: 'moved' is not an alert rule (big-move, top-top1, "),
        (["--for", "2h"], "a silence without --app, --country or --rule holds back every "
                          "alert: say so with --all-alerts"),
        (["--for", "2h", "--all-alerts", "--country", "us"],
         "--all-alerts silences every alert: leave out --app, --country and --rule"),
    ],
)  # fmt: skip
def test_silence_add_rejects_bad_values_naming_the_option_and_writes_nothing(
    tmp_path: Path, sqlite_url: str, args: list[str], complaint: str
) -> None:
    with deployment(tmp_path, sqlite_url, ALERTS) as deployed:
        result = deployed.run("silence", "add", *args)

        assert result.exit_code == 2, result.output
        assert "Usage: app-rank-monitor silence add" in result.stderr
        assert complaint in " ".join(result.stderr.split())
        assert not deployed.sqlite_file.exists()


def test_silence_commands_need_a_migrated_database(tmp_path: Path, sqlite_url: str) -> None:
    with deployment(tmp_path, sqlite_url, ALERTS) as deployed:
        listed = deployed.run("silence", "list")
        added = deployed.run("silence", "add", "--for", "1h", "--all-alerts")

    assert listed.exit_code == added.exit_code == 2
    assert "run `app-rank-monitor migrate` first" in listed.stderr
    assert "run `app-rank-monitor migrate` first" in added.stderr
    assert not deployed.sqlite_file.exists()


def test_an_event_a_silence_matches_is_listed_as_silenced_and_sent_to_nobody(
    alerting: Deployment,
) -> None:
    ok(alerting.run("migrate"))
    ok(alerting.run("silence", "add", "--for", "1h", "--app", "DeepSeek", "--comment", "launch"))

    climb(alerting)

    (event,) = alerting.json("alerts", "list")
    assert event["summary"] == DEEPSEEK_UP_19
    assert re.fullmatch(r"silence until \S+; apps DeepSeek; 'launch' \(id 1\)",
                        event["silenced_by"])  # fmt: skip
    assert event["deliveries"] == []
    (row,) = table(ok(alerting.run("alerts", "list")).stdout)
    assert (row["silenced_by"], row["delivery"]) == (event["silenced_by"], "")


# -- alerts test-email ------------------------------------------------------------------------


def smtp_config(port: int, recipients: tuple[str, ...] = RECIPIENTS[:2], extra: str = "") -> str:
    return f"""
    [smtp]
    host = "127.0.0.1"
    port = {port}
    from_address = "monitor@example.com"
    {extra}

    [alerts]
    recipients = {json.dumps(list(recipients))}
    """


def test_alerts_test_email_sends_a_message_marked_as_a_test_to_every_recipient(
    tmp_path: Path, sqlite_url: str
) -> None:
    with SmtpServer() as server, deployment(tmp_path, sqlite_url, smtp_config(server.port)) as d:
        result = ok(d.run("alerts", "test-email"))

    where = f"through SMTP server 127.0.0.1:{server.port}"
    assert result.stdout.splitlines() == [
        f"sent a test email to ops@example.com {where}",
        f"sent a test email to cto@example.com {where}",
    ]
    assert [m.rcpt_tos for m in server.messages] == [("ops@example.com",), ("cto@example.com",)]
    message = server.messages[0].message
    assert message["Subject"].startswith("Test email from app-rank-monitor")
    assert message["From"].addresses[0].addr_spec == "monitor@example.com"
    text = message.get_body(("plain",)).get_content()
    assert "sent by `app-rank-monitor alerts test-email`; no rank changed" in text
    assert server.messages[0].message["Message-ID"] != server.messages[1].message["Message-ID"]
    assert not d.sqlite_file.exists()  # the database is not needed


def test_alerts_test_email_to_sends_to_that_address_only(tmp_path: Path, sqlite_url: str) -> None:
    with SmtpServer() as server, deployment(tmp_path, sqlite_url, smtp_config(server.port)) as d:
        result = ok(d.run("alerts", "test-email", "--to", "me@example.org"))

    assert result.stdout.startswith("sent a test email to me@example.org through")
    assert [m.rcpt_tos for m in server.messages] == [("me@example.org",)]


def test_alerts_test_email_exits_1_with_the_error_when_the_server_cannot_be_reached(
    tmp_path: Path, sqlite_url: str
) -> None:
    with refusing_port() as (_, port), deployment(tmp_path, sqlite_url, smtp_config(port)) as d:
        result = d.run("alerts", "test-email", "--to", "me@example.org")

    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.startswith(
        f"test email to me@example.org not sent: SMTP server 127.0.0.1:{port}: "
        "ConnectionRefusedError"
    )


def test_alerts_test_email_shows_a_refused_login_but_never_the_password(
    tmp_path: Path, sqlite_url: str
) -> None:
    password = "s3cr3t-pa55-wrong"
    with SmtpServer(login=("monitor", "right")) as server:
        config = smtp_config(server.port, extra='username = "monitor"')
        with deployment(tmp_path, sqlite_url, config) as d:
            result = d.run(
                "alerts", "test-email", "--to", "me@example.org",
                env={"MONITOR_SMTP_PASSWORD": password},
            )  # fmt: skip

    assert result.exit_code == 1, result.output
    assert f"SMTP server 127.0.0.1:{server.port} answered 535" in result.stderr
    assert password not in result.output
    assert server.messages == []


@pytest.mark.parametrize(
    ("recipients", "args", "complaint"),
    [
        ((), [], "no recipient: give --to ADDRESS, or set [alerts] recipients "
                 "(MONITOR_ALERTS_RECIPIENTS)"),
        (RECIPIENTS, ["--to", "not an address"],
         "Invalid value for --to: 'not an address' is not a plain ASCII email address"),
    ],
)  # fmt: skip
def test_alerts_test_email_without_a_valid_recipient_exits_2(
    tmp_path: Path, sqlite_url: str, recipients: tuple[str, ...], args: list[str], complaint: str
) -> None:
    with SmtpServer() as server:
        config = smtp_config(server.port, recipients)
        with deployment(tmp_path, sqlite_url, config) as d:
            result = d.run("alerts", "test-email", *args)

    assert result.exit_code == 2, result.output
    assert complaint in result.stderr
    assert server.messages == []
