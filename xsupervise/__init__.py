"""xsupervise: headless X servers, verified ready, supervised, never leaked.

    import xsupervise
    with xsupervise.Display(":auto", timeout=10) as display:
        subprocess.run(["xterm"], env={**os.environ, **display.env})
"""

from .display import Display
from .errors import (BadDisplayFd, EnvironmentProblem, NoSuchSession, NotServing, ReadyTimeout,
                     RuntimeDirError, ServerDied, ServerExited, ServerNotFound, SessionFailed,
                     StartError, UsageError, XSuperviseError)

__version__ = "0.1.0"

__all__ = [
    "Display",
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
    "ServerDied",
]
