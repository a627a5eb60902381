"""Database faults under a running `app-rank-monitor run`: PostgreSQL restarted mid-round, its
connections killed, slowed or black-holed (a fault proxy), cut off by a network partition
(packets dropped), and SQLite's disk filling up.

Whatever the fault, the process stays up and /healthz answers; /readyz says 503 while the
database cannot be used and 200 once it can; a failed write leaves nothing half-written (no
snapshot without its fetch log row and derived ranks, none stored twice); and every chart is
polled again after the fault, without anyone restarting anything.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from monitor.store.engine import open_database
from monitor.store.tables import charts, fetch_log
from monitor.worker import READINESS_TIMEOUT_SECONDS
from tests.support.fake_apple import FakeAppleCharts
from tests.support.fault_proxy import FaultProxy
from tests.support.history_checks import history_problems, snapshots_by_chart
from tests.support.http_server import Request, Response, ScriptedServer
from tests.support.private_postgres import PrivatePostgres, private_postgres
from tests.support.processes import wait_for
from tests.support.requirements import unavailable
from tests.support.service import ONE_SHORT_FETCH, ServiceProcess, write_config

pytestmark = pytest.mark.slow

CHARTS = {
    f"apple/{country}/{collection}/iphone/all"
    for country in ("us", "gb")
    for collection in ("top_free", "top_paid")
}
# One short attempt per fetch allows a 4 s lease: a chart whose write failed is claimed again
# soon after the database is back, not five minutes later.
FAULT_TIMING = {"poll": {"lease": "4s"}, "fetch": ONE_SHORT_FETCH}
FAILED_POLL = re.compile(r"poll of \S+ failed: (.*)")
FAILED_ROUND = re.compile(r"poll round failed: (.*)")
FAILED_SENDER = re.compile(r"outbox sender failed: (.*)")
FAILED_CLAIM = re.compile(r"poll round: could not claim charts: (.*)")


class SlowableCharts:
    """FakeAppleCharts served with an adjustable delay before each answer: a feed slow enough
    that a round is in flight when the database fails."""

    def __init__(self) -> None:
        self.charts = FakeAppleCharts()
        self.delay = 0.0

    def respond(self, request: Request) -> Response:
        body = self.charts.respond(request.path)
        return Response(404) if body is None else Response(200, body, delay=self.delay)


def slow_the_next_round(feed: SlowableCharts, feeds: ScriptedServer) -> None:
    """Make fetches take a second, and wait until a round has started one: its polls are in
    flight, and write their charts a second later."""
    feed.delay = 1.0
    requested = len(feeds.requests)
    wait_for(lambda: len(feeds.requests) > requested, "a round to start fetching", 10)


@pytest.fixture
def feed() -> SlowableCharts:
    return SlowableCharts()


@pytest.fixture
def feeds(feed: SlowableCharts) -> Iterator[ScriptedServer]:
    with ScriptedServer(fallback=feed.respond) as server:
        yield server


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivatePostgres]:
    with private_postgres() as cluster:
        yield cluster


def service_on(tmp_path: Path, url: str, feeds: ScriptedServer) -> ServiceProcess:
    return ServiceProcess(
        write_config(tmp_path, database_url=url, feeds=feeds, overrides=FAULT_TIMING)
    )


@contextlib.contextmanager
def proxied(postgres_url: str) -> Iterator[tuple[FaultProxy, str]]:
    """A fault proxy in front of the server of `postgres_url`, and the URL through it."""
    target = make_url(postgres_url)
    assert target.host is not None
    assert target.port is not None
    with FaultProxy(target.host, target.port) as proxy:
        yield proxy, target.set(port=proxy.port).render_as_string(hide_password=False)


def polled_since(url: str, since: dt.datetime) -> set[str]:
    """Charts with a fetch that got an answer (changed or not) started at `since` or later."""
    with (
        open_database(url, writer=False, exclusive=False) as database,
        database.engine.connect() as c,
    ):
        rows = c.execute(
            select(
                charts.c.store,
                charts.c.country,
                charts.c.collection,
                charts.c.device,
                charts.c.genre,
            )
            .join(fetch_log, fetch_log.c.chart_id == charts.c.id)
            .where(fetch_log.c.started_at >= since, fetch_log.c.outcome != "failed")
            .distinct()
        )
        return {"/".join(row) for row in rows}


def wait_until_every_chart_is_polled_after(
    url: str, since: dt.datetime, timeout: float = 30
) -> None:
    wait_for(
        lambda: polled_since(url, since) == CHARTS, f"every chart polled after {since:%T}", timeout
    )


def readiness(service: ServiceProcess) -> tuple[int, dict[str, str]]:
    response = service.get("/readyz", timeout=10)
    return response.status_code, response.json()["checks"]


def wait_unready(service: ServiceProcess, timeout: float = 15) -> dict[str, str]:
    """The checks of the first 503 from /readyz."""
    answers: list[dict[str, str]] = []

    def unready() -> bool:
        status, checks = readiness(service)
        answers.append(checks)
        return status == 503

    wait_for(unready, "/readyz to answer 503", timeout)
    return answers[-1]


def database_errors_counted(service: ServiceProcess) -> int:
    return int(
        sum(
            service.metric("apprank_database_errors_total", operation=operation) or 0
            for operation in ("poll", "round", "outbox")
        )
    )


def failures_logged(service: ServiceProcess) -> list[str]:
    """The errors the service logged for failed polls, rounds, claims and outbox sender runs."""
    failed = "|".join(
        pattern.pattern for pattern in (FAILED_POLL, FAILED_ROUND, FAILED_SENDER, FAILED_CLAIM)
    )
    return [
        next(group for group in match.groups() if group is not None)
        for match in re.finditer(failed, service.output)
    ]


def assert_database_errors_reported(service: ServiceProcess, counted: int, cause: str) -> None:
    """The service logged database errors saying `cause`, each in one line and counted once in
    apprank_database_errors_total (`counted`), and none went unclassified: no traceback, no
    poll that "crashed" instead of failing."""
    failures = failures_logged(service)
    assert failures, service.output
    for failure in failures:
        assert failure.removeprefix("StoreError: ").startswith("database error: "), failure
        assert cause in failure, failure
    assert counted == len(failures)
    assert "Traceback" not in service.output
    assert " crashed" not in service.output


def assert_history_intact(url: str) -> None:
    assert history_problems(url) == []
    stored = snapshots_by_chart(url)
    assert set(stored) == CHARTS
    for chart, snapshots in stored.items():
        times = [snapshot.fetched_at for snapshot in snapshots]
        assert len(times) == len(set(times)), f"{chart}: two snapshots of one fetch"


# -- PostgreSQL ------------------------------------------------------------------------------


def test_postgresql_restarted_mid_round_rolls_back_and_the_service_reconnects_and_polls_again(
    tmp_path: Path, cluster: PrivatePostgres, feed: SlowableCharts, feeds: ScriptedServer
) -> None:
    url = cluster.create_database()
    with service_on(tmp_path, url, feeds) as service:
        service.wait_ready()
        wait_for(lambda: set(snapshots_by_chart(url)) == CHARTS, "the first snapshots", 20)

        # The database goes away under a round in flight: its polls try to write their
        # charts while it is down.
        slow_the_next_round(feed, feeds)
        cluster.stop("immediate")
        try:
            outage = wait_unready(service)
            wait_for(lambda: FAILED_POLL.search(service.output) is not None, "a write to fail", 15)
        finally:
            cluster.start()
        restarted = dt.datetime.now(dt.UTC)
        service.wait_ready()
        feed.delay = 0.0
        wait_until_every_chart_is_polled_after(url, restarted)
        assert service.running
        counted = database_errors_counted(service)

    assert outage["database"].startswith("StoreError: database error: ")
    assert_database_errors_reported(service, counted, "connect")
    assert_history_intact(url)


@pytest.mark.postgres
def test_connections_killed_with_pg_terminate_backend_are_replaced_without_losing_a_write(
    tmp_path: Path, postgres_admin_url: str, postgres_url: str, feeds: ScriptedServer
) -> None:
    # A little latency on the way to the server makes each transaction last long enough for
    # the killing loop to catch it in the middle.
    with proxied(postgres_url) as (proxy, url):
        proxy.set_latency(0.01)
        with service_on(tmp_path, url, feeds) as service:
            service.wait_ready()
            wait_for(lambda: set(snapshots_by_chart(url)) == CHARTS, "the first snapshots", 20)
            name = make_url(url).database
            assert name is not None
            mid_transaction = kill_backends(postgres_admin_url, name, seconds=4)
            killed = dt.datetime.now(dt.UTC)
            service.wait_ready()
            wait_until_every_chart_is_polled_after(url, killed)
            assert service.running
            counted = database_errors_counted(service)

    assert mid_transaction > 0, "no backend was killed inside a transaction"
    # Most transactions whose connection died were run again on a new one; those that lost
    # all their attempts to the killing loop failed, and say so in one line each.
    assert "database connection lost" in service.output
    assert counted == len(failures_logged(service))
    assert "Traceback" not in service.output
    assert_history_intact(postgres_url)  # the proxy is gone


def kill_backends(admin_url: str, database: str, *, seconds: float) -> int:
    """Terminate the service's connections to `database` as they appear, for `seconds`;
    returns how many were in the middle of a statement or transaction."""
    mid_transaction = 0
    deadline = time.monotonic() + seconds
    with psycopg.connect(admin_url.replace("+psycopg", ""), autocommit=True) as admin:
        while time.monotonic() < deadline:
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid), state FROM pg_stat_activity "
                "WHERE datname = %s AND application_name = 'app-rank-monitor'",
                [database],
            ).fetchall()
            mid_transaction += sum(1 for _, state in rows if state != "idle")
            time.sleep(0.05)
    return mid_transaction


@pytest.mark.postgres
def test_a_slow_postgresql_turns_readyz_503_within_its_timeout_and_healthz_still_answers(
    tmp_path: Path, postgres_url: str, feeds: ScriptedServer
) -> None:
    with proxied(postgres_url) as (proxy, url), service_on(tmp_path, url, feeds) as service:
        service.wait_ready()
        proxy.set_latency(1.5)
        started = time.monotonic()
        status, checks = readiness(service)
        answered_in = time.monotonic() - started
        health = service.get("/healthz", timeout=1)
        proxy.heal()
        service.wait_ready()
        assert service.running

    assert (status, checks) == (
        503,
        {"scheduler": "ok", "database": f"no answer within {READINESS_TIMEOUT_SECONDS:g}s"},
    )
    assert answered_in < READINESS_TIMEOUT_SECONDS + 1
    assert health.status_code == 200


@pytest.mark.postgres
def test_a_black_holed_postgresql_turns_readyz_503_within_its_timeout_and_recovers_on_heal(
    tmp_path: Path, postgres_url: str, feeds: ScriptedServer
) -> None:
    with proxied(postgres_url) as (proxy, url), service_on(tmp_path, url, feeds) as service:
        service.wait_ready()
        wait_for(lambda: set(snapshots_by_chart(url)) == CHARTS, "the first snapshots", 20)

        # The server stops answering on open and new connections (what a partition does to
        # them is the next test's): the service answers, and says it is not ready.
        proxy.blackhole()
        started = time.monotonic()
        hanging = wait_unready(service, timeout=READINESS_TIMEOUT_SECONDS + 2)
        unready_in = time.monotonic() - started
        health = service.get("/healthz", timeout=1)
        proxy.heal()
        healed = dt.datetime.now(dt.UTC)
        service.wait_ready()
        wait_until_every_chart_is_polled_after(url, healed)
        assert service.running

    assert hanging == {
        "scheduler": "ok",
        "database": f"no answer within {READINESS_TIMEOUT_SECONDS:g}s",
    }
    assert unready_in < READINESS_TIMEOUT_SECONDS + 2
    assert health.status_code == 200
    assert "Traceback" not in service.output
    assert_history_intact(postgres_url)  # the proxy is gone


@contextlib.contextmanager
def partitioned(port: int) -> Iterator[None]:
    """Drop every packet to and from a local TCP port, as a network partition does: unlike the
    proxy's black hole, nothing is acknowledged either."""
    if shutil.which("iptables") is None or os.geteuid() != 0:
        unavailable("a network partition (iptables)", "dropping packets needs iptables and root")
    rules = [
        ["OUTPUT", "-p", "tcp", option, str(port), "-j", "DROP"]
        for option in ("--dport", "--sport")
    ]
    for rule in rules:
        subprocess.run(["iptables", "-I", *rule], check=True)
    try:
        yield
    finally:
        for rule in rules:
            subprocess.run(["iptables", "-D", *rule], check=True)


def test_a_partitioned_postgresql_fails_hung_statements_within_seconds_and_recovers(
    tmp_path: Path, cluster: PrivatePostgres, feeds: ScriptedServer
) -> None:
    url = cluster.create_database()
    with service_on(tmp_path, url, feeds) as service:
        service.wait_ready()
        wait_for(lambda: set(snapshots_by_chart(url)) == CHARTS, "the first snapshots", 20)
        with partitioned(cluster.port):
            started = time.monotonic()
            unready = wait_unready(service, timeout=READINESS_TIMEOUT_SECONDS + 2)
            # Without a TCP timeout of its own, a statement sent into the partition would
            # wait for the kernel to give up: a quarter of an hour.
            wait_for(lambda: bool(failures_logged(service)), "a database error", 40)
            surfaced_in = time.monotonic() - started
        healed = dt.datetime.now(dt.UTC)
        service.wait_ready()
        wait_until_every_chart_is_polled_after(url, healed)
        assert service.running
        counted = database_errors_counted(service)

    assert unready == {
        "scheduler": "ok",
        "database": f"no answer within {READINESS_TIMEOUT_SECONDS:g}s",
    }
    assert surfaced_in < 30
    # "Connection timed out" once unacknowledged, "connection timeout expired" for the
    # connections that replace it.
    assert_database_errors_reported(service, counted, "time")
    assert_history_intact(url)


# -- SQLite ----------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs: the database grows into it, and a test can fill it up."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        unavailable(
            "a small disk (tmpfs)",
            f"cannot mount a tmpfs: {mounted.stderr.strip() or mounted.returncode}",
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


def fill(directory: Path) -> Path:
    """Write a file into `directory` until its filesystem is full."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as handle, pytest.raises(OSError, match="No space") as full:
        write_forever(handle)
    assert full.value.errno == errno.ENOSPC
    return filler


def write_forever(handle: BinaryIO) -> None:
    while True:
        handle.write(b"\0" * 4096)


def test_sqlite_on_a_full_disk_fails_writes_atomically_and_recovers_when_space_is_freed(
    tmp_path: Path, small_disk: Path, feed: SlowableCharts, feeds: ScriptedServer
) -> None:
    url = f"sqlite:///{small_disk / 'monitor.sqlite3'}"
    with service_on(tmp_path, url, feeds) as service:
        service.wait_ready()
        wait_for(lambda: set(snapshots_by_chart(url)) == CHARTS, "the first snapshots", 20)
        # The disk fills up while a round fetches: its charts are claimed, and their
        # snapshots find no room when they are written.
        slow_the_next_round(feed, feeds)
        filler = None
        try:
            filler = fill(small_disk)
            wait_for(lambda: FAILED_POLL.search(service.output) is not None, "a write to fail", 30)
        finally:
            if filler is not None:
                filler.unlink()
            feed.delay = 0.0
        freed = dt.datetime.now(dt.UTC)
        wait_until_every_chart_is_polled_after(url, freed)
        assert service.running
        counted = database_errors_counted(service)
        assert service.stop() == 0

    assert_database_errors_reported(service, counted, "database or disk is full")
    with open_database(url, writer=False) as database, database.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    assert_history_intact(url)
