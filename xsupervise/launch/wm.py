"""The ``wm`` setting: a window manager on the display, for tests that need focus.

It is started once the display is verified, with the display's DISPLAY and XAUTHORITY and its
output in the session's log, and the display counts as ready only once the window manager
manages it: when it owns the ICCCM manager selection ``WM_S0`` (openbox, fluxbox, xfwm4,
mutter... take it as they start), asked over a connection authenticated by our cookie. It is
stopped before its X server (TERM, grace, KILL, reap), so a restart of the display restarts it.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import time

from ..host import errors
from ..host.log import child_environment
from ..host.paths import socket_path
from ..host.processes import Wait
from .process import Child, describe_status, peer_credentials, spawn
from .server import read_output
from .x11 import refusal_reason, served_by, setup_request

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..host.processes import Steps
    from .server import XServer

_POLL = 0.02  # seconds between two asks of the selection's owner while the WM starts
_INTERN_ATOM, _GET_SELECTION_OWNER = 16, 23
_SELECTION = b"WM_S0"  # the manager selection of screen 0 (ICCCM 2.0, section 2.8)


def _spawn(server: XServer) -> tuple[Child, int]:
    """The window manager, and where its output starts in the session's log."""
    argv = server.settings.wm
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    log_fd = os.open(server.files.log_path, flags)
    try:
        offset = os.lseek(log_fd, 0, os.SEEK_END)
        env = child_environment(server.env)
        wm = spawn(argv, env=env, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd)
        return wm, offset
    except FileNotFoundError:
        where = "does not exist" if "/" in argv[0] else "was not found on PATH"
        raise errors.EnvironmentProblem(
            f"window manager {argv[0]!r} {where}; install it (Debian: apt-get install "
            f"{os.path.basename(argv[0])}) or change the wm setting."
        ) from None
    except PermissionError:
        raise errors.EnvironmentProblem(
            f"window manager {argv[0]!r} is not executable; change the wm setting."
        ) from None
    finally:
        os.close(log_fd)


def _ask(
    sock: socket.socket, request: bytes, server: XServer, wm: Child, deadline: float
) -> Steps[bytes]:
    """Send one request and return its 32-byte reply (both of ours have no extra data)."""
    sock.sendall(request)
    if wm.has_exited():
        raise ChildProcessError
    reply = yield from _receive(sock, 32, server, deadline)
    if reply[0] != 1:
        raise OSError(f"X error {reply[1]} on request {request[0]}")
    return reply


def _receive(sock: socket.socket, size: int, server: XServer, deadline: float) -> Steps[bytes]:
    """Exactly ``size`` bytes of the server's answer, waiting without blocking."""
    data = b""
    while len(data) < size:
        ready = yield Wait((sock.fileno(), server.child.pidfd), deadline)
        if sock.fileno() in ready:
            chunk = sock.recv(size - len(data))
            if not chunk:
                raise OSError("the X server closed our connection")
            data += chunk
        elif ready:
            raise OSError("the X server exited")
        else:
            raise TimeoutError
    return data


def _await_manager(server: XServer, wm: Child, deadline: float) -> Steps[None]:
    """Return once someone owns WM_S0 on the display."""
    flags = socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK  # never hang here
    with socket.socket(socket.AF_UNIX, flags) as sock:
        assert server.number is not None
        sock.connect(socket_path(server.number))
        peer = peer_credentials(sock)[0]
        if not served_by(server.child, peer):  # our cookie goes to our server only
            raise OSError(f"display {server.display} is served by pid {peer}, not by ours")
        sock.sendall(setup_request(server.files.cookie))
        header = yield from _receive(sock, 8, server, deadline)  # its length is in its header
        rest = yield from _receive(
            sock, 4 * struct.unpack_from("<H", header, 6)[0], server, deadline
        )
        reason = refusal_reason(header + rest)
        if reason is not None:
            raise OSError(f"display {server.display} refused our cookie: {reason}")
        pad = -len(_SELECTION) % 4
        intern = struct.pack("<BBHHxx", _INTERN_ATOM, 0, 2 + (len(_SELECTION) + pad) // 4, 5)
        reply = yield from _ask(sock, intern + _SELECTION + b"\0" * pad, server, wm, deadline)
        owner_request = struct.pack("<BxHI", _GET_SELECTION_OWNER, 2, _word(reply))
        while not _word((yield from _ask(sock, owner_request, server, wm, deadline))):
            if time.monotonic() >= deadline:
                raise TimeoutError
            if (
                yield Wait((wm.pidfd, server.child.pidfd), min(deadline, time.monotonic() + _POLL))
            ):
                if wm.has_exited():
                    raise ChildProcessError
                raise OSError("the X server exited")


def _word(reply: bytes) -> int:
    """The first 32-bit value of a reply's body: InternAtom's atom, GetSelectionOwner's owner."""
    value: int = struct.unpack_from("<I", reply, 8)[0]
    return value


def start_steps(server: XServer) -> Steps[Child]:
    """Start the ``wm`` setting's window manager on ``server``'s display; return it managing."""
    wm, offset = _spawn(server)
    deadline = wm.spawned_at + server.settings.displayfd_timeout
    try:
        yield from _await_manager(server, wm, deadline)
    except (ChildProcessError, TimeoutError, OSError, struct.error) as exc:
        status = yield from wm.stop_steps(server.settings.kill_grace)
        if isinstance(exc, ChildProcessError):
            what = "ended before it managed the display"
        elif isinstance(exc, TimeoutError):
            what = f"did not manage the display within {server.settings.displayfd_timeout:g} s"
        else:
            what = f"could not be seen managing the display ({exc})"
        raise errors.StartError(
            f"{what} ({describe_status(status)})",
            server=f"window manager {os.path.basename(wm.argv[0])}",
            pid=wm.pid,
            elapsed=time.monotonic() - wm.spawned_at,
            stderr_tail=read_output(server.files.log_path, offset)[1],
            display=server.display,
            hint="Check the wm setting (a window manager that takes WM_S0, e.g. openbox).",
        ) from None
    except BaseException:
        wm.signal(signal.SIGKILL)  # a stop or a bug: the server's teardown follows
        yield from wm.reap_steps(server.settings.kill_grace)
        raise
    return wm
