"""The xvnc profile's VNC endpoint: private by default, wider only when asked.

By default TigerVNC listens on no TCP port at all (``-rfbport -1``) but on a unix socket in
the session's private directory, mode 0600 (``-rfbunixpath``, ``-rfbunixmode``): only our
user can reach it, which is its authentication (the kernel checks it, so ``-SecurityTypes
None`` on it is safe). ``--vnc-listen ADDR[:PORT]`` adds an unauthenticated TCP listener on
ADDR, with a warning: a free port from 5900 up unless PORT is given; a PORT that is taken is
refused before the start, naming the process that holds it.
"""

from __future__ import annotations

import errno
import os
import socket

from ..host import errors, log
from ..host.paths import check_socket_path
from .settings import split_listen
from .vnc_endpoint import VncEndpoint

_FIRST_PORT, _LAST_PORT = 5900, 5999
SOCKET_NAME = "vnc.sock"


def vnc_args(listen: str | None, directory: str) -> tuple[list[str], VncEndpoint]:
    """(Xvnc's arguments, the endpoint we report: its unix socket, or ``--vnc-listen``'s
    TCP port; the socket is there either way)."""
    path = os.path.join(directory, SOCKET_NAME)
    check_socket_path(path, "the VNC socket")
    args = ["-rfbunixpath", path, "-rfbunixmode", "0600", "-SecurityTypes", "None"]
    if listen is None:
        return ["-rfbport", "-1", *args], VncEndpoint(unix=path)
    host, port = split_listen(listen)
    port = _free_port(host, port)
    endpoint = VncEndpoint(host=host, port=port)
    log.get().warning(
        "VNC listens on %s port %d without authentication (--vnc-listen): anyone who can "
        "reach it can see and control the display.",
        host,
        port,
    )
    return ["-rfbport", str(port), "-interface", host, *args], endpoint


def _free_port(host: str, port: int | None) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for candidate in [port] if port else range(_FIRST_PORT, _LAST_PORT + 1):
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, candidate))
                return candidate
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise errors.UsageError(
                        f"--vnc-listen {host}: no interface of this machine has that address."
                    ) from None
                if port is None:
                    continue  # taken: the next one
                why = f"taken{_holder(port)}" if exc.errno == errno.EADDRINUSE else exc.strerror
                raise errors.EnvironmentProblem(
                    f"VNC port {host}:{port} cannot be used: {why}; choose another with "
                    "--vnc-listen ADDR:PORT, or leave the port out to take a free one."
                ) from None
    raise errors.EnvironmentProblem(
        f"no free VNC port on {host} from {_FIRST_PORT} to {_LAST_PORT}; "
        "name one with --vnc-listen ADDR:PORT."
    )


def _holder(port: int) -> str:
    """' by pid N (comm)' for the process listening on TCP ``port``, from /proc; '' unknown."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as stream:
                next(stream)
                for line in stream:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{fields[9]}]")
        except OSError:
            continue
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    with open(f"/proc/{pid}/comm") as comm:
                        return f" by pid {pid} ({comm.read().strip()})"
        except OSError:
            continue
    return " (by a process we cannot see)" if inodes else ""
