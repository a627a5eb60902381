"""The long-running service: scheduler ticker, poll rounds, HTTP listener, signal handling.

Start-up binds the HTTP listener first and serves /healthz, /readyz and /metrics at once; the
database start-up (migrate, sync charts and watchlist) is retried until the database can be
used, and only then does polling start. What no retry can cure ends `run` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import httpx
import uvicorn
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from fastapi import FastAPI
from starlette.types import ASGIApp

from monitor import __version__
from monitor.alerts.sender import OutboxSender
from monitor.api import ApiSources, ReadApi
from monitor.api.access import OFF_MESSAGE
from monitor.config import Settings
from monitor.errors import MonitorError, StoreError
from monitor.metrics import DatabaseOperation, ServiceMetrics
from monitor.model import watchlist_names
from monitor.progress import Progress
from monitor.retention_job import RetentionJob
from monitor.rounds import PollRounds
from monitor.single_flight import SingleFlight
from monitor.status_page import StatusPage
from monitor.store.engine import Database, open_database
from monitor.store.migrate import upgrade
from monitor.store.repository import Repository
from monitor.store.sql import store_errors
from monitor.web import Readiness, create_app
from monitor.wiring import (
    Clock,
    alert_delivery,
    owner_id,
    polling,
    service_metrics,
    service_repository,
    utc_now,
)

log = logging.getLogger(__name__)

# In-flight polls and the message being delivered get this long to finish on SIGTERM before
# they are abandoned.
SHUTDOWN_GRACE_SECONDS = 5.0
READINESS_TIMEOUT_SECONDS = 2.0
RETENTION_LOOK_EVERY = dt.timedelta(minutes=5)
# A database that cannot be used at start-up is tried again after 1 s, 2 s, 4 s ... 30 s.
DATABASE_RETRY_FIRST_SECONDS = 1.0
DATABASE_RETRY_MAX_SECONDS = 30.0


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the worker owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_listener(host: str, port: int) -> socket.socket:
    """Bind before anything else starts, so a taken port is a clear start-up error."""
    sock: socket.socket | None = None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise MonitorError(
            f"HTTP listener: cannot listen on {host}:{port} ({exc.strerror or exc}); "
            "set MONITOR_HTTP_HOST / MONITOR_HTTP_PORT"
        ) from exc
    sock.set_inheritable(True)
    return sock


def service_app(
    settings: Settings,
    repository: Repository,
    metrics: ServiceMetrics,
    *,
    readiness: Callable[[], Awaitable[Readiness]],
    clock: Clock,
) -> FastAPI:
    """The service's HTTP surface (monitor.web) over `repository`, at the time of `clock`."""
    app_names = watchlist_names(settings.watched_apps())
    api = ReadApi(
        ApiSources(repository, app_names, clock),
        token=settings.http.api_token,
        open_without_token=settings.http.on_loopback,
    )
    if not api.enabled:
        log.warning("read API: %s", OFF_MESSAGE)
    return create_app(
        readiness=readiness,
        exposition=SingleFlight(metrics.exposition),
        status_page=SingleFlight(
            StatusPage(
                repository,
                metrics,
                app_names=app_names,
                clock=clock,
                grafana_url=settings.http.grafana_url,
                api_enabled=api.enabled,
            ).render
        ),
        api=api,
    )


@contextlib.asynccontextmanager
async def serving_http(
    app: ASGIApp, listener: socket.socket, *, on_exit: Callable[[], None] = lambda: None
) -> AsyncIterator[None]:
    """`app` served on `listener` by uvicorn in this event loop until the block ends;
    `on_exit` is called if the server stops by itself before."""
    server = _EmbeddedServer(uvicorn.Config(app, log_config=None, lifespan="off", access_log=False))
    server_task = asyncio.create_task(server.serve(sockets=[listener]))
    server_task.add_done_callback(lambda _: on_exit())
    try:
        yield
    finally:
        server.should_exit = True
        await server_task


@contextlib.asynccontextmanager
async def stopped_by_signals(stop: asyncio.Event) -> AsyncIterator[None]:
    """SIGTERM and SIGINT set `stop` while the block runs."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        yield
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


class DatabaseProbe:
    """Asks the database for the schedule's status, with at most one question in flight."""

    def __init__(self, repository: Repository, timeout: float) -> None:
        self._status = SingleFlight(lambda: repository.schedule_status(now=utc_now()))
        self._timeout = timeout

    async def check(self) -> str:
        """Return "ok", or what is wrong."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._status()
        except TimeoutError:
            return f"no answer within {self._timeout:g}s"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"[:200]
        return "ok"


def prepare_database(
    settings: Settings, database: Database, repository: Repository | None = None
) -> Repository:
    """Migrate, then bring the schedule and the watchlist in line with the settings, through
    `repository` (by default a new one, returned)."""
    upgrade(database)
    if repository is None:
        repository = service_repository(settings, database)
    charts = settings.chart_keys()
    sync = repository.sync_charts(charts, now=utc_now())
    log.info("charts: %d configured (%s)", len(charts), sync)
    watch = repository.sync_watchlist(
        settings.watched_apps(), progress=Progress("watchlist backfill", log)
    )
    log.info("watchlist: %d apps (%s)", len(settings.watched_apps()), watch)
    return repository


async def run_service(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> None:
    """Run until SIGTERM/SIGINT. Raises MonitorError for start-up problems that waiting
    cannot cure: a taken port, a SQLite file another writer holds, a schema newer than the
    code, an invalid URL. A database that does not answer yet is waited for (see
    `wait_for_database`) while /healthz, /readyz and /metrics answer."""
    listener = bind_listener(settings.http.host, settings.http.port)
    with contextlib.closing(listener), open_database(settings.database.url, writer=True) as db:
        repository = service_repository(settings, db)
        metrics = service_metrics(settings, repository)
        service = _Service(settings, repository, metrics)
        async with stopped_by_signals(service.stop), service.serving(listener):
            if await wait_for_database(settings, db, repository, service.stop, service.starting):
                async with (
                    polling(settings, repository, metrics=metrics, transport=transport) as rounds,
                    alert_delivery(settings, repository, metrics) as sender,
                ):
                    retention = RetentionJob(repository, settings, owner_id(), utc_now, metrics)
                    await service.poll_until_stopped(rounds, sender, retention)
    log.info("stopped")


class _StartUp:
    """What keeps the service from polling yet, for /readyz; None once it polls."""

    def __init__(self) -> None:
        self.problem: str | None = "waiting for the database start-up (migrate, sync)"


async def wait_for_database(
    settings: Settings,
    database: Database,
    repository: Repository,
    stop: asyncio.Event,
    starting: _StartUp,
) -> bool:
    """Run `prepare_database` until it succeeds (True) or `stop` is set (False), waiting
    between attempts from 1 s doubling up to 30 s: a database that is still starting (or
    restarting) delays the service instead of ending it in a crash loop. Problems no retry
    can cure (MonitorError.permanent) are raised at once. An attempt under way when `stop`
    is set is finished first (the connect timeout bounds it)."""
    delay = DATABASE_RETRY_FIRST_SECONDS
    for attempt in itertools.count(1):
        try:
            await asyncio.to_thread(_prepare, settings, database, repository)
        except MonitorError as exc:
            if exc.permanent:
                raise
            starting.problem = f"{type(exc).__name__}: {exc}"[:200]
            log.warning(
                "database %s not usable (attempt %d): %s; retrying in %gs",
                database.display_url,
                attempt,
                exc,
                delay,
                extra={"attempt": attempt, "retry_in_seconds": delay},
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            delay = min(delay * 2, DATABASE_RETRY_MAX_SECONDS)
        else:
            starting.problem = None
            return True
        if stop.is_set():
            return False
    raise AssertionError("unreachable")


def _prepare(settings: Settings, database: Database, repository: Repository) -> None:
    with store_errors():  # a connection refused inside Alembic, say
        prepare_database(settings, database, repository)


class _Service:
    """The parts of the running service the HTTP surface and the scheduler share."""

    def __init__(self, settings: Settings, repository: Repository, metrics: ServiceMetrics):
        self.settings = settings
        self.repository = repository
        self.metrics = metrics
        self.stop = asyncio.Event()
        self.starting = _StartUp()
        self.scheduler = AsyncIOScheduler(timezone=dt.UTC)
        self._database_probe = DatabaseProbe(repository, READINESS_TIMEOUT_SECONDS)

    async def readiness(self) -> Readiness:
        if self.starting.problem is not None:
            return Readiness({"scheduler": "not started", "database": self.starting.problem})
        running = self.scheduler.running and not self.stop.is_set()
        return Readiness(
            {
                "scheduler": "ok" if running else "stopped",
                "database": await self._database_probe.check(),
            }
        )

    @contextlib.asynccontextmanager
    async def serving(self, listener: socket.socket) -> AsyncIterator[None]:
        """The HTTP surface, from before the database answers until everything else stopped."""
        app = service_app(
            self.settings, self.repository, self.metrics, readiness=self.readiness, clock=utc_now
        )
        # The listener failing (it never should) stops the service as a signal would.
        async with serving_http(app, listener, on_exit=self.stop.set):
            host, port = listener.getsockname()[:2]
            log.info("app-rank-monitor %s: listening on http://%s:%s", __version__, host, port)
            yield

    async def poll_until_stopped(
        self, rounds: PollRounds, sender: OutboxSender, retention: RetentionJob
    ) -> None:
        settings, metrics, scheduler = self.settings, self.metrics, self.scheduler

        async def send_due() -> None:
            # A failed round reports itself (PollRounds); the sender's database errors are
            # reported here, in one line, not as a traceback from the scheduler.
            try:
                await sender.send_due()
            except StoreError as exc:
                metrics.scheduler_errored()
                metrics.database_error(DatabaseOperation.OUTBOX)
                log.error("outbox sender failed: %s", exc)

        # All start at once and run every tick (retention looks every few minutes whether
        # the day's run is due); a run still going when the next is due is left to finish (a
        # long poll round, a slow mail server, a day's retention), not doubled.
        jobs = (
            (rounds.tick, "poll-ticker", settings.poll.tick),
            (send_due, "outbox-sender", settings.poll.tick),
            (retention.run_if_due, "retention", RETENTION_LOOK_EVERY),
        )
        for job, name, every in jobs:
            scheduler.add_job(
                job,
                IntervalTrigger(seconds=every.total_seconds()),
                id=name,
                max_instances=1,
                coalesce=True,
                next_run_time=utc_now(),
            )

        def count_failed_tick(event: JobExecutionEvent) -> None:
            if event.code == EVENT_JOB_MISSED:
                log.warning("scheduler: a tick ran too late and was skipped")
                metrics.scheduler_missed()
            else:
                metrics.scheduler_errored()

        scheduler.add_listener(count_failed_tick, EVENT_JOB_MISSED | EVENT_JOB_ERROR)
        scheduler.start()
        log.info("polling every %s", settings.poll.interval)
        try:
            await self.stop.wait()
        finally:
            log.info("shutting down")
            # Paused, not shut down yet: shutting down would cancel the runs in progress (a
            # message being delivered) instead of giving them the grace.
            scheduler.pause()
            await asyncio.gather(
                rounds.stop(grace=SHUTDOWN_GRACE_SECONDS),
                sender.stop(grace=SHUTDOWN_GRACE_SECONDS),
                retention.stop(grace=SHUTDOWN_GRACE_SECONDS),
            )
            scheduler.shutdown(wait=False)
