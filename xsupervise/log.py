"""The "xsupervise" logger, imported and configured on first use.

Importing logging costs the CLI milliseconds before it can spawn the X server; so modules
call ``log.get()`` when they have something to say, and the CLI registers its configuration
(handler, format, level) with ``configure_on_first_use``. The launch path also calls
``get()`` while the server initialises, where the cost is hidden.
"""

from __future__ import annotations

from collections.abc import Callable

NAME = "xsupervise"
_pending_configuration: Callable | None = None


def configure_on_first_use(configure: Callable) -> None:
    """``configure(logging)`` runs once, right before the logger is first used."""
    global _pending_configuration
    _pending_configuration = configure


def get():
    global _pending_configuration
    import logging

    if _pending_configuration is not None:
        configure, _pending_configuration = _pending_configuration, None
        configure(logging)
    return logging.getLogger(NAME)
