"""What we tell the world: log lines (on stderr, or the journal under systemd) and the
service manager (sd_notify), and the one check that systemd-python is there when systemd
talks to us.

The "xsupervise" logger is imported and configured on first use. Importing logging costs the
CLI milliseconds before it can spawn the X server; so modules call ``log.get()`` when they
have something to say, and the CLI registers its configuration (handler, format, level) with
``configure_on_first_use``. The launch path also calls
``get()`` while the server initialises, where the cost is hidden.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from types import ModuleType

from .errors import EnvironmentProblem

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    import logging
    from typing import TextIO

NAME = "xsupervise"
_pending_configuration: Callable[[ModuleType], None] | None = None


def configure_on_first_use(configure: Callable[[ModuleType], None]) -> None:
    """``configure(logging)`` runs once, right before the logger is first used."""
    global _pending_configuration
    _pending_configuration = configure


def get() -> logging.Logger:
    global _pending_configuration
    import logging

    if _pending_configuration is not None:
        configure, _pending_configuration = _pending_configuration, None
        configure(logging)
    return logging.getLogger(NAME)


def journal_is_stderr(
    environ: Mapping[str, str] | None = None, stderr: TextIO | None = None
) -> bool:
    """True when our stderr is the journal stream systemd gave us (JOURNAL_STREAM=dev:inode),
    not a pipe or terminal it was redirected to since (systemd.exec(5))."""
    import os

    environ = os.environ if environ is None else environ
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        info = os.fstat(stderr.fileno() if stderr is not None else 2)
    except (AttributeError, ValueError, OSError):  # e.g. replaced by an in-memory stream
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def handler_for(
    logging_module: ModuleType,
    environ: Mapping[str, str] | None = None,
    stderr: TextIO | None = None,
) -> logging.Handler:
    """Under systemd: a JournalHandler, which sends a record's upper-case ``extra`` fields
    (SESSION, DISPLAY, SERVER_PID, STATE) as journal fields. Otherwise (or without
    systemd-python): one plain line per message on stderr, 'xsupervise: ...'."""
    import sys

    stderr = stderr or sys.stderr
    if journal_is_stderr(environ, stderr):
        try:
            from systemd.journal import JournalHandler
        except ImportError:
            # systemd-python is an extra. Where it is needed, host.log says so in one line
            # (exit 5), logged here: that line reaches the journal as plain stderr.
            pass
        else:
            journal: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER=NAME)
            return journal
    handler: logging.Handler = logging_module.StreamHandler(stderr)
    handler.setFormatter(logging_module.Formatter("xsupervise: %(message)s"))
    return handler


def report(error: BaseException) -> None:
    """The line a command ends with, through our handler: under systemd, a journal entry at
    PRIORITY warning for a failed start (StartError), err for anything else (FAILED, a give-up),
    with the session's fields when the error carries them (``attach_fields``); otherwise
    'xsupervise: ...' on stderr, as before. Never prefixed twice."""
    from .errors import StartError

    level = "warning" if isinstance(error, StartError) else "error"
    fields = getattr(error, "log_fields", None) or {}
    getattr(get(), level)("%s", str(error), extra=fields)


def attach_fields(error: BaseException, fields: Mapping[str, object]) -> None:
    """Let ``report`` send a session's journal fields (SESSION, DISPLAY...) with ``error``."""
    if not getattr(error, "log_fields", None):
        setattr(error, "log_fields", dict(fields))  # noqa: B010 - exceptions take attributes


def setup(level_name: str) -> None:
    """Configure our logger on first use: the right handler, the given level."""

    def configure(logging_module: ModuleType) -> None:
        logger = logging_module.getLogger(NAME)
        logger.handlers[:] = [handler_for(logging_module)]
        logger.setLevel(getattr(logging_module, level_name))
        logger.propagate = False

    configure_on_first_use(configure)


# --- systemd-python, where systemd talks to us ---------------------------------------------------
# systemd-python is an extra (``xsupervise[systemd]``): it needs a C compiler to install.
#
# Without it everything works except talking to systemd, so where systemd is evidently talking
# to us (NOTIFY_SOCKET, LISTEN_FDS, or stderr is the journal stream) a missing module is an
# error at once, never a silent degradation (a Type=notify unit would time out; a socket
# would go unanswered; log fields would be lost).

INSTALL_HINT = "pip install 'xsupervise[systemd]' (Debian: apt-get install python3-systemd)"


def what_systemd_expects(environ: Mapping[str, str]) -> str | None:
    """Which sign of systemd we see, or None."""
    if environ.get("NOTIFY_SOCKET"):
        return "NOTIFY_SOCKET is set"
    # LISTEN_FDS is ours only when LISTEN_PID names us (sd_listen_fds(3)): a socket-activated
    # parent's variables may be inherited by anything it runs.
    if environ.get("LISTEN_FDS") and environ.get("LISTEN_PID") == str(os.getpid()):
        return "LISTEN_FDS is set for us"

    if journal_is_stderr(environ):
        return "stderr is the journal (JOURNAL_STREAM)"
    return None


def require_systemd_python(environ: Mapping[str, str] = os.environ) -> None:
    """Raise EnvironmentProblem (exit 5) if systemd talks to us and systemd-python is absent."""
    sign = what_systemd_expects(environ)
    if sign is None:
        return
    try:
        import systemd.daemon
        import systemd.journal  # noqa: F401
    except ImportError:
        raise EnvironmentProblem(
            f"running under systemd ({sign}) but the systemd-python module is not installed, "
            f"so we could not notify, take its socket or log to the journal; install it: "
            f"{INSTALL_HINT}."
        ) from None


# --- sd_notify -----------------------------------------------------------------------------------
# Readiness and health for systemd (sd_notify), sent only when NOTIFY_SOCKET is set.
#
# Through systemd-python's ``systemd.daemon.notify``. The watchdog interval is half of
# WATCHDOG_USEC (and only when WATCHDOG_PID, if set, is us), as sd_watchdog_enabled(3) says.
# Children never inherit these variables (see ``child_environment``): a COMMAND of ours must
# not be able to speak for us.

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
