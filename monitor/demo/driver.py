"""The demo's run: the service's own polling, alerting and HTTP surface on a recorded
scenario, in simulated time, against a local feed server.

Why a driver and not the service's scheduler: `run` ticks with APScheduler on the wall clock,
and its leases, retry times, `group_wait` and the schedule's `next_due_at` are all read from
the one clock its collaborators share. The demo gives them a simulated clock instead
(`SimulatedClock`) and moves it itself, from one moment that matters to the next, in order:
each poll step of the scenario (its time step becomes the poll interval) and `group_wait`
after each, when that round's news is due to go out. At every moment it does what one tick of
the service does (a poll round of whatever is due, through PollRounds, the Poller, the
Repository with the configured alert rules, then the outbox sender), with the clock standing
still meanwhile, so a lease or a retry behaves in simulated time exactly as it would in real
time, and a slow machine cannot make a lease expire mid-poll. Between moments it sleeps until
the wall clock catches up with `speed` simulated hours per second (or not at all when it is
behind); the feed server, the status page and /metrics answer meanwhile from the same event
loop. A tick of a wall-clock scheduler would instead poll at arbitrary simulated times, and
pacing sleeps would be read as lease time.

The feed server serves each chart's payload recorded last at or before the simulated time
(monitor.demo.feeds), so a chart recorded less often than the step is confirmed unchanged in
between, as a live feed would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import itertools
import logging
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from monitor.alerts.email import MailFileSender
from monitor.alerts.sender import OutboxSender
from monitor.config import Settings
from monitor.config_sections import AppleRssSettings, DatabaseSettings, ItunesSettings
from monitor.demo.feeds import RecordedFeeds
from monitor.demo.summary import DemoSummary, alert_counts, number_ones
from monitor.errors import MonitorError
from monitor.model import watchlist_names
from monitor.replay import RecordedPayload
from monitor.rounds import PollRounds
from monitor.store.engine import open_database
from monitor.store.migrate import upgrade
from monitor.store.repository import Repository
from monitor.web import Readiness
from monitor.wiring import alert_delivery, polling, service_metrics, service_repository
from monitor.worker import (
    READINESS_TIMEOUT_SECONDS,
    DatabaseProbe,
    bind_listener,
    service_app,
    serving_http,
)

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# Who gets the alerts when [alerts] recipients names nobody: the demo is about its emails.
DEMO_RECIPIENT = "demo@localhost"


class SimulatedClock:
    """The time every collaborator reads; it moves only when the driver moves it."""

    def __init__(self, at: dt.datetime) -> None:
        self._at = at

    def __call__(self) -> dt.datetime:
        return self._at

    def move_to(self, at: dt.datetime) -> None:
        if at < self._at:
            raise ValueError(f"simulated time cannot go back from {self._at} to {at}")
        self._at = at


@dataclasses.dataclass(frozen=True)
class DemoPlan:
    """Poll steps from `start` every `step` up to `last_poll`; news goes out `group_wait`
    after each."""

    start: dt.datetime
    step: dt.timedelta
    last_poll: dt.datetime
    group_wait: dt.timedelta

    @classmethod
    def of(
        cls,
        recorded: Sequence[dt.datetime],
        *,
        until: dt.datetime | None,
        group_wait: dt.timedelta,
    ) -> DemoPlan:
        """The plan for payloads recorded at `recorded` (sorted): stepping by the smallest
        time between two of them (one hour for a single moment), up to `until` if earlier
        than the last."""
        gaps = [later - earlier for earlier, later in itertools.pairwise(recorded)]
        step = min((gap for gap in gaps if gap), default=dt.timedelta(hours=1))
        last = recorded[-1] if until is None else max(recorded[0], min(until, recorded[-1]))
        return cls(recorded[0], step, last, group_wait)

    def moments(self) -> list[dt.datetime]:
        polls = [self.start]
        while polls[-1] + self.step <= self.last_poll:
            polls.append(polls[-1] + self.step)
        return sorted({*polls, *(at + self.group_wait for at in polls)})


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    database_file: Path
    mail_dir: Path | None  # None: through the [smtp] server
    speed: float  # simulated hours per second
    until: dt.datetime | None
    port: int | None  # None: [http] port when free, else any free one
    serve: bool  # keep serving after the replay, until SIGINT/SIGTERM


@dataclasses.dataclass(frozen=True)
class DemoPlaces:
    """Where to look while the demo runs."""

    status_page: str
    feeds: str
    plan: DemoPlan


@dataclasses.dataclass
class _Counts:
    polls: int = 0
    failed: int = 0
    emails: int = 0


def demo_settings(
    settings: Settings, options: DemoOptions, *, feed_url: str, port: int, step: dt.timedelta
) -> Settings:
    """`settings` pointed at the demo's database, feed server and listener: polled every
    `step`, with no request budget (the feeds are local), no webhooks (the news is two
    years old), and someone to email."""
    alerts = settings.alerts
    return settings.model_copy(
        update={
            "database": DatabaseSettings(url=f"sqlite:///{options.database_file}"),
            "itunes": ItunesSettings(base_url=feed_url),
            "apple_rss": AppleRssSettings(base_url=feed_url),
            "fetch": settings.fetch.model_copy(update={"requests_per_minute": 0.0}),
            "poll": settings.poll.model_copy(update={"interval": step}),
            "http": settings.http.model_copy(update={"host": LOOPBACK, "port": port}),
            "alerts": alerts.model_copy(
                update={"recipients": alerts.recipients or [DEMO_RECIPIENT], "webhooks": []}
            ),
        }
    )


def status_listener(settings: Settings, port: int | None) -> socket.socket:
    """On `port`; else [http] port, or any free port when that one is taken."""
    if port is not None:
        return bind_listener(LOOPBACK, port)
    try:
        return bind_listener(LOOPBACK, settings.http.port)
    except MonitorError:
        return bind_listener(LOOPBACK, 0)


async def run_demo(
    settings: Settings,
    payloads: Sequence[RecordedPayload],
    options: DemoOptions,
    *,
    stop: asyncio.Event,
    started: Callable[[DemoPlaces], None],
    replayed: Callable[[DemoSummary], None],
) -> DemoSummary:
    """Replay `payloads` through the service; `started` is told where to look once it
    serves, `replayed` the summary once the replay ended (or `stop` was set), before it
    serves on with `options.serve` until `stop` is set."""
    feeds = RecordedFeeds(
        payloads, depth=settings.poll.depth, max_body_bytes=settings.fetch.max_body_bytes
    )
    plan = DemoPlan.of(
        [at for at, _ in feeds.moments()],
        until=options.until,
        group_wait=settings.alerts.group_wait,
    )
    clock = SimulatedClock(plan.start)
    charts = sorted({payload.chart for payload in payloads})
    with (
        contextlib.closing(bind_listener(LOOPBACK, 0)) as feed_listener,
        contextlib.closing(status_listener(settings, options.port)) as web_listener,
    ):
        feed_url = "http://{}:{}".format(*feed_listener.getsockname()[:2])
        port = web_listener.getsockname()[1]
        settings = demo_settings(settings, options, feed_url=feed_url, port=port, step=plan.step)
        with open_database(settings.database.url, writer=True) as database:
            upgrade(database)
            repository = service_repository(settings, database, clock=clock)
            repository.sync_charts(charts, now=plan.start)
            repository.sync_watchlist(settings.watched_apps())
            metrics = service_metrics(settings, repository, clock=clock)
            probe = DatabaseProbe(repository, READINESS_TIMEOUT_SECONDS)

            async def readiness() -> Readiness:
                return Readiness({"database": await probe.check()})

            app = service_app(settings, repository, metrics, readiness=readiness, clock=clock)
            mail = MailFileSender(options.mail_dir) if options.mail_dir is not None else None
            async with (
                serving_http(feeds.app(), feed_listener, on_exit=stop.set),
                serving_http(app, web_listener, on_exit=stop.set),
                polling(settings, repository, metrics=metrics, clock=clock) as rounds,
                alert_delivery(settings, repository, metrics, clock=clock, mail=mail) as sender,
            ):
                started(DemoPlaces(f"http://{LOOPBACK}:{port}/", feed_url, plan))
                counts = await _drive(
                    plan,
                    speed=options.speed,
                    clock=clock,
                    feeds=feeds,
                    rounds=rounds,
                    sender=sender,
                    stop=stop,
                )
                summary = await asyncio.to_thread(
                    _summarize, settings, repository, plan, clock, counts
                )
                replayed(summary)
                if options.serve:
                    await stop.wait()
    return summary


async def _drive(
    plan: DemoPlan,
    *,
    speed: float,
    clock: SimulatedClock,
    feeds: RecordedFeeds,
    rounds: PollRounds,
    sender: OutboxSender,
    stop: asyncio.Event,
) -> _Counts:
    counts = _Counts()
    began = time.monotonic()
    for moment in plan.moments():
        due_in = (moment - plan.start).total_seconds() / 3600 / speed - (time.monotonic() - began)
        if due_in > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(due_in):
                    await stop.wait()
        if stop.is_set():
            break
        clock.move_to(moment)
        feeds.now = moment
        summary = await rounds.run_round()
        polled = len(summary.results) + summary.errors
        sent = await sender.send_due()
        counts.polls += polled
        counts.failed += summary.failed
        counts.emails += sent
        if polled or sent:
            log.info(
                "simulated %s: %d charts polled, %d changed, %d failed; %d emails",
                f"{moment:%Y-%m-%d %H:%M} UTC",
                polled,
                summary.changed,
                summary.failed,
                sent,
                extra={"simulated_time": moment.isoformat()},
            )
    return counts


def _summarize(
    settings: Settings,
    repository: Repository,
    plan: DemoPlan,
    clock: SimulatedClock,
    counts: _Counts,
) -> DemoSummary:
    app_names = watchlist_names(settings.watched_apps())
    by_rule, resolved = alert_counts(repository, app_names)
    return DemoSummary(
        first=plan.start,
        last=clock(),
        complete=clock() == plan.moments()[-1],
        polls=counts.polls,
        failed_polls=counts.failed,
        snapshots=repository.count_snapshots(since=None, until=None),
        alerts_by_rule=by_rule,
        resolved=resolved,
        emails=counts.emails,
        pending=repository.service_state(now=clock()).outbox.pending,
        number_ones=tuple(number_ones(repository, app_names)),
    )
