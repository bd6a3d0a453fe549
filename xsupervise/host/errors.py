"""Every failure a user can meet, as one exception tree.

    XSuperviseError                  base; ``exit_code`` is what the CLI exits with
    ├── UsageError             2     a flag, environment variable or config value is wrong
    ├── EnvironmentProblem     5     something outside us is missing or unfit
    │   ├── ServerNotFound     5     the X server binary is not on PATH
    │   └── RuntimeDirError    5     no private runtime directory can be used
    ├── StartError             3     the X server did not become a working display
    │   ├── ServerExited       3     it exited (or was killed) before it was ready
    │   ├── BadDisplayFd       3     it wrote something that is not a display number
    │   ├── NotServing         3     it wrote a number, but no X connection of ours is accepted
    │   └── ReadyTimeout       4     no display number before the deadline
    ├── NoSuchSession          6     ``stop``/``status`` named a display nobody of ours supervises
    ├── SessionFailed          7     the start limit was reached: the session is FAILED
    └── ScreenshotError        1     a screenshot could not be taken (no such window, refused)

Messages are full sentences on one line: what happened, which pid/path, what to do.
The CLI prints ``xsupervise: <message>`` and exits with ``exit_code``; the Python API
raises the same objects, so both carry the same facts. Every exit code is an ``ExitCode``.
"""

from __future__ import annotations

from enum import IntEnum  # enum is imported by Python's start-up modules anyway: free here

__all__ = [
    "ExitCode",
    "XSuperviseError",
    "UsageError",
    "EnvironmentProblem",
    "ServerNotFound",
    "RuntimeDirError",
    "StartError",
    "ServerExited",
    "BadDisplayFd",
    "NotServing",
    "ReadyTimeout",
    "NoSuchSession",
    "SessionFailed",
    "ScreenshotError",
]


class ExitCode(IntEnum):
    """What the ``xsupervise`` command exits with; the daemon's error replies carry the same."""

    OK = 0
    FAILURE = 1  # anything else (e.g. ``clean`` left stale entries, a ``stop`` timed out)
    USAGE = 2
    START_FAILED = 3
    READY_TIMEOUT = 4
    ENVIRONMENT = 5
    NO_SUCH_SESSION = 6
    SESSION_FAILED = 7
    COMMAND_NOT_RUNNABLE = 126
    COMMAND_NOT_FOUND = 127

    @staticmethod
    def signalled(signum: int) -> int:
        """A COMMAND killed by signal ``signum`` is reported as 128 + signum, as shells do."""
        return 128 + signum


class XSuperviseError(Exception):
    """Base of every error xsupervise raises on purpose."""

    exit_code: int = ExitCode.FAILURE


class UsageError(XSuperviseError):
    exit_code = ExitCode.USAGE


class EnvironmentProblem(XSuperviseError):
    exit_code = ExitCode.ENVIRONMENT


class ServerNotFound(EnvironmentProblem):
    pass


class RuntimeDirError(EnvironmentProblem):
    pass


class StartError(XSuperviseError):
    """The X server did not become a working display; it has been stopped and reaped.

    Attributes carry the facts of the error line: ``server`` (argv[0]), ``pid``,
    ``elapsed`` (seconds since spawn), ``stderr_tail`` (last lines it printed),
    ``server_reason`` (its own reason: the line after "Fatal server error:" and its "(EE)"
    lines, or "" when it gave none), ``display`` (":N" when it wrote one, else None).
    The line quotes ``server_reason``, and ``stderr_tail`` only when there is no reason.
    """

    exit_code = ExitCode.START_FAILED

    def __init__(
        self,
        what: str,
        *,
        server: str,
        pid: int | None,
        elapsed: float,
        stderr_tail: str = "",
        display: str | None = None,
        hint: str = "",
        server_reason: str = "",
    ):
        self.what = what
        self.server = server
        self.pid = pid
        self.elapsed = elapsed
        self.stderr_tail = stderr_tail
        self.display = display
        self.hint = hint
        self.server_reason = server_reason
        super().__init__(self._line())

    def _line(self) -> str:
        who = f"{self.server} (pid {self.pid})" if self.pid else self.server
        line = (
            f"{who} {self.what} ({self.elapsed:.2f} s after start); its process group "
            "was stopped and reaped."
        )
        if self.hint:
            line += f" {self.hint}"
        if self.server_reason:
            return f"{line} {self.server} said: {self.server_reason}"
        return f"{line} Its last output: {self.stderr_tail or '(nothing)'}"


class ServerExited(StartError):
    pass


class BadDisplayFd(StartError):
    pass


class NotServing(StartError):
    pass


class ReadyTimeout(StartError):
    exit_code = ExitCode.READY_TIMEOUT


class NoSuchSession(XSuperviseError):
    exit_code = ExitCode.NO_SUCH_SESSION


class SessionFailed(XSuperviseError):
    exit_code = ExitCode.SESSION_FAILED


class ScreenshotError(XSuperviseError):
    """A screenshot could not be taken; the message is one line saying why."""

    exit_code = ExitCode.FAILURE
