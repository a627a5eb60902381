"""Per-host pacing shared by every fetch: an even request budget and Retry-After blocks.

A request start reserves the next free slot on its host (at least 60/rpm seconds after the
previous reservation) before it sleeps, so concurrent fetches queue up in arrival order and
never burst when a slot frees. Reserving never awaits, which makes it atomic on the event
loop: a lock would add nothing, and holding one across the sleep would serialise waits that
are already ordered. One budget belongs to one event loop; it is not thread-safe.

`parse_retry_after` reads what a Retry-After asks for; the client clamps it and calls `block`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import math
import re
from collections.abc import Awaitable, Callable

from monitor.errors import HostBackoff

_DELTA_SECONDS = re.compile(r"\d+(?:\.\d+)?")


@dataclasses.dataclass
class _HostState:
    next_start: float = -math.inf
    blocked_until: float = -math.inf


class HostBudget:
    """Decides when a request to a host may start, or that it should not wait at all.

    `requests_per_minute` of 0 disables the spacing; Retry-After blocks apply regardless.
    A wait longer than `max_wait` raises HostBackoff at once, so a caller with other work
    (the scheduler) can defer instead of holding a task asleep for minutes.
    """

    def __init__(
        self,
        *,
        requests_per_minute: float,
        max_wait: float,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self._interval = 60.0 / requests_per_minute if requests_per_minute > 0 else 0.0
        self._max_wait = max_wait
        self._clock = clock
        self._sleep = sleep
        self._hosts: dict[str, _HostState] = {}

    def block(self, host: str, seconds: float) -> None:
        """No request to `host` starts within `seconds` from now (a longer block stays)."""
        state = self._state(host)
        state.blocked_until = max(state.blocked_until, self._clock() + seconds)

    async def acquire(self, host: str, *, url: str, delay: float = 0.0) -> None:
        """Wait until a request to `host` may start, at least `delay` seconds from now.

        Raises HostBackoff, without sleeping, when that would take longer than `max_wait`.
        """
        state = self._state(host)
        if delay > 0:
            # Checked before the delay too: sleeping through a backoff only to learn that the
            # host is blocked for ten minutes would hold the caller for nothing.
            now = self._clock()
            self._refuse_if_too_long(host, url, max(now + delay, state.blocked_until) - now)
            await self._sleep(delay)
        while True:
            now = self._clock()
            start = max(now, state.blocked_until, state.next_start)
            self._refuse_if_too_long(host, url, start - now)
            if self._interval:
                state.next_start = start + self._interval
            if start <= now:
                return
            await self._sleep(start - now)
            # A Retry-After may have arrived while this request slept on an earlier slot.
            if state.blocked_until <= self._clock():
                return

    def _refuse_if_too_long(self, host: str, url: str, wait: float) -> None:
        if wait > self._max_wait:
            raise HostBackoff(
                f"{url}: host {host} cannot take a request for {wait:.1f}s "
                f"(longer than the {self._max_wait:g}s a fetch may wait)",
                url=url,
                retry_after_seconds=wait,
            )

    def _state(self, host: str) -> _HostState:
        return self._hosts.setdefault(host.lower(), _HostState())


def parse_retry_after(
    value: str | None, *, server_date: str | None = None, now: dt.datetime | None = None
) -> float | None:
    """Seconds a Retry-After asks for, unclamped (may be negative); None if absent or invalid.

    An HTTP-date is measured from the response's own Date header when it has one, which makes
    the wait immune to skew between our clock and the server's.
    """
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    until = _http_date(value)
    if until is None:
        return None
    reference = _http_date(server_date) or now or dt.datetime.now(dt.UTC)
    return (until - reference).total_seconds()


def _http_date(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
