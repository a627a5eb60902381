"""A blocking call run in a worker thread at most once at a time, its result shared."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Callers arriving while the call runs wait for that run instead of starting another.

    A hung database thus ties up one worker thread, not one per HTTP request: the poll path
    needs the others. A caller that gives up (timeout, disconnect) does not cancel the run.
    """

    def __init__(self, call: Callable[[], T]) -> None:
        self._call = call
        self._pending: asyncio.Future[T] | None = None

    async def __call__(self) -> T:
        """The result of the current run, or of a new one."""
        pending = self._pending
        if pending is None or pending.done():
            pending = self._pending = asyncio.ensure_future(asyncio.to_thread(self._call))
            # Retrieved here too, for the case where every waiter gave up before the end.
            pending.add_done_callback(lambda f: f.cancelled() or f.exception())
        return await asyncio.shield(pending)
