"""Every failure a user can meet, as one exception tree.

    XSuperviseError                  base; ``exit_code`` is what the CLI exits with
    ├── UsageError             2     a flag, environment variable or config value is wrong
    ├── EnvironmentProblem     5     something outside us is missing or unfit
    │   ├── ServerNotFound     5     the X server binary is not on PATH
    │   └── RuntimeDirError    5     no private runtime directory can be used
    ├── StartError             3     the X server did not become a working display
    │   ├── ServerExited       3     it exited (or was killed) before it was ready
    │   ├── BadDisplayFd       3     it wrote something that is not a display number
    │   ├── NotServing         3     it wrote a number, but no X connection of ours is accepted there
    │   └── ReadyTimeout       4     no display number before the deadline
    ├── NoSuchSession          6     ``stop``/``status`` named a display nobody of ours supervises
    └── SessionFailed          7     the start limit was reached: the session is FAILED

Messages are full sentences on one line: what happened, which pid/path, what to do.
The CLI prints ``xsupervise: <message>`` and exits with ``exit_code``; the Python API
raises the same objects, so both carry the same facts.
"""

from __future__ import annotations

__all__ = [
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
]


class XSuperviseError(Exception):
    """Base of every error xsupervise raises on purpose."""

    exit_code = 1


class UsageError(XSuperviseError):
    exit_code = 2


class EnvironmentProblem(XSuperviseError):
    exit_code = 5


class ServerNotFound(EnvironmentProblem):
    pass


class RuntimeDirError(EnvironmentProblem):
    pass


class StartError(XSuperviseError):
    """The X server did not become a working display; it has been stopped and reaped.

    Attributes carry the facts of the error line: ``server`` (argv[0]), ``pid``,
    ``elapsed`` (seconds since spawn), ``stderr_tail`` (last lines it printed),
    ``display`` (":N" when it wrote one, else None).
    """

    exit_code = 3

    def __init__(self, what: str, *, server: str, pid: int | None, elapsed: float,
                 stderr_tail: str = "", display: str | None = None, hint: str = ""):
        self.what = what
        self.server = server
        self.pid = pid
        self.elapsed = elapsed
        self.stderr_tail = stderr_tail
        self.display = display
        self.hint = hint
        super().__init__(self._line())

    def _line(self) -> str:
        who = f"{self.server} (pid {self.pid})" if self.pid else self.server
        line = f"{who} {self.what} ({self.elapsed:.2f} s after start); its process group " \
               "was stopped and reaped."
        if self.hint:
            line += f" {self.hint}"
        tail = self.stderr_tail or "(nothing)"
        return f"{line} Its last output: {tail}"


class ServerExited(StartError):
    pass


class BadDisplayFd(StartError):
    pass


class NotServing(StartError):
    pass


class ReadyTimeout(StartError):
    exit_code = 4


class NoSuchSession(XSuperviseError):
    exit_code = 6


class SessionFailed(XSuperviseError):
    exit_code = 7
