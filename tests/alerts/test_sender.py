"""The outbox sender against a real SMTP server (aiosmtpd on loopback) and a real database:
grouping, retries with backoff, dead letters, and at-least-once delivery under one Message-ID.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from monitor.alerts.channels import EmailChannel, WebhookChannel
from monitor.alerts.email import SmtpSender
from monitor.alerts.sender import OutboxSender, RetryPolicy
from monitor.config_sections import SmtpSettings
from monitor.metrics import ServiceMetrics
from monitor.model import Store, WatchedApp
from monitor.store.engine import Database
from monitor.store.repository import Repository
from monitor.store.tables import delivery_attempts, notifications
from tests.store.conftest import CHATGPT, DEEPSEEK, HOUR, T0, US_FREE, Poller
from tests.store.test_alerting import POLICY, chart_with
from tests.support.http_server import Request, Response, ScriptedServer
from tests.support.processes import wait_for
from tests.support.smtp_server import Faults, SmtpServer, refusing_port

NOW = T0 + 10 * HOUR  # when the repository queued the notifications
DUE = NOW + POLICY.group_wait
SENDER = "monitor@example.com"
RETRY = RetryPolicy(base=dt.timedelta(minutes=1), cap=dt.timedelta(minutes=10),
                    give_up_after=dt.timedelta(hours=2))  # fmt: skip


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    with SmtpServer() as smtp:
        yield smtp


@pytest.fixture
def climbed(database: Database) -> Repository:
    """DeepSeek's climb to #1 stored, its five events queued for ops@example.com."""
    repository = Repository(database, alerts=POLICY, clock=lambda: NOW)
    repository.sync_charts([US_FREE], now=T0)
    repository.sync_watchlist(
        [WatchedApp(Store.APPLE, DEEPSEEK, "DeepSeek"), WatchedApp(Store.APPLE, CHATGPT, "ChatGPT")]
    )
    poller = Poller(repository, database)
    for index, (deepseek, chatgpt) in enumerate([(31, 1), (12, 1), (4, 1), (1, 2)]):
        poller.store(US_FREE, T0 + index * HOUR, chart_with({DEEPSEEK: deepseek, CHATGPT: chatgpt}))
    return repository


def metrics(repository: Repository, clock: Clock) -> ServiceMetrics:
    return ServiceMetrics(
        poll_interval=HOUR,
        read_state=lambda now: repository.service_state(now=now),
        app_labels={},
        clock=clock,
    )


def sender(
    repository: Repository, port: int, clock: Clock, **channels: Any
) -> tuple[OutboxSender, ServiceMetrics]:
    smtp = SmtpSender(SmtpSettings(host="127.0.0.1", port=port, from_address=SENDER,
                                   timeout_seconds=2))  # fmt: skip
    counted = metrics(repository, clock)
    outbox = OutboxSender(
        repository,
        {"email": EmailChannel(smtp, from_address=SENDER, grafana_url=None), **channels},
        owner="test",
        domain="example.com",
        clock=clock,
        metrics=counted,
        retry=RETRY,
        draw=lambda: 1.0,  # the longest full-jitter delay: the test knows when to come back
    )
    return outbox, counted


def send(outbox: OutboxSender) -> int:
    return asyncio.run(outbox.send_due())


def outbox_rows(database: Database) -> list[Any]:
    with database.engine.connect() as connection:
        return list(connection.execute(select(notifications).order_by(notifications.c.id)))


def attempts(database: Database) -> list[tuple[str, str]]:
    with database.engine.connect() as connection:
        rows = connection.execute(select(delivery_attempts).order_by(delivery_attempts.c.id))
        return [(row.outcome, row.message_id) for row in rows]


def sent_count(counted: ServiceMetrics, result: str) -> float | None:
    return counted.registry.get_sample_value(
        "apprank_notifications_total", {"channel": "email", "result": result}
    )


def test_a_rounds_events_go_out_together_once_the_group_wait_is_over(
    database: Database, climbed: Repository, server: SmtpServer
) -> None:
    clock = Clock(DUE - dt.timedelta(seconds=1))
    outbox, counted = sender(climbed, server.port, clock)

    early = send(outbox)
    clock.now = DUE
    on_time = send(outbox)
    again = send(outbox)

    assert (early, on_time, again) == (0, 1, 0)
    (received,) = server.messages
    message = received.message
    assert received.rcpt_tos == ("ops@example.com",)
    # The most important first: the climb to #1 leads the subject.
    assert message["Subject"] == "DeepSeek #1 in US Top Free iPhone (was #4) (and 4 more)"
    rows = outbox_rows(database)
    assert {row.state for row in rows} == {"sent"}
    assert {row.message_id for row in rows} == {message["Message-ID"]}
    assert attempts(database) == [("sent", message["Message-ID"])]
    assert sent_count(counted, "sent") == 1


def test_a_451_is_retried_after_the_backoff_under_the_same_message_id(
    database: Database, climbed: Repository, server: SmtpServer
) -> None:
    server.faults.defer_data = 1
    clock = Clock(DUE)
    outbox, counted = sender(climbed, server.port, clock)

    first = send(outbox)
    clock.now = DUE + RETRY.base - dt.timedelta(seconds=1)
    too_soon = send(outbox)
    clock.now = DUE + RETRY.base
    retried = send(outbox)

    assert (first, too_soon, retried) == (0, 0, 1)
    (received,) = server.messages
    outcomes = attempts(database)
    assert [outcome for outcome, _ in outcomes] == ["retrying", "sent"]
    assert {message_id for _, message_id in outcomes} == {received.message["Message-ID"]}
    assert {row.attempts for row in outbox_rows(database)} == {2}
    assert sent_count(counted, "retrying") == 1


def test_a_550_is_dead_lettered_at_once(
    database: Database, climbed: Repository, server: SmtpServer
) -> None:
    server.faults.reject_rcpt = frozenset({"ops@example.com"})
    outbox, counted = sender(climbed, server.port, Clock(DUE))

    assert send(outbox) == 0
    assert send(outbox) == 0

    rows = outbox_rows(database)
    assert {row.state for row in rows} == {"dead"}
    assert all("550" in row.last_error for row in rows)
    assert [outcome for outcome, _ in attempts(database)] == ["dead_lettered"]
    assert sent_count(counted, "dead_lettered") == 1


def test_mail_waits_out_a_server_outage_and_is_given_up_only_after_its_age(
    database: Database, climbed: Repository, server: SmtpServer
) -> None:
    clock = Clock(DUE)
    with refusing_port() as (_, closed):
        down, _ = sender(climbed, closed, clock)
        outcomes = []
        for _ in range(3):
            outcomes.append(send(down))
            clock.now += RETRY.cap
    back, _ = sender(climbed, server.port, clock)

    assert outcomes == [0, 0, 0]
    assert send(back) == 1
    assert len(server.messages) == 1
    assert [outcome for outcome, _ in attempts(database)] == ["retrying"] * 3 + ["sent"]


def test_past_the_give_up_age_a_failing_message_is_dead_lettered(
    database: Database, climbed: Repository
) -> None:
    clock = Clock(NOW + RETRY.give_up_after)
    with refusing_port() as (_, closed):
        outbox, _ = sender(climbed, closed, clock)
        send(outbox)

    assert {row.state for row in outbox_rows(database)} == {"dead"}


def test_a_message_sent_but_not_recorded_goes_again_under_the_same_message_id(
    database: Database, climbed: Repository, server: SmtpServer
) -> None:
    """A crash between the server's 250 and recording it: the claim runs out and another
    sender (or the restarted one) sends the same rows under the same Message-ID."""
    clock = Clock(DUE)
    outbox, _ = sender(climbed, server.port, clock)
    crashed = climbed.claim_message(owner="crashed", now=DUE, lease=dt.timedelta(minutes=5),
                                    domain="example.com")  # fmt: skip
    assert crashed is not None
    still_claimed = send(outbox)
    clock.now = DUE + dt.timedelta(minutes=5, seconds=1)

    assert still_claimed == 0
    assert send(outbox) == 1
    (received,) = server.messages
    assert received.message["Message-ID"] == crashed.message_id


def test_a_sender_paused_past_its_claim_cannot_overwrite_the_outcome_of_the_one_that_took_over(
    database: Database, climbed: Repository, server: SmtpServer
) -> None:
    clock = Clock(DUE)
    outbox, _ = sender(climbed, server.port, clock)
    paused = climbed.claim_message(owner="paused", now=DUE, lease=dt.timedelta(minutes=5),
                                   domain="example.com")  # fmt: skip
    assert paused is not None
    clock.now = DUE + dt.timedelta(minutes=5, seconds=1)
    assert send(outbox) == 1
    # It wakes up, and its own attempt (to another server, say) was refused for good.
    climbed.finish_message(paused, outcome="dead_lettered", now=clock.now, error="554 (late)")

    assert {(row.state, row.claimed_by) for row in outbox_rows(database)} == {("sent", None)}
    assert attempts(database) == [
        ("sent", paused.message_id),
        ("dead_lettered", paused.message_id),
    ]


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_claim_beside_another_senders_takes_the_whole_message_not_what_that_one_left(
    database: Database, climbed: Repository
) -> None:
    due = [row.id for row in outbox_rows(database)]
    with ThreadPoolExecutor(1) as pool, database.engine.connect() as other:
        # Another sender has locked the first of the recipient's notifications, and is about
        # to take the rest (a replica claiming at the same moment), or an update holds it.
        with other.begin():
            other.execute(
                select(notifications.c.id).where(notifications.c.id == due[0]).with_for_update()
            )
            claiming = pool.submit(
                climbed.claim_message,
                owner="b",
                now=DUE,
                lease=dt.timedelta(minutes=5),
                domain="example.com",
            )
            wait_for(lambda: claiming.done() or waits_for_a_lock(database), "the claim to wait")
        claimed = claiming.result(timeout=10)

    assert claimed is not None
    assert sorted(item.notification_id for item in claimed.items) == due


def waits_for_a_lock(database: Database) -> bool:
    with database.engine.connect() as connection:
        waiting = connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            )
        )
    return bool(waiting)


def test_a_drop_after_data_is_retried_and_any_duplicate_shares_the_message_id(
    database: Database, climbed: Repository, server: SmtpServer
) -> None:
    server.faults = Faults(drop_after_data=1)
    clock = Clock(DUE)
    outbox, _ = sender(climbed, server.port, clock)

    send(outbox)
    clock.now += RETRY.base
    send(outbox)

    assert {row.state for row in outbox_rows(database)} == {"sent"}
    assert len({m.message["Message-ID"] for m in server.messages}) == 1


def test_webhooks_get_alertmanagers_payload(database: Database) -> None:
    received: list[Any] = []

    def hook(request: Request) -> Response:
        received.append(json.loads(request.body))
        return Response(200, b"ok")

    with ScriptedServer() as receiver:
        receiver.route("/hook", hook)
        policy = POLICY.__class__(
            **{**POLICY.__dict__, "recipients": (), "webhooks": (receiver.url("/hook"),)}
        )
        repository = Repository(database, alerts=policy, clock=lambda: NOW)
        repository.sync_charts([US_FREE], now=T0)
        repository.sync_watchlist([WatchedApp(Store.APPLE, DEEPSEEK, "DeepSeek")])
        poller = Poller(repository, database)
        poller.store(US_FREE, T0, chart_with({DEEPSEEK: 12}))
        poller.store(US_FREE, T0 + HOUR, chart_with({DEEPSEEK: 1}))

        async def deliver() -> int:
            async with httpx.AsyncClient() as client:
                webhook = WebhookChannel(client, external_url="http://monitor")
                outbox, _ = sender(repository, 9, Clock(DUE), webhook=webhook)
                return await outbox.send_due()

        assert asyncio.run(deliver()) == 1

    (payload,) = received
    assert payload["version"] == "4"
    assert payload["status"] == "firing"
    assert payload["externalURL"] == "http://monitor"
    names = [alert["labels"]["alertname"] for alert in payload["alerts"]]
    assert sorted(names) == ["big-move", "number-one", "top10"]
    alert = payload["alerts"][0]
    assert alert["labels"]["app"] == "DeepSeek"
    assert alert["labels"]["country"] == "us"
    assert alert["annotations"]["summary"].startswith("DeepSeek")
    assert alert["endsAt"] == "0001-01-01T00:00:00Z"
