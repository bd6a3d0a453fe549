"""Turn SIGTERM/SIGINT/SIGHUP into events that a poll loop waits on.

Handlers only queue the signal; the wakeup fd becomes readable. Nothing is raised from a
handler, so there is no window in which a signal can skip a cleanup: the driver's event
handler raises *inside* the steps (process.run_blocking), which stop the server before the
exception propagates.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class SignalInbox:
    """The stop signals we got, through a pipe that wakes a poll loop. ``exit_with_parent``:
    a SIGTERM after the first is dropped. The kernel sends PR_SET_PDEATHSIG again each time
    we are handed from one exiting thread of our dying parent to the next (a multi-threaded
    parent such as Jupyter or pytest-xdist, SIGKILLed), still under the same parent pid:
    that is the same news again, not a second request that would cut the grace short.
    SIGINT still hurries a stop."""

    def __init__(self, exit_with_parent: bool = False) -> None:
        self.read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pending: list[int] = []
        self._once = {signal.SIGTERM} if exit_with_parent else set()  # counted once
        self._seen: set[int] = set()
        self._previous_wakeup = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._previous = {signum: signal.signal(signum, self._handle) for signum in HANDLED}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if signum in self._once:
            if signum in self._seen:
                return
            self._seen.add(signum)
        self._pending.append(signum)

    def drain(self) -> list[int]:
        """Signals received since the last call, oldest first."""
        try:
            while os.read(self.read_fd, 512):
                pass
        except BlockingIOError:
            pass
        pending, self._pending = self._pending, []
        return pending

    def close(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_wakeup)
        os.close(self.read_fd)
        os.close(self._write_fd)

    def __enter__(self) -> SignalInbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
