"""Named crash points, so fault-injection tests can kill the service at an exact step.

`MONITOR_TEST_CRASH_AT=<point>` makes the process end at once, the first time it reaches that
step; `<point>:<n>` the n-th time. It ends with `os._exit`: no `finally`, no commit, no lease
released, no buffer flushed, as after `kill -9`. The exit status is CRASH_EXIT_STATUS, so a test
can tell the planned crash from an accident. Unset (always, outside tests), a crash point costs
one comparison.
"""

from __future__ import annotations

import enum
import os
import sys
import threading

CRASH_AT_ENV = "MONITOR_TEST_CRASH_AT"
CRASH_EXIT_STATUS = 86


class CrashPoint(enum.StrEnum):
    # Inside the snapshot's transaction: the snapshot row is written, nothing is committed.
    SNAPSHOT_INSERTED = "after-snapshot-insert"
    # The snapshot's transaction (with its alert events and outbox rows) has committed; the
    # process has not yet logged or counted it.
    SNAPSHOT_COMMITTED = "after-snapshot-commit"
    # The mail server accepted a message (its 250 to DATA; for a webhook, its 2xx); the
    # outbox has not recorded it.
    MESSAGE_ACCEPTED = "after-smtp-250"


class _Armed:
    def __init__(self, spec: str | None) -> None:
        self._lock = threading.Lock()
        self.point: CrashPoint | None = None
        self._left = 0
        if not spec:
            return
        name, _, count = spec.partition(":")
        try:
            self.point = CrashPoint(name)
            self._left = int(count) if count else 1
        except ValueError:
            known = ", ".join(point.value for point in CrashPoint)
            raise ValueError(
                f"{CRASH_AT_ENV}={spec!r}: expected <point> or <point>:<n>, points: {known}"
            ) from None

    def reached(self, point: CrashPoint) -> None:
        with self._lock:
            self._left -= 1
            if self._left > 0:
                return
        print(f"crash point {point.value} reached: exiting", file=sys.stderr, flush=True)
        os._exit(CRASH_EXIT_STATUS)


_ARMED = _Armed(os.environ.get(CRASH_AT_ENV))


def crash_point(point: CrashPoint) -> None:
    """End the process here if a test armed this point (see the module docstring)."""
    if _ARMED.point is point:
        _ARMED.reached(point)
