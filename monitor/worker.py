"""The long-running service: scheduler ticker, poll rounds, HTTP listener, signal handling."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
import socket
from collections.abc import Iterator

import httpx
import uvicorn
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from monitor import __version__
from monitor.alerts.sender import OutboxSender
from monitor.config import Settings
from monitor.errors import MonitorError
from monitor.metrics import ServiceMetrics
from monitor.model import watchlist_names
from monitor.progress import Progress
from monitor.rounds import PollRounds
from monitor.single_flight import SingleFlight
from monitor.status_page import StatusPage
from monitor.store.engine import Database, open_database
from monitor.store.migrate import upgrade
from monitor.store.repository import Repository
from monitor.web import Readiness, create_app
from monitor.wiring import (
    alert_delivery,
    polling,
    service_metrics,
    service_repository,
    utc_now,
)

log = logging.getLogger(__name__)

# In-flight polls get this long to finish on SIGTERM before they are abandoned.
SHUTDOWN_GRACE_SECONDS = 5.0
READINESS_TIMEOUT_SECONDS = 2.0


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


def prepare_database(settings: Settings, database: Database) -> Repository:
    """Migrate, then bring the schedule and the watchlist in line with the settings."""
    upgrade(database)
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
    """Run until SIGTERM/SIGINT. Raises MonitorError for start-up problems."""
    listener = bind_listener(settings.http.host, settings.http.port)
    with contextlib.closing(listener), open_database(settings.database.url, writer=True) as db:
        repository = prepare_database(settings, db)
        metrics = service_metrics(settings, repository)
        async with (
            polling(settings, repository, metrics=metrics, transport=transport) as rounds,
            alert_delivery(settings, repository, metrics) as sender,
        ):
            await _serve(
                settings,
                repository=repository,
                metrics=metrics,
                rounds=rounds,
                sender=sender,
                listener=listener,
            )


async def _serve(
    settings: Settings,
    *,
    repository: Repository,
    metrics: ServiceMetrics,
    rounds: PollRounds,
    sender: OutboxSender,
    listener: socket.socket,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    scheduler = AsyncIOScheduler(timezone=dt.UTC)
    # Both start at once and run every tick; a run still going when the next is due is
    # left to finish (a long poll round, a slow mail server), not doubled.
    for job, name in ((rounds.tick, "poll-ticker"), (sender.send_due, "outbox-sender")):
        scheduler.add_job(
            job,
            IntervalTrigger(seconds=settings.poll.tick.total_seconds()),
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

    database_probe = DatabaseProbe(repository, READINESS_TIMEOUT_SECONDS)

    async def readiness() -> Readiness:
        running = scheduler.running and not stop.is_set()
        return Readiness(
            {
                "scheduler": "ok" if running else "stopped",
                "database": await database_probe.check(),
            }
        )

    server = _EmbeddedServer(
        uvicorn.Config(
            create_app(
                readiness=readiness,
                exposition=SingleFlight(metrics.exposition),
                status_page=SingleFlight(
                    StatusPage(
                        repository,
                        metrics,
                        app_names=watchlist_names(settings.watched_apps()),
                        clock=utc_now,
                        grafana_url=settings.http.grafana_url,
                    ).render
                ),
            ),
            log_config=None,
            lifespan="off",
            access_log=False,
        )
    )
    server_task = asyncio.create_task(server.serve(sockets=[listener]))
    scheduler.start()
    host, port = listener.getsockname()[:2]
    log.info(
        "app-rank-monitor %s: listening on http://%s:%s, polling every %s",
        __version__,
        host,
        port,
        settings.poll.interval,
    )
    try:
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([stopped, server_task], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
    finally:
        log.info("shutting down")
        scheduler.shutdown(wait=False)
        await rounds.stop(grace=SHUTDOWN_GRACE_SECONDS)
        server.should_exit = True
        await server_task
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info("stopped")
