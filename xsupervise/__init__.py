"""xsupervise: headless X servers, verified ready, supervised, never leaked.

    import xsupervise
    with xsupervise.Display(":auto", timeout=10) as display:
        subprocess.run(["xterm"], env={**os.environ, **display.env})
"""

from ._errors import (BadDisplayFd, EnvironmentProblem, NoSuchSession, NotServing, ReadyTimeout,
                     RuntimeDirError, ServerExited, ServerNotFound, SessionFailed,
                     StartError, UsageError, XSuperviseError)

__version__ = "0.1.0"

__all__ = [
    "Display",
    "AsyncDisplay",
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


def __getattr__(name: str):
    # Imported on first use: the CLI imports this package too, and Python start-up time is
    # part of every `xsupervise run`.
    if name in ("Display", "AsyncDisplay"):
        from . import _display as display

        return getattr(display, name)
    raise AttributeError(f"module 'xsupervise' has no attribute {name!r}")
