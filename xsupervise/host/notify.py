"""Readiness and health for systemd (sd_notify), sent only when NOTIFY_SOCKET is set.

Through systemd-python's ``systemd.daemon.notify``. The watchdog interval is half of
WATCHDOG_USEC (and only when WATCHDOG_PID, if set, is us), as sd_watchdog_enabled(3) says.
Children never inherit these variables (see ``child_environment``): a COMMAND of ours must
not be able to speak for us.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

# Variables systemd gives the service process itself, and no child of it.
SERVICE_ONLY_VARIABLES = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
)


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment minus the service-only variables, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if key not in SERVICE_ONLY_VARIABLES}
    env.update(extra or {})
    return env


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between WATCHDOG=1 pings (half the timeout), or None when not asked for."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    owner = environ.get("WATCHDOG_PID")
    if usec <= 0 or (owner and owner != str(os.getpid())):
        return None
    return usec / 2e6


class Notifier:
    """Talks to the service manager; every method does nothing when not run by one."""

    def __init__(self, environ: Mapping[str, str] = os.environ):
        self.enabled = bool(environ.get("NOTIFY_SOCKET"))
        self.interval = watchdog_interval(environ) if self.enabled else None
        self.next_ping: float | None = time.monotonic() if self.interval else None
        self._last_status: str | None = None

    def _send(self, *fields: str) -> None:
        if self.enabled:
            from systemd.daemon import notify

            notify("\n".join(fields))

    def ready(self, status: str) -> None:
        self._last_status = status
        self._send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        if status != self._last_status:
            self._last_status = status
            self._send(f"STATUS={status}")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match the reload; older ones
        # ignore it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str = "stopping") -> None:
        self._send("STOPPING=1", f"STATUS={status}")

    def ping_due(self) -> bool:
        return self.next_ping is not None and time.monotonic() >= self.next_ping

    def ping(self) -> None:
        """WATCHDOG=1, and when the next one is due."""
        if self.interval is None:
            return
        self._send("WATCHDOG=1")
        self.next_ping = time.monotonic() + self.interval
