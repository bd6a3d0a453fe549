"""xsupervise: headless X servers, verified ready, supervised, never leaked.

    import xsupervise
    with xsupervise.Display(":auto", timeout=10) as display:
        subprocess.run(["xterm"], env={**os.environ, **display.env})

The public API is what ``__all__`` lists, plus ``xsupervise.client`` (the daemon's client) and
``xsupervise.jupyter`` (jupyter-server-proxy helpers). Its subpackages are private
(docs/architecture.md maps them).
"""

from .host.errors import (
    BadDisplayFd,
    EnvironmentProblem,
    NoSuchSession,
    NotServing,
    ReadyTimeout,
    RuntimeDirError,
    ScreenshotError,
    ServerExited,
    ServerNotFound,
    SessionFailed,
    StartError,
    UsageError,
    XSuperviseError,
)

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
    "ScreenshotError",
    "VncEndpoint",
]

# typing.TYPE_CHECKING without importing typing (start-up time); type checkers treat any
# name TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .api.async_display import AsyncDisplay
    from .api.display import Display
    from .host.version import __version__ as __version__
    from .launch.vnc_endpoint import VncEndpoint


def __getattr__(name: str) -> object:
    # Imported on first use: the CLI imports this package too, and Python start-up time is
    # part of every `xsupervise run`.
    if name == "__version__":
        from .host.version import __version__

        return __version__
    if name == "Display":
        from .api.display import Display

        return Display
    if name == "AsyncDisplay":
        from .api.async_display import AsyncDisplay

        return AsyncDisplay
    if name == "VncEndpoint":
        from .launch.vnc_endpoint import VncEndpoint

        return VncEndpoint
    raise AttributeError(f"module 'xsupervise' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "Display", "AsyncDisplay", "VncEndpoint", "__version__"})
