"""SMTP faults under load: many notifications for several recipients over several poll rounds,
a real SMTP server on loopback (or a refusing / silent port) and a real database, time driven
by a clock the test moves, so hours of retry backoff (30 s doubling) pass in an instant.

What must hold whatever the server does: every notification ends sent, or dead-lettered when
the server said no for good; no message arrives twice; every message holds the notifications
of one recipient that carry its Message-ID, retries included; and the outbox gauges show the
backlog while it lasts. tests/alerts/test_sender.py covers each fault alone with one message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections import Counter
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from monitor.alerts.channels import EmailChannel
from monitor.alerts.email import SmtpSender
from monitor.alerts.model import RuleKind
from monitor.alerts.policy import AlertPolicy
from monitor.alerts.rules import Rule
from monitor.alerts.sender import OutboxSender, RetryPolicy
from monitor.config_sections import SmtpSettings
from monitor.metrics import ServiceMetrics
from monitor.model import Store, WatchedApp
from monitor.store.engine import Database
from monitor.store.repository import Repository
from monitor.store.tables import alert_events, delivery_attempts, notifications
from tests.alerts.test_sender import Clock
from tests.store.conftest import CHATGPT, DEEPSEEK, HOUR, T0, US_FREE, Poller
from tests.store.test_alerting import GB_FREE, chart_with
from tests.support.smtp_server import (
    Faults,
    ReceivedMessage,
    SmtpServer,
    refusing_port,
    silent_server,
)

SENDER = "monitor@example.com"
RECIPIENTS = ("ops@example.com", "oncall@example.com", "product@example.com")
GROUP_WAIT = dt.timedelta(minutes=1)
RETRY = RetryPolicy()  # the service's own: 30 s doubling up to 1 h, given up after a day
POLICY = AlertPolicy(
    rules=(
        Rule("big-move", RuleKind.MOVED, places_up=10, places_down=10, send_resolved=False),
        Rule("top10", RuleKind.ENTERED_TOP, top=10),
        Rule("number-one", RuleKind.ENTERED_TOP, top=1),
        Rule("passed", RuleKind.RIVAL_PASSED, top=10, send_resolved=False),
    ),
    app_names={(Store.APPLE, DEEPSEEK): "DeepSeek", (Store.APPLE, CHATGPT): "ChatGPT"},
    recipients=RECIPIENTS,
    group_wait=GROUP_WAIT,
)
# DeepSeek's climb past ChatGPT, one poll round an hour, on two charts: every round has news.
CLIMB = [(31, 1), (12, 1), (4, 1), (1, 2), (2, 1)]


@dataclasses.dataclass
class Outbox:
    """The repository, the moving clock, and the service's metrics reading the same database."""

    database: Database
    repository: Repository
    clock: Clock
    metrics: ServiceMetrics

    def poll_round(self, index: int) -> None:
        """Poll round `index` of CLIMB on both charts, at T0 + index hours."""
        self.clock.now = T0 + index * HOUR
        deepseek, chatgpt = CLIMB[index]
        poller = Poller(self.repository, self.database)
        for chart in (US_FREE, GB_FREE):
            poller.store(chart, self.clock.now, chart_with({DEEPSEEK: deepseek, CHATGPT: chatgpt}))

    def sender(self, port: int, *, timeout: float = 5) -> OutboxSender:
        settings = SmtpSettings(host="127.0.0.1", port=port, from_address=SENDER,
                                timeout_seconds=timeout)  # fmt: skip
        return OutboxSender(
            self.repository,
            {"email": EmailChannel(SmtpSender(settings), from_address=SENDER, grafana_url=None)},
            owner="fault-test",
            domain="example.com",
            clock=self.clock,
            metrics=self.metrics,
            retry=RETRY,
            draw=lambda: 1.0,  # the longest full-jitter delay: the schedule below is exact
        )

    def gauge(self, name: str) -> float:
        """One sample of the service's /metrics text, as Prometheus would read it."""
        text = self.metrics.exposition().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name:
                    return float(sample.value)
        raise AssertionError(f"{name} is not exposed")

    def rows(self) -> list[Any]:
        query = (
            select(notifications, alert_events.c.summary)
            .join(alert_events, alert_events.c.id == notifications.c.event_id)
            .order_by(notifications.c.id)
        )
        with self.database.engine.connect() as connection:
            return list(connection.execute(query))

    def attempts(self) -> list[Any]:
        with self.database.engine.connect() as connection:
            query = select(delivery_attempts).order_by(delivery_attempts.c.id)
            return list(connection.execute(query))


@pytest.fixture
def outbox(database: Database) -> Outbox:
    clock = Clock(T0)
    repository = Repository(database, alerts=POLICY, clock=clock)
    repository.sync_charts([US_FREE, GB_FREE], now=T0)
    repository.sync_watchlist(
        [WatchedApp(Store.APPLE, DEEPSEEK, "DeepSeek"), WatchedApp(Store.APPLE, CHATGPT, "ChatGPT")]
    )
    metrics = ServiceMetrics(
        poll_interval=HOUR,
        read_state=lambda now: repository.service_state(now=now),
        app_labels={},
        clock=clock,
    )
    return Outbox(database, repository, clock, metrics)


def send(sender: OutboxSender) -> int:
    return asyncio.run(sender.send_due())


def drain(outbox: Outbox, sender: OutboxSender, *, step: dt.timedelta, until: dt.datetime) -> int:
    """Run the sender every `step` of clock time up to `until`, as the service's ticker does;
    returns how many messages went out."""
    sent = 0
    while outbox.clock.now < until:
        outbox.clock.now += step
        sent += send(sender)
    return sent


def assert_each_notification_arrived_once_in_its_message(
    outbox: Outbox, received: list[ReceivedMessage]
) -> None:
    """Every sent notification went out exactly once, to its recipient, in the one message
    carrying its Message-ID, which holds its news and nobody else's."""
    rows = [row for row in outbox.rows() if row.state == "sent"]
    by_message_id = {m.message["Message-ID"]: m for m in received}
    assert len(by_message_id) == len(received), "a message arrived twice"
    assert set(by_message_id) == {row.message_id for row in rows}
    for row in rows:
        message = by_message_id[row.message_id]
        assert message.rcpt_tos == (row.recipient,)
        assert str(message.message["To"]) == row.recipient
        assert row.summary in message.message.get_body(("plain",)).get_content()
    recipients_per_message = Counter((row.message_id, row.recipient) for row in rows)
    assert len(recipients_per_message) == len(by_message_id)


@pytest.mark.slow
def test_mail_queued_through_a_long_outage_all_goes_out_once_when_the_server_is_back(
    outbox: Outbox,
) -> None:
    """Five poll rounds, four of them news for three recipients, while the server refuses
    connections for five hours; then it is back and every notification goes out exactly once."""
    outage_end = T0 + len(CLIMB) * HOUR
    pending, ages = [], []
    with refusing_port() as (_, closed):
        down = outbox.sender(closed)
        for index in range(len(CLIMB)):
            outbox.poll_round(index)
            sent_while_down = drain(
                outbox, down, step=dt.timedelta(minutes=10), until=T0 + (index + 1) * HOUR
            )
            assert sent_while_down == 0
            pending.append(outbox.gauge("apprank_outbox_pending"))
            ages.append(outbox.gauge("apprank_outbox_oldest_pending_age_seconds"))

    queued = outbox.rows()
    assert {row.state for row in queued} == {"pending"}
    assert {row.recipient for row in queued} == set(RECIPIENTS)
    # The backlog grew with every round of news, and its oldest notification aged with the
    # outage (read at the end of each round's hour; the first round is news to nobody).
    first_queued = min(row.created_at for row in queued)
    assert first_queued == T0 + HOUR
    assert pending[0] == 0
    assert pending == sorted(pending)
    assert pending[-1] == len(queued)
    assert ages == [
        max(0.0, (T0 + (index + 1) * HOUR - first_queued).total_seconds())
        for index in range(len(CLIMB))
    ]
    failed_attempts = outbox.attempts()
    assert {attempt.outcome for attempt in failed_attempts} == {"retrying"}
    assert all("ConnectionRefusedError" in attempt.error for attempt in failed_attempts)

    with SmtpServer() as server:
        # The longest wait left is one capped backoff step.
        sent = drain(
            outbox,
            outbox.sender(server.port),
            step=dt.timedelta(minutes=10),
            until=outage_end + RETRY.cap,
        )
        delivered = list(server.messages)

    rows = outbox.rows()
    assert {row.state for row in rows} == {"sent"}
    assert sent == len(delivered) == len({row.message_id for row in rows})
    assert_each_notification_arrived_once_in_its_message(outbox, delivered)
    # Retries kept their first Message-ID: every id that failed was the one finally sent.
    assert {a.message_id for a in failed_attempts} <= {row.message_id for row in rows}
    assert outbox.gauge("apprank_outbox_pending") == 0
    assert outbox.gauge("apprank_outbox_oldest_pending_age_seconds") == 0


@dataclasses.dataclass(frozen=True)
class FaultCase:
    faults: Faults
    victim_fate: str  # "retried": sent later under the same Message-ID; "dead": given up
    error: str  # in the victim's recorded attempt


FAULTS = {
    "451-then-ok": FaultCase(Faults(defer_data=1), "retried", "451 4.3.0"),
    "drop-after-data": FaultCase(Faults(drop_after_data=1), "retried", "SMTPServerDisconnected"),
    "550-recipient": FaultCase(
        Faults(reject_rcpt=frozenset({"oncall@example.com"})), "dead", "550 5.1.1"
    ),
}


@pytest.mark.parametrize("case", FAULTS.values(), ids=FAULTS.keys())
def test_a_failing_message_does_not_hold_back_the_others_and_ends_as_designed(
    outbox: Outbox, case: FaultCase
) -> None:
    for index in range(3):
        outbox.poll_round(index)
    queued = outbox.rows()
    assert len({row.recipient for row in queued}) == len(RECIPIENTS)

    with SmtpServer(faults=dataclasses.replace(case.faults)) as server:
        sender = outbox.sender(server.port)
        outbox.clock.now += GROUP_WAIT
        first_pass = send(sender)
        first_attempts = outbox.attempts()
        # Long past any retry: a dead letter must stay dead, a retry must have gone.
        drain(outbox, sender, step=dt.timedelta(minutes=1), until=outbox.clock.now + HOUR)
        delivered = list(server.messages)

    (failed,) = [a for a in first_attempts if a.outcome != "sent"]
    assert case.error in failed.error
    # Every other recipient's mail went out in the same pass as the failure.
    assert first_pass == len(first_attempts) - 1 == len(RECIPIENTS) - 1
    rows = outbox.rows()
    victims = [row for row in rows if row.message_id == failed.message_id]
    others = [row for row in rows if row.message_id != failed.message_id]
    assert victims
    assert others
    assert {row.state for row in others} == {"sent"}
    outcomes = [a.outcome for a in outbox.attempts() if a.message_id == failed.message_id]
    if case.victim_fate == "retried":
        assert {row.state for row in victims} == {"sent"}
        assert outcomes == ["retrying", "sent"]
        assert {row.attempts for row in victims} == {2}
    else:
        assert {row.state for row in victims} == {"dead"}
        assert outcomes == ["dead_lettered"]
        assert all(case.error in row.last_error for row in victims)
        assert victims[0].recipient not in {r for m in delivered for r in m.rcpt_tos}
    assert_each_notification_arrived_once_in_its_message(outbox, delivered)
    assert len(rows) == len(queued), "notifications appeared or vanished"


def test_a_silent_server_times_every_message_out_and_loses_none(outbox: Outbox) -> None:
    """A server that accepts connections and never answers: each attempt ends after the SMTP
    timeout, every message stays queued for a retry, and a working server gets them all."""
    for index in range(2):
        outbox.poll_round(index)
    queued = outbox.rows()
    outbox.clock.now += GROUP_WAIT
    with silent_server() as (_, port):
        assert send(outbox.sender(port, timeout=0.3)) == 0
    timed_out = outbox.attempts()
    assert {a.outcome for a in timed_out} == {"retrying"}
    assert all("timed out" in a.error for a in timed_out)
    assert {a.recipient for a in timed_out} == set(RECIPIENTS)
    assert {row.state for row in outbox.rows()} == {"pending"}

    with SmtpServer() as server:
        drain(outbox, outbox.sender(server.port), step=RETRY.base, until=outbox.clock.now + HOUR)
        delivered = list(server.messages)

    rows = outbox.rows()
    assert len(rows) == len(queued)
    assert {row.state for row in rows} == {"sent"}
    assert {a.message_id for a in timed_out} <= {m.message["Message-ID"] for m in delivered}
    assert_each_notification_arrived_once_in_its_message(outbox, delivered)
