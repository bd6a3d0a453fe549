"""The one line a failed start ends with: what the server did, its own reason, what to do.

Imported by the launch path only once a start has failed. A display number served by
somebody else names that process (pid, user, command, from /proc: ``_display_holder``);
looking it up scans /proc, so it is an Offload.
"""

from __future__ import annotations

import os
import time

from ..host import errors
from ..host.sockets import bound_abstract_displays, who_serves
from .process import Offload, describe_status
from .server import XServer
from .x11 import DisplayFdError, HandshakeError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..host.processes import Steps


def start_error(exc: DisplayFdError | HandshakeError, server: XServer) -> Steps[errors.StartError]:
    """The error to raise for ``exc``, once ``server`` has been stopped and reaped."""
    kind, what = exc.kind, str(exc)
    error: type[errors.StartError] = errors.NotServing
    hint = "Is another program interfering with /tmp/.X11-unix?"
    if kind == "exited":
        error, hint = errors.ServerExited, "Check the --server and --screen settings."
        requested = server.requested_number
        if requested is not None and requested in bound_abstract_displays():
            holder, _ = yield Offload(who_serves, requested)
            hint = (
                f"Display :{requested} is already served by {holder}; "
                "ask for another number or :auto."
            )
        status = server.exit_status
        what = (
            f"{describe_status(status) if status is not None else 'ended'} before it "
            "wrote a display number"
        )
    elif getattr(exc, "daemonized", False):  # see launch.x11.verify: looked up while it still ran
        number = server.number if server.number is not None else "?"
        what = (
            f"wrote display number {number} but put the X server that serves it in the "
            f"background, out of its process group: {getattr(exc, 'holder', '')}"
        )
        hint = (
            "Only an X server that runs in the foreground can be supervised: run the X "
            "server binary itself (Xvfb, Xtigervnc..., not a launcher such as vncserver), "
            "or a profile (--server xvfb, xvnc...)."
        )
    elif kind == "stranger":
        holder = getattr(exc, "holder", "") or "another process"  # a DisplayFdError has none
        what = f"{what}: {holder}"
        hint = "Stop that process, or ask for another number or :auto."
    elif getattr(exc, "exited", False):
        status = server.exit_status
        what = f"{what}; it {describe_status(status) if status is not None else 'ended'}"
        hint = (
            "An X server runs for as long as it serves its display; a launcher that starts "
            "one in the background and exits cannot be supervised: run the X server binary "
            "itself (Xvfb, Xtigervnc...), or a profile (--server xvfb, xvnc...)."
        )
    elif kind == "timeout":
        error = errors.ReadyTimeout
        what = f"was not ready within the {server.settings.displayfd_timeout:g} s deadline ({exc})"
        hint = "If it is just slow, raise --timeout (XSUPERVISE_DISPLAYFD_TIMEOUT)."
    elif kind == "refused":
        hint = "Does --server pass its own -auth or access options?"
    elif kind in ("garbage", "closed"):
        error, hint = errors.BadDisplayFd, "Is --server an X server that supports -displayfd?"
    return error(
        what,
        server=os.path.basename(server.child.argv[0]),
        pid=server.pid,
        elapsed=time.monotonic() - server.child.spawned_at,
        stderr_tail=server.output_tail,
        server_reason=server.output_reason,
        display=server.display,
        hint=hint,
    )
