"""A companion: a helper process attached to a running display, contained like its server.

A companion (a VNC server scraping the display for ``view``; weston is Xwayland's own, see
launch/compositor.py) is started with the same ``spawn`` as an X server: a boundary of its own of
the kind the session's server has (``launch.containment.choose``: a PID namespace, a cgroup or a
process group), our death signal (it dies with whoever started it, even by SIGKILL), its
output appended to a log file of ours. It is ready once it accepts a connection on its unix
socket: we wait for the socket file (inotify, no polling) and connect to it, and a companion
that exits first, or takes longer than the deadline, is stopped and reported in one line.
``stop`` ends it as a server is ended: SIGTERM, a grace, SIGKILL to its whole boundary, reap.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

from ..host import errors
from ..host.processes import (
    IN_CREATE,
    IN_MOVED_TO,
    Steps,
    Wait,
    describe_status,
    inotify_watch,
    run_blocking,
)
from .process import Child, spawn

_RETRY = 0.005  # seconds: the socket file exists but is not listening yet (bind, then listen)


def accepts(path: str) -> bool:
    """Does a unix socket at ``path`` accept a connection now?"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK) as probe:
        try:
            probe.connect(path)
            return True
        except (FileNotFoundError, ConnectionRefusedError):
            return False


def start_companion(argv: list[str], env: dict[str, str], label: str, log_path: str) -> Child:
    """Spawn ``argv`` in a boundary named ``label``; its output goes to ``log_path``."""
    from .containment import choose

    log_fd = os.open(
        log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
    )
    try:
        return spawn(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
            boundary=choose(label),
        )  # fmt: skip
    finally:
        os.close(log_fd)


def until_listening(child: Child, path: str, deadline: float) -> Steps[None]:
    """Return once ``child`` accepts connections on the unix socket ``path``: we wait for the
    file to appear (inotify on its directory, watched before we first look), then connect; a
    file that exists but refuses (bound, not listening yet) is tried again very soon.
    ChildProcessError if ``child`` exits first; TimeoutError at ``deadline``."""
    watch = inotify_watch(os.path.dirname(path), IN_CREATE | IN_MOVED_TO)
    try:
        while not accepts(path):
            soon = min(deadline, time.monotonic() + _RETRY) if os.path.exists(path) else deadline
            ready = yield Wait((watch, child.pidfd), soon)
            if child.pidfd in ready:
                raise ChildProcessError
            if watch in ready:
                os.read(watch, 4096)  # drained: the connect says if it is ready
            if time.monotonic() >= deadline:
                raise TimeoutError
    finally:
        os.close(watch)


def wait_listening(child: Child, path: str, timeout: float, what: str, log_path: str) -> None:
    """Return once ``child`` accepts connections on the unix socket ``path``; if it exits
    first or is not listening within ``timeout`` s, stop it and raise one line (exit 3/4)
    with the last lines it wrote to ``log_path``."""
    from .server import read_output

    try:
        run_blocking(until_listening(child, path, child.spawned_at + timeout))
    except ChildProcessError:
        status = stop(child, 1.0)  # reaped, and the rest of its boundary killed
        reason, tail = read_output(log_path)
        raise errors.ServerExited(
            f"{describe_status(status)} before it listened on {path}",
            server=what,
            pid=child.pid,
            elapsed=time.monotonic() - child.spawned_at,
            server_reason=reason,
            stderr_tail=tail,
        ) from None
    except TimeoutError:
        stop(child, 1.0)
        raise errors.ReadyTimeout(
            f"did not listen on {path} within {timeout:g} s",
            server=what,
            pid=child.pid,
            elapsed=time.monotonic() - child.spawned_at,
        ) from None
    except BaseException:
        if child.returncode is None:
            stop(child, 1.0)
        raise


def stop(child: Child, grace: float) -> int:
    """SIGTERM, ``grace`` s, SIGKILL to the whole boundary, reap: nothing of it is left."""
    return run_blocking(child.stop_steps(grace))
