"""The service as a whole: run_service in-process (and `run` once as a subprocess).

run_service runs on the test's event loop, in the main thread, so the signal handlers it
installs are the real ones: the test sends itself SIGINT / SIGTERM once /readyz answers
(which is after the handlers are in place). The feeds come from a ScriptedServer on
127.0.0.1 serving FakeAppleCharts payloads; the database is a real SQLite file or a fresh
PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from monitor.config import Settings, load_settings
from monitor.errors import DatabaseLocked, MonitorError
from monitor.model import ChartKey, Collection, Device, Store
from monitor.store.engine import open_database
from monitor.store.repository import Repository
from monitor.wiring import utc_now
from monitor.worker import DatabaseProbe, run_service
from tests.support.http_server import ScriptedServer
from tests.support.processes import free_port
from tests.test_polling import AppleFeeds, apple_server, legacy_path
from tests.test_status_page import GRAFANA, app_section

pytestmark = pytest.mark.anyio

US_FREE = ChartKey(Store.APPLE, "us", Collection.TOP_FREE, Device.IPHONE)
US_GROSSING = ChartKey(Store.APPLE, "us", Collection.TOP_GROSSING, Device.IPHONE)


@pytest.fixture
def apple() -> Iterator[ScriptedServer]:
    with apple_server() as server:
        yield server


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def service_environment(database_url: str, feeds_url: str, port: int) -> dict[str, str]:
    """What an operator would set: one storefront, a chart served by v2 and one legacy-only."""
    return {
        "MONITOR_DATABASE_URL": database_url,
        "MONITOR_HTTP_HOST": "127.0.0.1",
        "MONITOR_HTTP_PORT": str(port),
        "MONITOR_ITUNES_BASE_URL": feeds_url,
        "MONITOR_APPLE_RSS_BASE_URL": feeds_url,
        "MONITOR_POLL_INTERVAL": "1h",
        "MONITOR_POLL_TICK": "1s",
        "MONITOR_FETCH_REQUESTS_PER_MINUTE": "0",
        "MONITOR_CHARTS_STOREFRONTS": "us",
        "MONITOR_CHARTS_COLLECTIONS": "top_free,top_grossing",
        "MONITOR_CHARTS_DEVICES": "iphone",
        "MONITOR_CHARTS_GENRES": "all",
    }


def service_settings(database_url: str, feeds_url: str, port: int) -> Settings:
    return load_settings(None, service_environment(database_url, feeds_url, port))


async def wait_until(
    condition: Callable[[], Awaitable[bool]],
    what: str,
    *,
    service: asyncio.Task[None],
    seconds: float = 20.0,
) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        if service.done():
            service.result()  # raises what stopped it
            raise AssertionError(f"the service stopped while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        await asyncio.sleep(0.05)


async def readyz(port: int) -> httpx.Response | None:
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            return await client.get(f"http://127.0.0.1:{port}/readyz")
    except httpx.TransportError:
        return None


async def readyz_status(port: int) -> int | None:
    response = await readyz(port)
    return response.status_code if response is not None else None


def sqlite_file(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


def stored_charts(database_url: str) -> set[ChartKey]:
    """Charts with a snapshot, read the way the CLI reads beside a running service."""
    with open_database(database_url, writer=False) as database:
        repository = Repository(database)
        return {chart for chart in (US_FREE, US_GROSSING) if repository.chart_at(chart)}


@contextlib.asynccontextmanager
async def running_service(settings: Settings) -> AsyncIterator[asyncio.Task[None]]:
    """run_service as a task, ready; cancelled (and reported) if the test leaves it running."""
    service = asyncio.create_task(run_service(settings))
    port = settings.http.port
    try:
        await wait_until(
            lambda: _is(readyz_status(port), 200), "/readyz to answer 200", service=service
        )
        yield service
    finally:
        if not service.done():
            service.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await service
            pytest.fail("the service was still running at the end of the test")


async def _is(status: Awaitable[int | None], expected: int) -> bool:
    return await status == expected


# -- start-up --------------------------------------------------------------------------------


async def test_a_taken_http_port_fails_start_up_with_an_error_naming_MONITOR_HTTP_PORT(
    sqlite_url: str,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = service_settings(sqlite_url, "http://127.0.0.1:9/", port)

        with pytest.raises(MonitorError) as failure:
            await run_service(settings)

    message = str(failure.value)
    assert f"127.0.0.1:{port}" in message
    assert "MONITOR_HTTP_PORT" in message
    # The socket that failed to bind is closed: collected here, a leaked one would warn
    # (warnings are errors) in this test rather than in whichever test runs next.
    del failure
    gc.collect()
    # The port is checked first: nothing was migrated or locked for a service that never ran.
    assert not sqlite_file(sqlite_url).exists()


async def test_a_start_up_failure_after_binding_releases_the_port(sqlite_url: str) -> None:
    port = free_port()
    settings = service_settings(sqlite_url, "http://127.0.0.1:9/", port)
    # Another writer (as another process would) holds the SQLite file.
    with open_database(sqlite_url, writer=True), pytest.raises(DatabaseLocked):
        await run_service(settings)

    assert port_is_free(port)


def test_run_with_a_taken_port_exits_2_with_the_error_on_stderr(sqlite_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        environment = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")},
            **service_environment(sqlite_url, "http://127.0.0.1:9/", port),
        }
        run = subprocess.run(
            [sys.executable, "-m", "monitor", "run"],
            capture_output=True,
            text=True,
            timeout=60,
            env=environment,
            check=False,
        )

    assert run.returncode == 2, run.stderr
    assert "MONITOR_HTTP_PORT" in run.stderr
    assert "Traceback" not in run.stderr


# -- running and stopping --------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_a_signal_stops_the_running_service_cleanly(
    signum: signal.Signals,
    sqlite_url: str,
    apple: ScriptedServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="monitor")
    port = free_port()
    settings = service_settings(sqlite_url, apple.url(""), port)

    # The grossing chart's feed answers slowly: its poll is in flight when the signal comes.
    feeds = AppleFeeds()
    apple.route(
        legacy_path(US_GROSSING), lambda request: dataclasses.replace(feeds.serve(request), delay=1)
    )

    async with running_service(settings) as service:
        response = await readyz(port)
        assert response is not None
        assert response.json() == {"ready": True, "checks": {"scheduler": "ok", "database": "ok"}}

        async def grossing_requested() -> bool:
            return bool(apple.requests_to(legacy_path(US_GROSSING)))

        await wait_until(grossing_requested, "the grossing chart's fetch", service=service)
        os.kill(os.getpid(), signum)
        async with asyncio.timeout(15):
            await service  # returns: a signal is a clean stop, not an error

    # The poll in flight finished within the shutdown grace; nothing is left leased.
    assert stored_charts(sqlite_url) == {US_FREE, US_GROSSING}
    with open_database(sqlite_url, writer=False) as database:
        assert Repository(database).schedule_status(now=utc_now()).leased == 0
    assert "stopped" in [record.getMessage() for record in caplog.records]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert port_is_free(port)
    # The SQLite writer lock is released: another writer may open the file.
    with open_database(sqlite_url, writer=True):
        pass
    # The signal handlers are gone with the service: the default ones are back.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) == signal.default_int_handler


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _allow_connections(admin_url: str, database_url: str, allowed: bool) -> None:
    """Take a database away from its clients (or give it back), as an outage would."""
    name = database_url.rpartition("/")[2]
    with psycopg.connect(_libpq(admin_url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
                sql.Identifier(name), sql.SQL("true" if allowed else "false")
            )
        )
        if not allowed:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                [name],
            )


@pytest.mark.postgres
async def test_readyz_turns_503_while_the_database_is_unavailable_and_recovers(
    postgres_admin_url: str,
    postgres_url: str,
    apple: ScriptedServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="monitor")
    port = free_port()
    settings = service_settings(postgres_url, apple.url(""), port)

    async with running_service(settings) as service:
        _allow_connections(postgres_admin_url, postgres_url, allowed=False)
        try:
            await wait_until(
                lambda: _is(readyz_status(port), 503), "/readyz to answer 503", service=service
            )
            outage = await readyz(port)

            async def a_round_failed() -> bool:
                return any(r.getMessage().startswith("poll round failed") for r in caplog.records)

            # The ticker goes on; its rounds fail, and say so in the log.
            await wait_until(a_round_failed, "a poll round to fail", service=service)
        finally:
            _allow_connections(postgres_admin_url, postgres_url, allowed=True)
        await wait_until(
            lambda: _is(readyz_status(port), 200), "/readyz to recover", service=service
        )
        os.kill(os.getpid(), signal.SIGTERM)
        async with asyncio.timeout(15):
            await service

    assert outage is not None
    checks = outage.json()["checks"]
    assert checks["scheduler"] == "ok"
    assert checks["database"].startswith("StoreError: database error:")
    assert "not currently accepting connections" in checks["database"]
    failed_rounds = [r for r in caplog.records if r.getMessage().startswith("poll round failed")]
    assert all(r.levelno == logging.ERROR for r in failed_rounds)
    assert "StoreError: database error:" in failed_rounds[0].getMessage()
    assert "stopped" in [record.getMessage() for record in caplog.records]


class _HangingRepository:
    """Stands in for a repository whose database stopped answering."""

    def __init__(self) -> None:
        self.questions = 0
        self.answer = threading.Event()

    def schedule_status(self, *, now: object) -> None:
        self.questions += 1
        self.answer.wait(10)


async def test_readiness_probes_share_one_database_question_while_it_hangs() -> None:
    repository = _HangingRepository()
    probe = DatabaseProbe(repository, timeout=0.2)  # type: ignore[arg-type]

    answers = await asyncio.gather(*(probe.check() for _ in range(5)))
    assert answers == ["no answer within 0.2s"] * 5
    assert await probe.check() == "no answer within 0.2s"
    # One worker thread is tied up by the hung question, not one per probe.
    assert repository.questions == 1

    repository.answer.set()
    answers = []
    for _ in range(100):  # the hung question ends, and the probes report it
        answers.append(await probe.check())
        if answers[-1] == "ok":
            break
        await asyncio.sleep(0.05)
    assert answers[-1] == "ok"


async def test_the_running_service_serves_the_page_at_the_root(
    sqlite_url: str, apple: ScriptedServer
) -> None:
    port = free_port()
    environment = {
        **service_environment(sqlite_url, apple.url(""), port),
        "MONITOR_HTTP_GRAFANA_URL": GRAFANA,
    }
    settings = load_settings(None, environment)

    async with running_service(settings) as service, httpx.AsyncClient(timeout=10) as client:

        async def deepseek_ranked() -> bool:
            response = await client.get(f"http://127.0.0.1:{port}/")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/html")
            return "#31<" in app_section(response.text, "DeepSeek")

        await wait_until(deepseek_ranked, "DeepSeek's rank on the page", service=service)
        html = (await client.get(f"http://127.0.0.1:{port}/")).text
        os.kill(os.getpid(), signal.SIGTERM)
        await service

    for name in ("ChatGPT", "Claude by Anthropic", "Google Gemini", "Microsoft Copilot"):
        assert f">{name} <small>" in html
    assert f'<a href="{GRAFANA}">Grafana</a>' in html
