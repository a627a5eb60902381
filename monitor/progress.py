"""Progress lines for long work (backfill, rebuild, a first full poll), through logging.

Going through logging rather than a terminal bar keeps the lines in service logs and in JSON
log mode; they are rate-limited so a million-step job still prints a handful of lines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class Progress:
    """A `(done, total)` callback that logs at most every `every_seconds`, and at the end."""

    def __init__(
        self,
        label: str,
        logger: logging.Logger,
        *,
        every_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._label = label
        self._logger = logger
        self._every = every_seconds
        self._clock = clock
        self._started = clock()
        self._last_logged: float | None = None

    def __call__(self, done: int, total: int) -> None:
        now = self._clock()
        finished = done >= total
        if not finished and self._last_logged is not None and now - self._last_logged < self._every:
            return
        if self._last_logged is None and not finished and now - self._started < self._every:
            return
        self._last_logged = now
        percent = 100.0 * done / total if total else 100.0
        self._logger.info(
            "%s: %d/%d (%.0f%%) after %.1fs",
            self._label,
            done,
            total,
            percent,
            now - self._started,
            extra={"progress": self._label, "done": done, "total": total},
        )
