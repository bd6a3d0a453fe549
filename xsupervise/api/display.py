"""``xsupervise.Display``: a verified display for the length of a ``with`` block."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike, fspath
from types import TracebackType

from ..host.errors import UsageError
from ..host.paths import RuntimeDir
from ..launch.launcher import launch_steps
from ..launch.process import run_blocking
from ..launch.recording import recording_block
from ..launch.server import XServer
from ..launch.settings import Settings, load_settings, parse_display
from ..launch.x11 import ServerFacts

TYPE_CHECKING = False
if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from typing import Self

    from ..launch.vnc_endpoint import VncEndpoint
    from .lease_client import LeasedServer


class Display:
    """A headless X server of our own, verified ready, torn down completely on exit.

    ``with Display(":auto", timeout=10) as d:`` returns only once a real X11 connection with
    our cookie has been accepted by our server; ``d.env`` holds DISPLAY and XAUTHORITY.
    Leaving the block (normally, by an exception, or after a failed start) stops the server's
    process group, reaps it and removes its files. Failures raise ``xsupervise.StartError``
    subclasses carrying the pid, elapsed time and the server's last output.

    Start it from a thread that outlives it: outside a PID namespace of our own the server is
    killed when the thread that spawned it exits (PR_SET_PDEATHSIG), so that it can never
    outlive us. (In one, as root, it dies with the process, whichever thread started it.)

    ``Display(pool="NAME")`` leases a display of that pool from the running ``xsupervise
    serve`` instead (``socket``: its control socket), ready in milliseconds; leaving the block
    ends the lease and the daemon destroys the display. No daemon: ``DaemonUnavailable``.
    """

    def __init__(
        self,
        display: str | int | None = ":auto",
        *,
        timeout: float | None = None,
        screen: str | None = None,
        server: str | Sequence[str] | None = None,
        kill_grace: float | None = None,
        name: str | None = None,
        runtime_dir: str | None = None,
        settings: Settings | None = None,
        pool: str | None = None,
        socket: str | None = None,
        wm: str | Sequence[str] | None = None,
        record: str | PathLike[str] | None = None,
    ):
        if pool is not None and (display != ":auto" or screen or server or settings or wm):
            raise UsageError(f"Display(pool={pool!r}) takes the pool's settings; give no others.")
        self._pool, self._socket = pool, socket
        self._record = None if record is None else fspath(record)
        self._number = parse_display(display)
        self._settings = settings or load_settings(
            {
                "displayfd_timeout": timeout,
                "screen": screen,
                "server": server,
                "kill_grace": kill_grace,
                "wm": wm,
                "record": None if pool is not None else self._record,
            }
        )
        self._name = name
        self._runtime_dir = runtime_dir
        self._server: XServer | LeasedServer | None = None

    def __repr__(self) -> str:
        if self._server is None:
            return "<Display not started>"
        return f"<Display {self.display} served by pid {self.server_pid}>"

    def _runtime(self) -> RuntimeDir:
        if self._runtime_dir is not None:
            return RuntimeDir.create(self._runtime_dir)
        return RuntimeDir.discover()

    def start(self) -> Self:
        """Start the server and return once the display answers; raise on any failure."""
        if self._server is not None:
            raise RuntimeError("this Display is already started; use a new one")
        if self._pool is not None:
            from .lease_client import take_lease

            self._server = take_lease(self._pool, self._socket, record=self._record)
            return self
        self._server = run_blocking(
            launch_steps(self._settings, self._runtime(), self._number, name=self._name, kind="api")
        )
        return self

    def stop(self) -> None:
        """Stop the server (TERM, grace, KILL), reap it and remove its files. Idempotent.
        A leased display: end the lease (the daemon destroys it)."""
        if isinstance(self._server, XServer):
            run_blocking(self._server.stop_steps())
        elif self._server is not None:
            self._server.release()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _ready(self) -> XServer | LeasedServer:
        if self._server is None or self._server.exit_status is not None:
            raise RuntimeError("this Display is not running")
        return self._server

    @property
    def alive(self) -> bool:
        """Whether the display still serves: False once stopped, once its X server has died,
        or, leased, once its lease ended (its display died or was revoked)."""
        server = self._server
        if server is None or server.exit_status is not None:
            return False
        return server.alive() if not isinstance(server, XServer) else not server.child.has_exited()

    @property
    def display(self) -> str:
        """The DISPLAY value, e.g. ':5'."""
        return self._ready().env["DISPLAY"]

    @property
    def number(self) -> int:
        return self._ready().number  # type: ignore[return-value]

    @property
    def env(self) -> dict[str, str]:
        """DISPLAY and XAUTHORITY, to merge into a child's environment."""
        return self._ready().env

    @property
    def server_pid(self) -> int:
        return self._ready().pid

    @property
    def xauthority(self) -> str:
        return self._ready().auth_path

    @property
    def vnc(self) -> VncEndpoint | None:
        """The xvnc profile's VNC endpoint (``.unix``, or ``.host`` and ``.port``; its
        ``str()`` is the address VNC clients take); None for other profiles."""
        return self._ready().vnc

    @property
    def facts(self) -> ServerFacts:
        """Vendor and screen geometry, from the server's handshake reply."""
        return self._ready().facts  # type: ignore[return-value]

    def screenshot(self, path: str | PathLike[str], window: int | None = None) -> tuple[int, int]:
        """Write a PNG of the display (or of window ``window``) to ``path``; its (width, height).
        Raises ``xsupervise.ScreenshotError`` with one line when it cannot be taken."""
        from ..media.screenshot import capture

        return capture(self.display, self.xauthority, path, window)

    def record(self, path: str | PathLike[str]) -> AbstractContextManager[str]:
        """A video of the display in ``path`` (fragmented MP4) for a ``with`` block: begun as
        it starts, finished as it ends (docs/recording.md). Needs ffmpeg."""
        return recording_block(self, fspath(path))
