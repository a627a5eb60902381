"""Process faults: `app-rank-monitor run` killed at each crash point, stopped with SIGTERM
mid-round, or down for hours, then started again.

Afterwards the history has no duplicate and no half-written snapshot, every chart whose write
was lost is polled again, and every alert of DeepSeek's climb is mailed exactly once (at most
one duplicate, under the same Message-ID, when the crash came between the mail server's 250
and the outbox recording it).
"""

from __future__ import annotations

import datetime as dt
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.crash_points import CRASH_AT_ENV, CRASH_EXIT_STATUS, CrashPoint
from monitor.worker import SHUTDOWN_GRACE_SECONDS
from tests.support.climb import CLIMB_EMAIL_SUBJECTS, SteppedFeed, deepseek_ranks
from tests.support.fake_apple import DEEPSEEK_US_TOP_FREE_RANKS
from tests.support.fault_proxy import FaultProxy
from tests.support.history_checks import (
    expire_outbox_claims,
    held_leases,
    history_problems,
    leases,
    move_back,
    outbox,
    snapshots_by_chart,
)
from tests.support.http_server import Response, ScriptedServer
from tests.support.processes import wait_for
from tests.support.service import ONE_SHORT_FETCH, ServiceProcess, write_config
from tests.support.smtp_server import SmtpServer
from tests.test_alert_emails import RULES

pytestmark = pytest.mark.slow

# A chart held by a killed process is free again soon after the restart.
SHORT_LEASE = {"interval": "2s", "tick": "1s", "lease": "3s"}


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


def climb(feed: SteppedFeed, url: str, service: ServiceProcess) -> None:
    """Move the feed through DeepSeek's climb, a step once the service stored the last one,
    until it stored them all or stopped (a crash point)."""
    while (stored := len(deepseek_ranks(url))) < len(DEEPSEEK_US_TOP_FREE_RANKS):
        feed.step = stored

        def next_stored_or_stopped(stored: int = stored) -> bool:
            return not service.running or len(deepseek_ranks(url)) > stored

        wait_for(next_stored_or_stopped, f"snapshot {stored + 1} of US top free", timeout=20)
        if not service.running:
            return


def settle(service: ServiceProcess, smtp: SmtpServer, emails: int) -> None:
    """Wait until `emails` arrived and the outbox has nothing left to send."""
    wait_for(
        lambda: len(smtp.messages) >= emails and service.metric("apprank_outbox_pending") == 0,
        f"{emails} emails and an empty outbox",
        timeout=30,
    )


@pytest.mark.parametrize("crash_at", list(CrashPoint))
def test_after_a_crash_at_any_step_a_restart_loses_no_poll_and_mails_every_alert_once(
    tmp_path: Path, database_url: str, smtp: SmtpServer, crash_at: CrashPoint
) -> None:
    feed = SteppedFeed()
    with ScriptedServer(fallback=feed.respond) as server:
        config = write_config(
            tmp_path,
            database_url=database_url,
            feeds=server,
            smtp_port=smtp.port,
            extra=RULES,
            overrides={"poll": SHORT_LEASE, "fetch": ONE_SHORT_FETCH},
        )
        crashing = ServiceProcess(config, name="crashing", extra_env={CRASH_AT_ENV: crash_at})
        with crashing:
            # It may reach its crash point before a readiness probe gets an answer.
            wait_for(lambda: not crashing.running or crashing.is_ready(), "ready or crashed")
            climb(feed, database_url, crashing)
            assert crashing.wait_exit() == CRASH_EXIT_STATUS, crashing.output
        assert f"crash point {crash_at} reached" in crashing.output
        # What the crash left is whole: a snapshot with its ranks and fetch log, or nothing.
        assert history_problems(database_url) == []
        served_before = {path for path, _ in feed.served}
        stored_before = snapshots_by_chart(database_url)
        if crash_at is CrashPoint.SNAPSHOT_INSERTED:
            assert len(stored_before) < len(served_before), "the crash lost no write"
        if crash_at is CrashPoint.MESSAGE_ACCEPTED:
            assert len(smtp.messages) == 1
            # Its claim would hold the message for the sender's 5-minute lease.
            assert expire_outbox_claims(database_url) > 0

        with ServiceProcess(config, name="restarted") as restarted:
            restarted.wait_ready()
            climb(feed, database_url, restarted)
            duplicates = 1 if crash_at is CrashPoint.MESSAGE_ACCEPTED else 0
            settle(restarted, smtp, len(CLIMB_EMAIL_SUBJECTS) + duplicates)
            assert restarted.stop() == 0

    assert history_problems(database_url) == []
    stored = snapshots_by_chart(database_url)
    # Every chart has its snapshots now, the one whose write the crash lost too.
    assert set(stored) == set(leases(database_url))
    assert deepseek_ranks(database_url) == list(DEEPSEEK_US_TOP_FREE_RANKS)

    received = [(m.message["Message-ID"], m.message["Subject"]) for m in smtp.messages]
    distinct = list(dict.fromkeys(received))
    assert [subject for _, subject in distinct] == CLIMB_EMAIL_SUBJECTS
    assert len(received) == len(distinct) + duplicates
    assert len({message_id for message_id, _ in distinct}) == len(CLIMB_EMAIL_SUBJECTS)


def test_sigterm_mid_round_exits_0_within_the_grace_and_hands_the_slow_charts_back(
    tmp_path: Path, database_url: str
) -> None:
    feed = SteppedFeed()
    slow = ["/api/v2/us/apps/top-free/100/apps.json", "/api/v2/gb/apps/top-paid/100/apps.json"]
    with ScriptedServer(fallback=feed.respond) as server:
        for path in slow:
            body = feed.charts.payload(path, 0)
            assert body is not None
            # Slower than the grace, within the fetch deadline: still in flight at the end.
            server.script(path, Response(200, body, delay=60))
        config = write_config(
            tmp_path,
            database_url=database_url,
            feeds=server,
            overrides={
                "poll": {"interval": "1h", "tick": "1s", "lease": "30s"},
                "fetch": ONE_SHORT_FETCH | {"deadline_seconds": 20, "read_timeout_seconds": 20},
            },
        )
        with ServiceProcess(config, name="stopped") as service:
            service.wait_ready()
            wait_for(lambda: all(server.requests_to(path) for path in slow), "the slow fetches")
            wait_for(lambda: len(snapshots_by_chart(database_url)) == 2, "the fast charts")
            service.signal(signal.SIGTERM)
            signalled = time.monotonic()
            status = service.wait_exit(timeout=SHUTDOWN_GRACE_SECONDS + 10)
            took = time.monotonic() - signalled
        assert status == 0, service.output
        # The slow polls had their grace, and no more.
        assert SHUTDOWN_GRACE_SECONDS - 0.5 < took < SHUTDOWN_GRACE_SECONDS + 3
        assert "abandoned 2 in-flight polls" in service.output
        stopped_at = dt.datetime.now(dt.UTC)
        assert held_leases(database_url, now=stopped_at) == {}
        schedule = leases(database_url)
        abandoned = {chart for chart, lease in schedule.items() if lease.next_due_at <= stopped_at}
        assert abandoned == {"apple/us/top_free/iphone/all", "apple/gb/top_paid/iphone/all"}

        with ServiceProcess(config, name="restarted") as restarted:
            started = time.monotonic()
            # Polled in the first round, not once their 30 s leases would have run out.
            wait_for(
                lambda: all(len(server.requests_to(path)) == 2 for path in slow),
                "the abandoned charts polled again",
                timeout=15,
            )
            assert time.monotonic() - started < 15
            wait_for(lambda: len(snapshots_by_chart(database_url)) == 4, "every chart stored")
            assert restarted.stop() == 0
    assert history_problems(database_url) == []


def test_sigterm_while_an_email_goes_out_lets_it_finish_and_records_it_sent(
    tmp_path: Path, sqlite_url: str, smtp: SmtpServer
) -> None:
    feed = SteppedFeed()
    with (
        ScriptedServer(fallback=feed.respond) as server,
        FaultProxy(smtp.host, smtp.port) as slow_smtp,
    ):
        config = write_config(
            tmp_path,
            database_url=sqlite_url,
            feeds=server,
            smtp_port=slow_smtp.port,
            extra=RULES,
            overrides={"poll": SHORT_LEASE, "fetch": ONE_SHORT_FETCH},
        )
        with ServiceProcess(config, name="stopped") as service:
            service.wait_ready()
            wait_for(lambda: len(deepseek_ranks(sqlite_url)) == 1, "the first snapshot")
            # Each SMTP exchange takes 0.2 s: a message takes a few seconds, within the grace.
            slow_smtp.set_latency(0.2)
            feed.step = 1
            wait_for(lambda: slow_smtp.open_connections > 0, "the email to be on its way")
            service.signal(signal.SIGTERM)
            assert service.wait_exit(timeout=SHUTDOWN_GRACE_SECONDS + 10) == 0
    assert [m.message["Subject"] for m in smtp.messages] == CLIMB_EMAIL_SUBJECTS[:1]
    # Recorded as sent: it will not go out again.
    assert outbox(sqlite_url) == [("sent", None)]


def test_after_six_hours_down_each_chart_is_polled_once_not_once_per_missed_interval(
    tmp_path: Path, database_url: str
) -> None:
    feed = SteppedFeed()
    with ScriptedServer(fallback=feed.respond) as server:
        config = write_config(
            tmp_path,
            database_url=database_url,
            feeds=server,
            overrides={"poll": {"interval": "1h", "tick": "1s"}, "fetch": ONE_SHORT_FETCH},
        )
        with ServiceProcess(config, name="before") as before:
            wait_for(
                lambda: (
                    before.is_ready()
                    and before.metric("apprank_charts", state="due") == 0
                    and len(snapshots_by_chart(database_url)) == 4
                ),
                "the first poll of every chart",
            )
            assert before.stop() == 0
        paths = {request.path for request in server.requests}
        assert len(paths) == len(server.requests) == 4

        move_back(database_url, dt.timedelta(hours=6))
        feed.step = 1
        with ServiceProcess(config, name="after") as after:
            wait_for(
                lambda: (
                    after.is_ready()
                    and sum(len(s) for s in snapshots_by_chart(database_url).values()) == 8
                ),
                "the catch-up poll of every chart",
            )
            now = dt.datetime.now(dt.UTC)
            # Nothing is due before the next interval: no second catch-up poll can follow.
            assert all(
                lease.next_due_at > now + dt.timedelta(minutes=59)
                for lease in leases(database_url).values()
            )
            assert after.metric("apprank_charts", state="due") == 0
            assert after.stop() == 0
    assert sorted(request.path for request in server.requests) == sorted([*paths, *paths])
    assert history_problems(database_url) == []
