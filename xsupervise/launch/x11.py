"""What we know of X servers: their argv, the Xauthority format, -displayfd, the X11 handshake.

Protocol facts this module relies on (xorg-server and the X11 protocol spec):
- ``-displayfd FD``: the server writes its display number in decimal and one newline, once,
  after it has finished initialising and just before it starts serving.
- A connection setup request carries the auth protocol name and data; the first byte of the
  reply is 0 (Failed), 1 (Success) or 2 (Authenticate).
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Generator

from ..host.paths import socket_path
from .process import Child, Offload, Steps, Wait, peer_credentials

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

COOKIE_PROTOCOL = b"MIT-MAGIC-COOKIE-1"
_FAMILY_WILD = 0xFFFF  # matches any host and (with an empty number) any display
MAX_DISPLAY_DIGITS = 6  # the longest display number we take (-displayfd, :N)
_EXIT_AFTER_EOF = 0.25  # seconds
# At most this long for a socket file's name to come back (see verify): it is missing only
# while another supervisor renames it aside and links it back, microseconds.
_NAME_BACK = 0.25  # seconds


def server_argv(
    server: tuple[str, ...], number: int | None, displayfd: int, auth_path: str
) -> list[str]:
    """What every server gets: the display (None: -displayfd lets it choose), -displayfd,
    -nolisten tcp and -auth; then the command's own arguments. A profile adds its own
    (see launch/profiles.py); a raw --server command gets only these."""
    argv = [server[0]]
    if number is not None:
        argv.append(f":{number}")
    argv += ["-displayfd", str(displayfd), "-nolisten", "tcp", "-auth", auth_path]
    argv += server[1:]
    return argv


def xauthority_entry(cookie: bytes) -> bytes:
    """One Xauthority record that every client of ours can use, whatever the display number.

    The number is not known before the server chooses it; FamilyWild with an empty address
    and number matches any, and the server itself ignores both fields when it loads -auth.
    """

    def counted(data: bytes) -> bytes:
        return struct.pack(">H", len(data)) + data

    return (
        struct.pack(">H", _FAMILY_WILD)
        + counted(b"")
        + counted(b"")
        + counted(COOKIE_PROTOCOL)
        + counted(cookie)
    )


class DisplayFdError(Exception):
    """Raised by ``read_display_number`` with a short description; the caller adds context."""

    def __init__(self, kind: str, what: str):
        self.kind = kind  # "exited", "garbage", "closed", "timeout"
        super().__init__(what)


def read_display_number(
    read_fd: int, child: Child, deadline: float
) -> Generator[Wait, set[int], int]:
    """Read ``digits "\\n"`` from -displayfd. Stop the moment the child exits or the pipe closes."""
    received = b""
    while True:
        ready = yield Wait((read_fd, child.pidfd), deadline)
        if read_fd in ready:
            chunk = os.read(read_fd, 64)
            if not chunk:
                # A dying process closes its fds a moment before it becomes waitable: give
                # the exit a short while to show, to tell "exited" from "closed the fd".
                grace = min(deadline, time.monotonic() + _EXIT_AFTER_EOF)
                exited = yield Wait((child.pidfd,), grace)
                if exited:
                    raise DisplayFdError("exited", "exited before writing a display number")
                raise DisplayFdError(
                    "closed",
                    "closed -displayfd without writing a display number"
                    + (f" (it wrote {received!r})" if received else ""),
                )
            received += chunk
            line, newline, rest = received.partition(b"\n")
            if newline:
                if line.isdigit() and len(line) <= MAX_DISPLAY_DIGITS and not rest:
                    return int(line)
                raise DisplayFdError(
                    "garbage", f"wrote {received[:40]!r} to -displayfd, not a display number"
                )
            if not line.isdigit() or len(line) > MAX_DISPLAY_DIGITS:
                raise DisplayFdError(
                    "garbage", f"wrote {received[:40]!r} to -displayfd, not a display number"
                )
        elif child.pidfd in ready:
            raise DisplayFdError("exited", "exited before writing a display number")
        elif time.monotonic() >= deadline:
            raise DisplayFdError("timeout", "did not write a display number in time")


class ServerFacts:
    """What the connection setup reply told us, and the inode of /tmp/.X11-unix/X<n> (so
    that we only ever remove the very file our server made)."""

    __slots__ = ("vendor", "release", "width", "height", "depth", "socket_inode")

    def __init__(
        self, vendor: str, release: int, width: int, height: int, depth: int, socket_inode: int
    ):
        self.vendor, self.release = vendor, release
        self.width, self.height, self.depth = width, height, depth
        self.socket_inode = socket_inode

    def __repr__(self) -> str:
        return f"<ServerFacts {self.vendor!r} {self.width}x{self.height}x{self.depth}>"


class HandshakeError(Exception):
    def __init__(self, what: str, kind: str = "not-serving", holder: str = ""):
        self.kind = kind  # "not-serving", "stranger", "refused", "timeout"
        self.holder = holder  # "stranger": who serves the display instead (_display_holder)
        self.daemonized = False  # our server started the process that serves the display
        self.exited = False  # "not-serving": our server had exited (a launcher, not a server)
        super().__init__(what)


def served_by(child: Child, pid: int) -> bool:
    """The listening socket's owner is our child, or in its process group (a wrapper script)."""
    if pid == child.pid:
        return True
    leaders = {child.pid} if child.own_group else set()
    try:
        if child.own_group and child.boundary is not None and child.boundary.namespace:
            # In a PID namespace the server runs under its init (unshare -> sh -> server) and
            # makes a group of its own (its getpgrp() is 0 there: our leader is outside); it
            # stays in the session we made, which a daemon (setsid) leaves.
            return os.getsid(pid) == child.pid
        return os.getpgid(pid) in leaders
    except ProcessLookupError:
        return False


def setup_request(cookie: bytes) -> bytes:
    def padded(data: bytes) -> bytes:
        return data + b"\0" * (-len(data) % 4)

    header = struct.pack("<BxHHHHxx", ord("l"), 11, 0, len(COOKIE_PROTOCOL), len(cookie))
    return header + padded(COOKIE_PROTOCOL) + padded(cookie)


def setup_reply_steps(
    sock: socket.socket, request: bytes, deadline: float, watched: int = -1
) -> Steps[bytes | None]:
    """The X11 handshake, for verify (our server, its pidfd ``watched``) and for `check` (any
    display): send a connection setup ``request`` over the connected, non-blocking ``sock``;
    return the server's whole reply (refusal_reason and parse_setup_reply read it), or None
    if ``watched`` became readable first. Raises EOFError if the server closed the connection
    without a reply, TimeoutError at ``deadline``, OSError if the socket failed."""
    sock.sendall(request)  # a few dozen bytes into a fresh unix socket: never blocks
    reply = b""
    needed = 8
    fds = (sock.fileno(), watched) if watched >= 0 else (sock.fileno(),)
    while len(reply) < needed:
        ready = yield Wait(fds, deadline)
        if sock.fileno() in ready:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError
            reply += chunk
            if len(reply) >= 8:
                needed = 8 + 4 * struct.unpack_from("<H", reply, 6)[0]
        elif watched in ready:
            return None
        elif time.monotonic() >= deadline:
            raise TimeoutError
    return reply


def refusal_reason(reply: bytes) -> str | None:
    """None when a connection setup reply (its 8-byte header at least) says Success; else
    the server's reason, as one line."""
    if reply[0] == 1:
        return None
    if reply[0] == 0:  # Failed: the reason follows the header
        return reply[8 : 8 + reply[1]].decode("latin-1", "replace").strip() or "no reason given"
    return "it asked for further authentication"


def parse_setup_reply(reply: bytes) -> tuple[str, int, int, int, int]:
    """(vendor, release, width, height, depth) of screen 0 from a Success reply."""
    (release,) = struct.unpack_from("<I", reply, 8)
    (vendor_len,) = struct.unpack_from("<H", reply, 24)
    (formats,) = struct.unpack_from("<B", reply, 29)
    vendor = reply[40 : 40 + vendor_len].decode("latin-1")
    screen = 40 + vendor_len + (-vendor_len % 4) + 8 * formats
    width, height = struct.unpack_from("<HH", reply, screen + 20)
    (depth,) = struct.unpack_from("<B", reply, screen + 38)
    return vendor, release, width, height, depth


def _look_for_a_background_server(
    error: HandshakeError, number: int, child: Child, deadline: float
) -> Steps[None]:
    """Why our server does not serve the display it named, checked: who does, from /proc,
    while our server's boundary still runs (SO_PEERCRED names whoever called listen(), perhaps
    a process gone since, its pid reused: see _display_holder); whether that is an X server
    ours put in the background; and, when nobody does, whether ours has exited (a launcher
    that relayed the number of an X server it took down with it, or that a PID namespace's
    end took down)."""
    from ..host.sockets import who_serves

    argv = list(child.argv)
    cookie = argv[argv.index("-auth") + 1] if "-auth" in argv[:-1] else None
    # Our server itself (or a wrapper's, in its group) holding the display, say on its
    # abstract socket only, is not one put in the background: the line then says only
    # what was checked.
    holder, error.daemonized = yield Offload(
        who_serves, number, child.pid, cookie, lambda pid: served_by(child, pid)
    )
    if error.daemonized:  # ours, outside the fallback's process group (setsid): stop it too
        from ..host.sockets import stop_holders

        yield Offload(stop_holders, number, child.start_ticks)
    if error.daemonized or error.kind == "stranger":
        error.holder = holder
        return
    # The number was written, nothing serves it: has our server gone? Its exit may be a
    # moment behind (a namespace's init first ends every process in it).
    yield Wait((child.pidfd,), min(deadline, time.monotonic() + _EXIT_AFTER_EOF))
    error.exited = child.has_exited()


def _name_back_steps(path: str, deadline: float) -> Steps[None]:
    """Return once ``path`` exists again, or at ``deadline``: an inotify event, not polling."""
    from ..host.processes import IN_CREATE, IN_MOVED_TO, inotify_watch

    try:
        watch = inotify_watch(os.path.dirname(path), IN_CREATE | IN_MOVED_TO)
    except OSError:  # no inotify left: the caller tries once more at once
        return
    try:
        while not os.path.lexists(path):  # checked after the watch is set: no event is lost
            if not (yield Wait((watch,), deadline)):
                return
            os.read(watch, 4096)
    finally:
        os.close(watch)


def verify(number: int, child: Child, cookie: bytes, deadline: float) -> Steps[ServerFacts]:
    """Prove display ``number`` works: our child serves its socket and accepts our cookie."""
    import socket  # here, not at the top: it is not needed before the server is spawned

    path = socket_path(number)
    # Non-blocking from the start: a unix connect then fails (EAGAIN) rather than hang on
    # a server whose listen backlog is full.
    flags = socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
    sock = socket.socket(socket.AF_UNIX, flags)
    try:
        try:
            try:
                sock.connect(path)
            except FileNotFoundError:
                # Another supervisor may hold the name aside for an instant: it judges a dead
                # server's file by renaming it (host.sockets.unlink_if_same) and links back
                # one that is not. Wait for the name (briefly), then try once more.
                yield from _name_back_steps(path, min(deadline, time.monotonic() + _NAME_BACK))
                sock.connect(path)
        except OSError as exc:
            absent = HandshakeError(
                f"wrote display number {number} but nothing answers on {path} ({exc.strerror})"
            )
            yield from _look_for_a_background_server(absent, number, child, deadline)
            raise absent from None
        inode = os.lstat(path).st_ino
        peer = peer_credentials(sock)[0]
        if not served_by(child, peer):
            stranger = HandshakeError(
                f"wrote display number {number} but {path} is served by another process",
                kind="stranger",
            )
            yield from _look_for_a_background_server(stranger, number, child, deadline)
            raise stranger
        try:
            reply = yield from setup_reply_steps(sock, setup_request(cookie), deadline, child.pidfd)
        except EOFError:
            raise HandshakeError(f"closed our X11 connection on {path} without a reply") from None
        except TimeoutError:
            raise HandshakeError(
                f"accepted an X11 connection on {path} but did not answer it in time",
                kind="timeout",
            ) from None
        if reply is None:
            raise HandshakeError(f"exited while answering our X11 connection on {path}")
        reason = refusal_reason(reply)
        if reason is not None:
            raise HandshakeError(
                f"refused our X11 connection with our cookie on {path}: {reason}", kind="refused"
            )
        vendor, release, width, height, depth = parse_setup_reply(reply)
        return ServerFacts(vendor, release, width, height, depth, inode)
    except (OSError, struct.error, IndexError, UnicodeError) as exc:
        # The server vanished mid-handshake, or answered something that is not X11.
        raise HandshakeError(f"broke our X11 handshake on {path} ({exc})") from None
    finally:
        sock.close()


def display_number(text: str) -> int:
    """The number of a local display: ':N', ':N.S', 'unix:N' or 'N'. ValueError for anything
    else (a TCP display 'host:N' among them: what we start and probe runs on this machine)."""
    host, _, rest = text.rpartition(":")
    number = rest.partition(".")[0]
    if host not in ("", "unix") or not number.isdigit() or len(number) > MAX_DISPLAY_DIGITS:
        raise ValueError(f"not a local display: {text!r}")
    return int(number)


_FAMILY_LOCAL = 256


def cookie_in(data: bytes, number: int | None = None) -> bytes | None:
    """The MIT-MAGIC-COOKIE-1 in an Xauthority file's ``data``: the first one, or (``number``)
    the one a client of display ``number`` on this machine would use; None if there is none.
    ValueError if ``data`` is not an Xauthority file."""
    offset = 0
    try:
        while offset < len(data):
            (family,) = struct.unpack_from(">H", data, offset)
            offset += 2
            fields = []
            for _ in range(4):  # address, display number, protocol name, cookie
                (size,) = struct.unpack_from(">H", data, offset)
                fields.append(data[offset + 2 : offset + 2 + size])
                offset += 2 + size
            _, entry_number, name, cookie = fields
            if name != COOKIE_PROTOCOL:
                continue
            if number is None or (
                family in (_FAMILY_LOCAL, _FAMILY_WILD)
                and entry_number in (b"", str(number).encode())
            ):
                return cookie
    except struct.error:
        raise ValueError("not an Xauthority file") from None
    return None


def read_cookie(path: str) -> bytes:
    """The MIT-MAGIC-COOKIE-1 of an Xauthority file of ours (see xauthority_entry)."""
    with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW)) as stream:
        cookie = cookie_in(stream.read())
    if cookie is None:
        raise ValueError(f"{path} holds no MIT-MAGIC-COOKIE-1")
    return cookie
