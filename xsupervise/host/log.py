"""The "xsupervise" logger, imported and configured on first use.

Importing logging costs the CLI milliseconds before it can spawn the X server; so modules
call ``log.get()`` when they have something to say, and the CLI registers its configuration
(handler, format, level) with ``configure_on_first_use``. The launch path also calls
``get()`` while the server initialises, where the cost is hidden.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import ModuleType

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    import logging
    from typing import TextIO

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs the CLI time
if TYPE_CHECKING:
    import logging

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
            # systemd-python is an extra. Where it is needed, host.systemd says so in one line
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
