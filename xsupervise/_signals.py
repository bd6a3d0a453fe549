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
    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pending: list[int] = []
        self._previous_wakeup = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._previous = {signum: signal.signal(signum, self._handle) for signum in HANDLED}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
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
