"""A VNC endpoint for any session of ours: the xvnc profile's own socket, or a companion.

An xvnc session already serves VNC on a 0600 unix socket in its private directory (its
record says where: ``vnc_socket_path``). Any other display (xvfb, xorg-dummy, xwayland...)
gets a companion VNC server (launch/companion.py): TigerVNC's scraping server ``X0tigervnc`` (the
binary behind Debian's ``x0vncserver`` wrapper, which would also write pid files and logs
under ~/.vnc), connected to the display with the session's cookie, listening on no TCP port
(``-rfbport -1``) but on a 0600 unix socket in a private directory of ours. A view-only view
always uses a companion, started with TigerVNC's own view-only settings (it then ignores
every key, pointer and resize message): input is refused by the VNC server itself, not
only by the page.
"""

from __future__ import annotations

import os
import shutil

from ..host import errors
from ..launch.companion import start_companion, stop, wait_listening

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..launch.process import Child

SCRAPER_BINARIES = ("X0tigervnc", "x0vncserver")
SCRAPER_PACKAGE = "tigervnc-scraping-server"
SOCKET_NAME = "vnc.sock"
_READY_TIMEOUT = 10.0
_VIEW_ONLY = ("-AcceptKeyEvents=0", "-AcceptPointerEvents=0", "-AcceptSetDesktopSize=0")


def vnc_socket_path(endpoint: object) -> str | None:
    """The unix socket path of a session record's ``vnc`` endpoint (see launch.vnc_endpoint), None
    when it has none: not an xvnc session, or one that serves VNC on TCP (--vnc-listen),
    which then gets a companion like any other display."""
    from ..launch.vnc_endpoint import VncEndpoint

    try:
        parsed = VncEndpoint.from_json(endpoint)
    except (KeyError, TypeError, ValueError):
        return None
    return parsed.unix if parsed is not None else None


class AttachedVnc:
    """A companion VNC server on display ``number``, in ``directory`` (private, ours)."""

    def __init__(self, number: int, xauthority: str | None, directory: str, view_only: bool):
        self.number, self.xauthority = number, xauthority
        self.path = os.path.join(directory, SOCKET_NAME)
        self.log_path = os.path.join(directory, "vnc.log")
        self.view_only = view_only
        self.child: Child | None = None

    def argv(self, binary: str) -> list[str]:
        return [
            binary,
            "-display",
            f":{self.number}",
            "-rfbport",
            "-1",  # no TCP listener at all
            "-rfbunixpath",
            self.path,
            "-rfbunixmode",
            "0600",  # only our uid can connect: that is its authentication
            "-SecurityTypes",
            "None",
            "-AlwaysShared=1",
            *(_VIEW_ONLY if self.view_only else ()),
        ]

    def start(self) -> Child:
        binary = next(filter(None, map(shutil.which, SCRAPER_BINARIES)), None)
        if binary is None:
            raise errors.ServerNotFound(
                f"attaching a VNC server to display :{self.number} needs TigerVNC's "
                f"x0vncserver, which is not installed; install it (Debian: apt-get install "
                f"{SCRAPER_PACKAGE}), or run the session with --server xvnc."
            )
        env = {key: value for key, value in os.environ.items() if key != "DISPLAY"}
        if self.xauthority:
            env["XAUTHORITY"] = self.xauthority
        from ..host.paths import new_token

        # Named as a session's spawn is (our pid and start time): a cgroup a killed view left
        # is cleared by crash recovery (the next start, run or clean), as a session's is.
        self.child = start_companion(self.argv(binary), env, f"{new_token()}-1", self.log_path)
        what = f"the VNC server attached to display :{self.number} ({os.path.basename(binary)})"
        wait_listening(self.child, self.path, _READY_TIMEOUT, what, self.log_path)
        return self.child

    def stop(self, grace: float = 2.0) -> None:
        if self.child is not None and self.child.pidfd >= 0:
            stop(self.child, grace)
        for path in (self.path, self.log_path):
            try:
                os.unlink(path)  # the scraper leaves its socket behind when its X server goes
            except FileNotFoundError:
                pass
