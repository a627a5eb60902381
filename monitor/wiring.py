"""The one place where settings become collaborators (client, repository, poller, rounds)."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable

import httpx
import prometheus_client

from monitor.alerts.channels import EmailChannel, WebhookChannel
from monitor.alerts.email import MailSender, SmtpSender
from monitor.alerts.policy import Channel
from monitor.alerts.sender import OutboxSender
from monitor.config import Settings
from monitor.metrics import ServiceMetrics
from monitor.model import watchlist_names
from monitor.polling import Poller, PollSettings
from monitor.rounds import PollRounds
from monitor.sources.catalog import FeedEndpoints
from monitor.sources.http import FeedClient, HttpSettings
from monitor.store.engine import Database
from monitor.store.repository import Repository

Clock = Callable[[], dt.datetime]

# Failed charts are retried sooner than the poll interval, to keep gaps in history short.
FAILURE_RETRY = dt.timedelta(minutes=5)
WEBHOOK_TIMEOUT_SECONDS = 10.0


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def owner_id() -> str:
    """Identifies this process in poll leases: host, pid and a per-start nonce."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def http_settings(settings: Settings) -> HttpSettings:
    fetch = settings.fetch
    return HttpSettings(
        user_agent=fetch.user_agent,
        connect_timeout=fetch.connect_timeout_seconds,
        read_timeout=fetch.read_timeout_seconds,
        deadline=fetch.deadline_seconds,
        max_body_bytes=fetch.max_body_bytes,
        max_attempts=fetch.max_attempts,
        backoff_base=fetch.backoff_base_seconds,
        backoff_max=fetch.backoff_max_seconds,
        retry_after_max=fetch.retry_after_max_seconds,
        max_host_wait=fetch.max_host_wait_seconds,
        requests_per_minute=fetch.requests_per_minute,
    )


def service_repository(
    settings: Settings, database: Database, *, clock: Clock = utc_now
) -> Repository:
    """The repository of the service and its commands, evaluating the configured rules.
    `clock`, here and below: the time every collaborator reads (the demo's is simulated)."""
    return Repository(database, alerts=settings.alerts.policy(settings.watched_apps()), clock=clock)


@contextlib.asynccontextmanager
async def alert_delivery(
    settings: Settings,
    repository: Repository,
    metrics: ServiceMetrics,
    *,
    clock: Clock = utc_now,
    mail: MailSender | None = None,
) -> AsyncIterator[OutboxSender]:
    """The outbox sender with its email and webhook channels, closed on exit; emails go to
    `mail` (default: the [smtp] server)."""
    async with httpx.AsyncClient(
        timeout=WEBHOOK_TIMEOUT_SECONDS, headers={"User-Agent": settings.fetch.user_agent}
    ) as client:
        yield OutboxSender(
            repository,
            {
                Channel.EMAIL: EmailChannel(
                    mail if mail is not None else SmtpSender(settings.smtp),
                    from_address=settings.smtp.from_address,
                    grafana_url=settings.http.grafana_url,
                ),
                Channel.WEBHOOK: WebhookChannel(
                    client,
                    external_url=settings.http.grafana_url
                    or f"http://{settings.http.host}:{settings.http.port}/",
                ),
            },
            owner=owner_id(),
            domain=settings.smtp.message_id_domain,
            clock=clock,
            metrics=metrics,
        )


def service_metrics(
    settings: Settings, repository: Repository, *, clock: Clock = utc_now
) -> ServiceMetrics:
    # A `_created` series beside every counter and histogram doubles the series Prometheus
    # stores for a timestamp nothing here reads.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    return ServiceMetrics(
        poll_interval=settings.poll.interval,
        read_state=lambda now: repository.service_state(now=now),
        app_labels=watchlist_names(settings.watched_apps()),
        clock=clock,
    )


@contextlib.asynccontextmanager
async def polling(
    settings: Settings,
    repository: Repository,
    *,
    metrics: ServiceMetrics,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Clock = utc_now,
) -> AsyncIterator[PollRounds]:
    """Everything a poll round needs, closed on exit."""
    async with FeedClient(http_settings(settings), transport=transport) as client:
        poller = Poller(
            client=client,
            repository=repository,
            endpoints=FeedEndpoints(
                itunes_base_url=settings.itunes.base_url,
                apple_rss_base_url=settings.apple_rss.base_url,
            ),
            settings=PollSettings(
                depth=settings.poll.depth,
                prefer_v2=settings.poll.prefer_v2,
                interval=settings.poll.interval,
                failure_retry=min(FAILURE_RETRY, settings.poll.interval),
                lease=settings.poll.lease,
            ),
            clock=clock,
            metrics=metrics,
        )
        yield PollRounds(
            repository=repository,
            poller=poller,
            owner=owner_id(),
            concurrency=settings.fetch.concurrency,
            lease=settings.poll.lease,
            clock=clock,
            metrics=metrics,
        )
