"""A heartbeat on the event loop: how long was the loop unable to run anything?"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Self


class Heartbeat:
    """A ticker task on the running loop; ``max_gap`` is the longest time between two ticks
    (or since the last one, so that a loop still blocked when we look counts too)."""

    def __init__(self, period: float = 0.02):
        self.period = period
        self.last = self.longest = 0.0
        self.ticks = 0
        self.task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            now = time.monotonic()
            self.longest = max(self.longest, now - self.last)
            self.last = now
            self.ticks += 1

    def reset(self) -> None:
        self.last, self.longest, self.ticks = time.monotonic(), 0.0, 0

    @property
    def max_gap(self) -> float:
        return max(self.longest, time.monotonic() - self.last)

    async def __aenter__(self) -> Self:
        self.reset()
        self.task = asyncio.get_running_loop().create_task(self._beat())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self.task is not None
        self.task.cancel()
