"""systemd-python is an extra (``xsupervise[systemd]``): it needs a C compiler to install.

Without it everything works except talking to systemd, so where systemd is evidently talking
to us (NOTIFY_SOCKET, LISTEN_FDS, or stderr is the journal stream) a missing module is an
error at once, never a silent degradation (a Type=notify unit would time out; a socket
would go unanswered; log fields would be lost).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .errors import EnvironmentProblem

INSTALL_HINT = "pip install 'xsupervise[systemd]' (Debian: apt-get install python3-systemd)"


def what_systemd_expects(environ: Mapping[str, str]) -> str | None:
    """Which sign of systemd we see, or None."""
    if environ.get("NOTIFY_SOCKET"):
        return "NOTIFY_SOCKET is set"
    # LISTEN_FDS is ours only when LISTEN_PID names us (sd_listen_fds(3)): a socket-activated
    # parent's variables may be inherited by anything it runs.
    if environ.get("LISTEN_FDS") and environ.get("LISTEN_PID") == str(os.getpid()):
        return "LISTEN_FDS is set for us"
    from .log import journal_is_stderr

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
