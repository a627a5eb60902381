"""Starting `app-rank-monitor run` before its database answers, and start-up problems that
no waiting can cure.

A database that cannot be used yet (PostgreSQL still starting, a network not up yet) must not
end the process, or an orchestrator restarts it in a loop: the service serves /healthz,
reports the problem on /readyz and /metrics, retries with a growing pause, and polls once the
database answers. A locked SQLite file, a schema newer than the code or an invalid URL end it
at once with exit status 2 and one line saying why.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_apple import FakeAppleCharts
from tests.support.history_checks import history_problems, snapshots_by_chart
from tests.support.http_server import ScriptedServer
from tests.support.private_postgres import PrivatePostgres, private_postgres
from tests.support.processes import free_port, monitor, wait_for
from tests.support.service import ServiceProcess, serve_charts, write_config

PASSWORD = "hunter2"
CHARTS = {
    f"apple/{country}/{collection}/iphone/all"
    for country in ("us", "gb")
    for collection in ("top_free", "top_paid")
}
RETRY_LINE = re.compile(r"not usable \(attempt (\d+)\): .*; retrying in (\d+)s")


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivatePostgres]:
    with private_postgres() as cluster:
        yield cluster


@pytest.fixture
def feeds() -> Iterator[ScriptedServer]:
    with serve_charts(FakeAppleCharts()) as server:
        yield server


def with_password(url: str) -> str:
    """The URL with a password: trust authentication ignores it, so a test can show that it
    is never printed."""
    return url.replace("://postgres@", f"://postgres:{PASSWORD}@", 1)


def retries(service: ServiceProcess) -> list[tuple[int, int]]:
    """(attempt, seconds until the next) of each start-up retry the service logged."""
    return [(int(m[1]), int(m[2])) for m in RETRY_LINE.finditer(service.output)]


@pytest.mark.slow
def test_before_its_database_answers_the_service_is_alive_not_ready_and_stops_on_sigterm(
    tmp_path: Path, feeds: ScriptedServer
) -> None:
    # Nothing listens on this port: every connection attempt is refused.
    url = f"postgresql://monitor:{PASSWORD}@127.0.0.1:{free_port()}/ranks"
    config = write_config(tmp_path, database_url=url, feeds=feeds)

    with ServiceProcess(config) as service:
        wait_for(lambda: len(retries(service)) >= 2, "a second start-up attempt", 15)
        health = service.get("/healthz")
        ready = service.get("/readyz")
        database_up = service.metric("apprank_database_up")
        page = service.get("/")

        started = time.monotonic()
        service.signal(signal.SIGTERM)
        status = service.wait_exit(timeout=10)
        stopping = time.monotonic() - started

    assert health.status_code == 200
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert checks["scheduler"] == "not started"
    assert checks["database"].startswith("StoreError: database error: connection failed")
    assert "Connection refused" in checks["database"]
    assert database_up == 0
    assert page.status_code == 200
    # Doubling pauses, each attempt logged once, the URL shown without its password.
    assert retries(service)[:2] == [(1, 1), (2, 2)]
    assert "postgresql+psycopg://monitor:***@127.0.0.1" in service.output
    assert PASSWORD not in service.output + ready.text + page.text
    assert "Traceback" not in service.output
    assert status == 0
    assert stopping < 3, f"SIGTERM took {stopping:.1f}s while waiting for the database"
    assert not feeds.requests  # nothing was polled without a database to store it in


@pytest.mark.slow
def test_a_service_started_while_postgresql_is_down_polls_once_it_comes_up(
    tmp_path: Path, cluster: PrivatePostgres, feeds: ScriptedServer
) -> None:
    url = cluster.create_database()
    cluster.stop()
    config = write_config(tmp_path, database_url=with_password(url), feeds=feeds)

    with ServiceProcess(config) as service:
        try:
            wait_for(lambda: len(retries(service)) >= 2, "a second start-up attempt", 15)
            waiting = service.get("/readyz")
        finally:
            cluster.start()
        service.wait_ready(timeout=40)
        wait_for(lambda: set(snapshots_by_chart(url)) == CHARTS, "every chart's snapshot", 20)
        assert service.running
        status = service.stop()

    assert waiting.status_code == 503
    assert "connection failed" in waiting.json()["checks"]["database"]
    attempts = retries(service)
    assert [attempt for attempt, _ in attempts] == list(range(1, len(attempts) + 1))
    assert [pause for _, pause in attempts] == [1, 2, 4, 8, 16][: len(attempts)]
    assert history_problems(url) == []
    assert PASSWORD not in service.output
    assert status == 0


@pytest.mark.slow
def test_a_schema_newer_than_the_code_ends_run_at_once_with_exit_2(
    tmp_path: Path, sqlite_url: str, feeds: ScriptedServer
) -> None:
    config = write_config(tmp_path, database_url=sqlite_url, feeds=feeds)
    assert monitor(config, "migrate").returncode == 0
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")

    run = monitor(config, "run")

    assert run.returncode == 2, run.stderr
    assert run.stderr.splitlines()[-1].startswith(
        "Error: the database schema is at revision 9999_from_the_future, which this version "
    )
    assert "Traceback" not in run.stderr
    assert not feeds.requests


def test_a_database_url_with_an_invalid_port_ends_run_at_once_with_exit_2(
    tmp_path: Path, feeds: ScriptedServer
) -> None:
    # The configuration accepts the URL's form (other invalid URLs are configuration errors,
    # tests/test_config_resolution.py); the port is only read when the database is opened.
    url = f"postgresql://monitor:{PASSWORD}@127.0.0.1:notaport/ranks"

    run = monitor(write_config(tmp_path, database_url=url, feeds=feeds), "run")

    assert run.returncode == 2, run.stderr
    assert run.stderr.splitlines()[-1] == (
        "Error: invalid database URL: invalid literal for int() with base 10: 'notaport'"
    )
    assert PASSWORD not in run.stdout + run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.slow
def test_a_second_run_on_the_same_sqlite_file_exits_2_and_the_first_goes_on(
    tmp_path: Path, sqlite_url: str, feeds: ScriptedServer
) -> None:
    first_config = write_config(tmp_path, database_url=sqlite_url, feeds=feeds, name="first")
    second_config = write_config(tmp_path, database_url=sqlite_url, feeds=feeds, name="second")

    with ServiceProcess(first_config, name="first") as first:
        first.wait_ready()
        second = monitor(second_config, "run")
        assert first.is_ready()
        assert first.stop() == 0

    assert second.returncode == 2, second.stderr
    assert second.stderr.splitlines()[-1] == (
        f"Error: {sqlite_url.removeprefix('sqlite:///')} is already used by another writer "
        f"(pid {first.pid}). Stop that process, or use read-only commands (history, chart, "
        "apps) or `silence` beside it."
    )
    assert "Traceback" not in second.stderr
