"""The outbox sender: claims due messages, delivers them on their channel, records the outcome.

Delivery is at least once: a message whose outcome could not be recorded (a crash after the
server took it) goes out again under the same Message-ID once its claim expires. Transient
failures retry with full-jitter exponential backoff until the oldest notification in the
message is `give_up_after` old; permanent ones are dead-lettered at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import random
from collections.abc import Callable, Mapping

from monitor.alerts.channels import Channel, shown_recipient
from monitor.alerts.model import (
    AlertEvent,
    AppNews,
    EventState,
    Notification,
    RuleKind,
    Severity,
)
from monitor.crash_points import CrashPoint, crash_point
from monitor.errors import DeliveryError
from monitor.metrics import ServiceMetrics
from monitor.store.outbox import OutboxItem, OutboxMessage
from monitor.store.repository import Repository

log = logging.getLogger(__name__)

_SEVERITY_ORDER = {Severity.CRITICAL: 0, Severity.WARNING: 1, Severity.INFO: 2}
# Among news of equal severity and age: a new #1 says more than a big move.
_KIND_ORDER = {
    RuleKind.ENTERED_TOP: 0,
    RuleKind.LEFT_TOP: 0,
    RuleKind.RIVAL_PASSED: 1,
    RuleKind.BREADTH: 2,
    RuleKind.DROPPED_OUT: 3,
    RuleKind.MOVED: 4,
}


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    base: dt.timedelta = dt.timedelta(seconds=30)
    cap: dt.timedelta = dt.timedelta(hours=1)
    give_up_after: dt.timedelta = dt.timedelta(hours=24)

    def delay(self, attempt: int, draw: Callable[[], float]) -> dt.timedelta:
        """Full jitter: uniform between 0 and the capped exponential step of `attempt`."""
        step: dt.timedelta = min(self.cap, self.base * 2 ** min(attempt - 1, 30))
        return step * draw()


class OutboxSender:
    def __init__(
        self,
        repository: Repository,
        channels: Mapping[str, Channel],
        *,
        owner: str,
        domain: str,
        clock: Callable[[], dt.datetime],
        metrics: ServiceMetrics,
        retry: RetryPolicy = RetryPolicy(),
        lease: dt.timedelta = dt.timedelta(minutes=5),
        picture_window: dt.timedelta = dt.timedelta(days=7),
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._repository = repository
        self._channels = channels
        self._owner = owner
        self._domain = domain
        self._clock = clock
        self._metrics = metrics
        self._retry = retry
        self._lease = lease
        self._picture_window = picture_window
        self._draw = draw
        self._stopping = False
        self._idle = asyncio.Event()  # no send_due() running
        self._idle.set()

    async def send_due(self) -> int:
        """Deliver every message due now, one after the other; returns how many went out."""
        sent = 0
        if self._stopping:
            return sent
        self._idle.clear()
        try:
            while not self._stopping and (
                message := await asyncio.to_thread(
                    self._repository.claim_message,
                    owner=self._owner,
                    now=self._clock(),
                    lease=self._lease,
                    domain=self._domain,
                )
            ):
                if await self._deliver(message):
                    sent += 1
        finally:
            self._idle.set()
        return sent

    async def stop(self, grace: float) -> None:
        """Claim no more messages; give the one being delivered `grace` seconds to go out and
        be recorded. Cut short, it was perhaps delivered but is not recorded: it goes out
        again (same Message-ID) once its claim expires, as after a crash."""
        self._stopping = True
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
        except TimeoutError:
            log.warning(
                "a message was still being delivered after %gs; it will be sent again once "
                "its claim expires",
                grace,
            )

    async def _deliver(self, message: OutboxMessage) -> bool:
        """Deliver one message and record the outcome; True when it went out."""
        channel = self._channels.get(message.channel)
        error: DeliveryError | None = None
        try:
            if channel is None:
                raise DeliveryError(f"no {message.channel} channel is configured", permanent=True)
            notification = await asyncio.to_thread(self._notification, message)
            await channel.deliver(notification)
            crash_point(CrashPoint.MESSAGE_ACCEPTED)
        except DeliveryError as exc:
            error = exc
        now = self._clock()
        outcome, retry_at = "sent", None
        if error is not None:
            too_old = now - message.first_queued_at >= self._retry.give_up_after
            if error.permanent or too_old:
                outcome = "dead_lettered"
            else:
                outcome = "retrying"
                retry_at = now + self._retry.delay(message.attempt, self._draw)
            log.warning(
                "%s to %s (%s, attempt %d): %s; %s",
                message.channel,
                shown_recipient(message.channel, message.recipient),
                message.message_id,
                message.attempt,
                error,
                f"retrying at {retry_at:%H:%M:%S}" if retry_at else "given up",
                extra={"channel": message.channel, "outcome": outcome},
            )
        await asyncio.to_thread(
            self._repository.finish_message,
            message,
            outcome=outcome,
            now=now,
            error=None if error is None else str(error),
            retry_at=retry_at,
        )
        self._metrics.notified(message.channel, outcome)
        return outcome == "sent"

    def _notification(self, message: OutboxMessage) -> Notification:
        """The message's events by app, most important first, with each app's rank series
        on the charts of its events (blocking: reads the history)."""
        now = self._clock()
        by_app: dict[int, list[OutboxItem]] = {}
        for item in message.items:
            by_app.setdefault(item.app_id, []).append(item)
        news = []
        for app_id, items in by_app.items():
            events = sorted((item.event for item in items), key=_importance)
            charts = {event.chart for event in events if event.chart is not None}
            series = self._repository.rank_series(
                app_id, charts, since=now - self._picture_window, until=now
            )
            news.append(AppNews(events[0].app, tuple(events), tuple(series)))
        news.sort(key=lambda app: _importance(app.events[0]))
        return Notification(
            recipient=message.recipient,
            message_id=message.message_id,
            created_at=now,
            news=tuple(news),
        )


def _importance(event: AlertEvent) -> tuple[int, int, float, int, int]:
    """Sort key, most important first: severity, firing before resolved, the latest news,
    the kind of news, the smaller top."""
    return (
        _SEVERITY_ORDER[event.severity],
        0 if event.state is EventState.FIRING else 1,
        -event.at.timestamp(),
        _KIND_ORDER[event.kind],
        int(event.facts.get("top", 0)),
    )
