"""Several `app-rank-monitor run` processes on one PostgreSQL database.

They share the charts without polling one twice in a period, store no snapshot twice and mail
no alert twice; a replica paused past its lease writes nothing once it wakes (fencing); a
killed replica's charts are polled by the others within one lease; replicas starting together
on an empty database migrate it once.

Each replica sends its own User-Agent, so the feed server knows which one asked.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import itertools
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from monitor.store.migrate import MIGRATION_LOCK_KEY, head_revision
from tests.support.climb import CLIMB_EMAIL_SUBJECTS, deepseek_ranks
from tests.support.fake_apple import DEEPSEEK_US_TOP_FREE_RANKS, FakeAppleCharts
from tests.support.history_checks import (
    US_TOP_FREE,
    fetches_by_chart,
    held_leases,
    history_problems,
    leases,
    snapshots_by_chart,
)
from tests.support.http_server import Request, Response, ScriptedServer
from tests.support.processes import wait_for
from tests.support.service import (
    ONE_SHORT_FETCH,
    ServiceProcess,
    TomlValue,
    serve_charts,
    write_config,
)
from tests.support.smtp_server import SmtpServer
from tests.test_alert_emails import RULES

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

INTERVAL_SECONDS = 2
TICK_SECONDS = 1
LEASE_SECONDS = 3
US_TOP_FREE_V2 = "/api/v2/us/apps/top-free/100/apps.json"
# A chart's v2 feed and its legacy fallback.
_CHART_PATH = re.compile(
    r"^/(api/v2/(?P<cc>[a-z]{2})/apps/top-(?P<feed>free|paid)/"
    r"|(?P<legacy_cc>[a-z]{2})/rss/top(?P<legacy_feed>free|paid)applications/)"
)


def chart_of(path: str) -> str:
    match = _CHART_PATH.match(path)
    assert match is not None, path
    country = match["cc"] or match["legacy_cc"]
    return f"apple/{country}/top_{match['feed'] or match['legacy_feed']}/iphone/all"


def user_agent(name: str) -> str:
    return f"replica-{name}"


def replica_of(request: Request) -> str:
    agent = request.header("user-agent") or ""
    return agent.removeprefix("replica-")


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


def replica(
    directory: Path,
    name: str,
    *,
    url: str,
    feeds: ScriptedServer,
    interval: str = f"{INTERVAL_SECONDS}s",
    smtp: SmtpServer | None = None,
    charts: dict[str, TomlValue] | None = None,
) -> ServiceProcess:
    """A replica (not started) named `name`, on its own HTTP port, with a 3 s lease."""
    config = write_config(
        directory,
        database_url=url,
        feeds=feeds,
        name=name,
        smtp_port=smtp.port if smtp is not None else None,
        extra=RULES if smtp is not None else "",
        overrides={
            "poll": {
                "interval": interval,
                "tick": f"{TICK_SECONDS}s",
                "lease": f"{LEASE_SECONDS}s",
            },
            "fetch": ONE_SHORT_FETCH | {"user_agent": user_agent(name)},
            **({"charts": charts} if charts else {}),
        },
    )
    return ServiceProcess(config, name=name)


@contextlib.contextmanager
def all_running(replicas: list[ServiceProcess]) -> Iterator[None]:
    """Start every replica at once; stop those still running on the way out."""
    for service in replicas:
        service.start()
    try:
        yield
    finally:
        for service in replicas:
            if service.running:
                service.stop()


def test_three_replicas_poll_each_chart_once_a_period_and_store_and_mail_everything_once(
    tmp_path: Path, postgres_url: str, smtp: SmtpServer
) -> None:
    with serve_charts(FakeAppleCharts()) as server:
        replicas = [
            replica(tmp_path, name, url=postgres_url, feeds=server, smtp=smtp)
            for name in ("a", "b", "c")
        ]
        with all_running(replicas):
            for service in replicas:
                service.wait_ready()
            # Six periods of every chart: DeepSeek's climb is over after three.

            def polled_six_times() -> bool:
                polls = collections.Counter(request.path for request in server.requests)
                return len(polls) == 4 and min(polls.values()) >= 6

            wait_for(polled_six_times, "six polls of every chart", timeout=60)
            wait_for(
                lambda: (
                    len(smtp.messages) >= 2 and replicas[0].metric("apprank_outbox_pending") == 0
                ),
                "the climb's emails sent",
            )
            assert [service.stop() for service in replicas] == [0, 0, 0]

    requests = server.requests
    assert not server.unexpected
    arrivals: dict[str, list[float]] = collections.defaultdict(list)
    for request in requests:
        arrivals[chart_of(request.path)].append(request.arrived_at)
    for chart, times in arrivals.items():
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        # Never twice in one period, never a period skipped.
        assert min(gaps) >= INTERVAL_SECONDS - 0.1, (chart, gaps)
        assert max(gaps) <= 2 * INTERVAL_SECONDS + TICK_SECONDS, (chart, gaps)
    # The work was shared: this is a test of replicas, not of one busy process.
    assert len({replica_of(request) for request in requests}) >= 2

    # Every fetch logged exactly once, every snapshot stored once and whole.
    assert fetches_by_chart(postgres_url) == {
        chart: len(times) for chart, times in arrivals.items()
    }
    assert history_problems(postgres_url) == []
    assert deepseek_ranks(postgres_url) == list(DEEPSEEK_US_TOP_FREE_RANKS)

    received = [(m.message["Message-ID"], m.message["Subject"]) for m in smtp.messages]
    assert sorted(subject for _, subject in received) == sorted(CLIMB_EMAIL_SUBJECTS)
    assert len({message_id for message_id, _ in received}) == len(received)


def test_a_replica_paused_past_its_lease_writes_nothing_once_it_wakes(
    tmp_path: Path, postgres_url: str
) -> None:
    charts = FakeAppleCharts()

    def respond(request: Request) -> Response:
        body = charts.respond(request.path)
        assert body is not None
        # Long enough for the test to pause it fetching, under its lease.
        return Response(200, body, delay=1 if replica_of(request) == "paused" else 0)

    only_us_top_free: dict[str, TomlValue] = {"storefronts": ["us"], "collections": ["top_free"]}
    with ScriptedServer(fallback=respond) as server:
        # Polled once an hour: after the takeover no one polls again, so every row written
        # from then on would be the paused replica's.
        paused, successor = (
            replica(
                tmp_path,
                name,
                url=postgres_url,
                feeds=server,
                interval="1h",
                charts=only_us_top_free,
            )
            for name in ("paused", "successor")
        )
        with paused:
            paused.wait_ready()
            wait_for(lambda: bool(server.requests_to(US_TOP_FREE_V2)), "the paused replica's fetch")
            paused.signal(signal.SIGSTOP)
            try:
                [claim] = held_leases(postgres_url, now=dt.datetime.now(dt.UTC)).values()
                assert f":{paused.pid}:" in (claim.owner or "")
                with successor:
                    successor.wait_ready()
                    wait_for(
                        lambda: len(snapshots_by_chart(postgres_url).get(US_TOP_FREE, [])) == 1,
                        "the successor's snapshot",
                    )
                    taken_over = leases(postgres_url)
                    stored = snapshots_by_chart(postgres_url)
                    fetches = fetches_by_chart(postgres_url)
                    paused.signal(signal.SIGCONT)
                    wait_for(
                        lambda: paused.metric("apprank_leases_lost_total") == 1,
                        "the woken replica to find its lease lost",
                    )
                    assert successor.metric("apprank_leases_lost_total") == 0
                    assert successor.stop() == 0
            finally:
                paused.signal(signal.SIGCONT)
            assert paused.stop() == 0

    assert [replica_of(request) for request in server.requests] == ["paused", "successor"]
    assert taken_over[US_TOP_FREE].token == claim.token + 1
    # Nothing from the woken replica: the successor's snapshot, fetch and schedule stand.
    assert leases(postgres_url) == taken_over
    assert snapshots_by_chart(postgres_url) == stored
    assert fetches_by_chart(postgres_url) == fetches == {US_TOP_FREE: 1}
    assert "was taken over by another worker" in paused.output


def test_a_killed_replicas_charts_are_polled_by_the_others_within_one_lease(
    tmp_path: Path, postgres_url: str
) -> None:
    charts = FakeAppleCharts()

    def respond(request: Request) -> Response:
        body = charts.respond(request.path)
        assert body is not None
        # The doomed replica's fetches hang: it is killed holding their leases.
        return Response(200, body, delay=60 if replica_of(request) == "doomed" else 0)

    with ScriptedServer(fallback=respond) as server:
        doomed, *others = (
            replica(tmp_path, name, url=postgres_url, feeds=server) for name in ("doomed", "b", "c")
        )
        with doomed:
            doomed.wait_ready()
            with others[0], others[1]:
                for service in others:
                    service.wait_ready()

                def doomed_holds_a_lease() -> bool:
                    # With over a second left: its fetch (which gives up 0.6 s before the
                    # lease ends) is still in flight when the kill lands.
                    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
                    return any(
                        f":{doomed.pid}:" in (lease.owner or "")
                        for lease in held_leases(postgres_url, now=soon).values()
                    )

                wait_for(doomed_holds_a_lease, "the doomed replica fetching under a lease")
                doomed.kill()
                killed_at = dt.datetime.now(dt.UTC)
                killed = time.monotonic()
                held = {
                    chart: lease
                    for chart, lease in held_leases(postgres_url, now=killed_at).items()
                    if f":{doomed.pid}:" in (lease.owner or "")
                }
                assert held, "the killed replica held no lease"
                picked_up: dict[str, float] = {}

                def all_picked_up() -> bool:
                    for request in server.requests:
                        chart = chart_of(request.path)
                        if chart in held and request.arrived_at > killed:
                            picked_up.setdefault(chart, request.arrived_at - killed)
                    return picked_up.keys() == held.keys()

                wait_for(all_picked_up, "the killed replica's charts polled by the others")
                for service in others:
                    assert service.stop() == 0

    for chart, after in picked_up.items():
        expires_at = held[chart].expires_at
        assert expires_at is not None
        lease_left = (expires_at - killed_at).total_seconds()
        # Not before its lease ran out, and at the first tick after.
        assert lease_left - 0.2 <= after <= lease_left + TICK_SECONDS + 1.0, (chart, after)
        assert after <= LEASE_SECONDS + TICK_SECONDS + 1.0
    assert history_problems(postgres_url) == []


def test_replicas_starting_together_on_an_empty_database_migrate_it_once(
    tmp_path: Path, postgres_url: str
) -> None:
    with (
        serve_charts(FakeAppleCharts()) as server,
        psycopg.connect(libpq_url(postgres_url), autocommit=True) as holder,
    ):
        # Held here until all three wait for it: then they truly race to migrate.
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        replicas = [
            replica(tmp_path, name, url=postgres_url, feeds=server) for name in ("a", "b", "c")
        ]
        with all_running(replicas):
            wait_for(lambda: waiting_for_lock(holder) == 3, "every replica waiting to migrate")
            holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
            for service in replicas:
                service.wait_ready()
            assert [service.stop() for service in replicas] == [0, 0, 0]
        versions = holder.execute("SELECT version_num FROM alembic_version").fetchall()

    assert versions == [(head_revision(),)]
    migrated = [service for service in replicas if "Running upgrade  -> 0001" in service.output]
    assert len(migrated) == 1
    for service in replicas:
        assert "ERROR" not in service.output
        assert "Traceback" not in service.output


def libpq_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def waiting_for_lock(connection: psycopg.Connection[tuple[object, ...]]) -> int:
    """How many sessions of this database wait for an advisory lock."""
    row = connection.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ).fetchone()
    assert row is not None
    return int(str(row[0]))
