"""The daemon's control socket: taken from systemd, or bound by us, never both, never twice.

Socket activation (``xsupervise.socket``): systemd passes the listening socket; we take the
one named ``control`` (FileDescriptorName=, i.e. LISTEN_FDNAMES), or the only one passed,
check that it is a listening Unix stream socket, and never bind another.

Otherwise we bind PATH ourselves, under an flock on PATH.lock held for our lifetime (two
daemons starting at once cannot both decide the file is stale); both files go at a clean
stop. A socket file nobody listens on is stale and replaced; one a live process listens on
(the kernel's socket table says so: we never connect, which would socket-activate the
service) is refused, naming the processes that hold it now, systemd's socket unit by name.
"""

from __future__ import annotations

import os
import socket
import stat
import struct

from .errors import EnvironmentProblem, UsageError
from .paths import lock_file, remove_file

FD_NAME = "control"  # FileDescriptorName= in xsupervise.socket


def connect(path: str, timeout: float | None) -> socket.socket:
    """A client's connection to the control socket at ``path``; ``timeout`` for each later
    operation. The connect itself blocks, bounded by SO_SNDTIMEO: on a unix socket a
    non-blocking connect fails with EAGAIN at once whenever the daemon is a few accepts
    behind (its listen queue full), where a blocking one waits for room. Raises OSError;
    BlockingIOError: still no room after ``timeout``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        if timeout is not None:
            whole = int(timeout)
            bound = struct.pack("ll", whole, int((timeout - whole) * 1e6))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, bound)
        sock.connect(path)
        sock.settimeout(timeout)
    except BaseException:
        sock.close()
        raise
    return sock


class SocketInUse(EnvironmentProblem):
    """Another live process serves the control socket's path."""


def who_serves(path: str) -> list[int] | None:
    """The pids holding a socket that listens on ``path`` (systemd's PID 1 or user manager for
    a socket unit), [] when one listens but its holder is not ours to see, None when nothing
    listens. From the kernel's tables (host/sockets.py): connecting would socket-activate."""
    from .sockets import holders, listening_inodes

    try:
        inodes = listening_inodes(path)
    except OSError as exc:
        raise EnvironmentProblem(
            f"cannot read /proc/net/unix to see who serves {path}: {exc.strerror}; "
            "is /proc mounted?"
        ) from None
    return holders(inodes) if inodes else None


class Listener:
    """The listening control socket and how we came by it."""

    def __init__(self, sock: socket.socket, path: str | None, activated: bool, lock_fd: int = -1):
        self.sock = sock
        self.path = path
        self.activated = activated
        self.lock_fd = lock_fd
        self._inode = None if activated or path is None else os.stat(path).st_ino

    def __repr__(self) -> str:
        how = "from systemd" if self.activated else "bound by us"
        return f"<Listener {self.path or '(unnamed)'} {how}>"

    def close(self) -> None:
        """Stop listening. A socket we bound is removed (if it is still ours); systemd's is not."""
        self.sock.close()
        if not self.activated and self.path:
            try:
                if os.lstat(self.path).st_ino == self._inode:
                    remove_file(self.path)
            except FileNotFoundError:
                pass
        if self.lock_fd >= 0:
            if self.path:  # removed while still held: see _lock_file
                _remove_if_same(self.path + ".lock", os.fstat(self.lock_fd).st_ino)
            os.close(self.lock_fd)  # releases the lock
            self.lock_fd = -1


def _remove_if_same(path: str, inode: int) -> None:
    try:
        if os.lstat(path).st_ino == inode:
            remove_file(path)
    except FileNotFoundError:
        pass


def from_systemd() -> Listener | None:
    """The control socket systemd passed us (LISTEN_FDS), or None when not socket-activated."""
    if not os.environ.get("LISTEN_FDS"):
        return None
    from systemd.daemon import is_socket_unix, listen_fds_with_names

    passed = listen_fds_with_names()  # {fd: name}; also unsets LISTEN_* for our children
    if not passed:
        return None
    named = [fd for fd, name in passed.items() if name == FD_NAME]
    if len(named) == 1:
        chosen = named[0]
    elif len(passed) == 1:
        chosen = next(iter(passed))
    else:
        raise UsageError(
            f"systemd passed {len(passed)} sockets ({', '.join(passed.values())}) "
            f"and none is named '{FD_NAME}'; set FileDescriptorName={FD_NAME} in "
            "the .socket unit."
        )
    if not is_socket_unix(chosen, socket.SOCK_STREAM, 1):
        raise UsageError(
            f"the socket systemd passed (fd {chosen}) is not a listening Unix "
            "stream socket; use ListenStream=/path in the .socket unit."
        )
    for fd in passed:
        if fd != chosen:
            os.close(fd)
    sock = socket.socket(fileno=chosen)
    os.set_inheritable(chosen, False)
    name = sock.getsockname()
    return Listener(sock, name if isinstance(name, str) and name else None, activated=True)


_MAX_PATH = 107  # sun_path holds 108 bytes with the terminating NUL


def bind(path: str) -> Listener:
    """Bind and listen on ``path`` (0600), replacing a stale socket file; refuse a live one."""
    if len(os.fsencode(path)) > _MAX_PATH:
        raise UsageError(
            f"control socket path {path} is longer than {_MAX_PATH} bytes, the "
            "most a Unix socket address holds; choose a shorter --socket."
        )
    lock_fd = _lock_file(path)
    try:
        return _bind_locked(path, lock_fd)
    except BaseException:
        _remove_if_same(path + ".lock", os.fstat(lock_fd).st_ino)  # ours: we hold it
        os.close(lock_fd)
        raise


def _lock_file(path: str) -> int:
    """Hold PATH.lock (see paths.lock_file); a refusal in one line if we cannot."""
    try:
        lock_fd = lock_file(path + ".lock", wait=False)
    except BlockingIOError:
        from .sockets import describe, lock_holder

        holder = lock_holder(path + ".lock")
        who = describe([holder]) if holder is not None else "another process"
        raise SocketInUse(
            f"control socket {path} is held by {who}; stop that xsupervise "
            "serve first, or give this one another --socket."
        ) from None
    except OSError as exc:
        raise EnvironmentProblem(
            f"cannot create {path}.lock: {exc.strerror}; check that "
            f"{os.path.dirname(path) or '.'} exists and is ours, or choose another --socket."
        ) from None
    owner = os.fstat(lock_fd).st_uid
    if owner != os.getuid():
        os.close(lock_fd)
        raise EnvironmentProblem(
            f"{path}.lock belongs to uid {owner}, not to us; someone "
            "else controls that directory: choose another --socket."
        )
    return lock_fd


def _bind_locked(path: str, lock_fd: int) -> Listener:
    """The rest of bind(), holding the lock (the caller closes it on failure)."""
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
    serving = who_serves(path) if os.path.lexists(path) else None
    if serving is not None:
        from .sockets import describe

        raise SocketInUse(
            f"control socket {path} is already served by {describe(serving)}; only one may "
            "listen on it: if that is a socket unit, start xsupervise.service instead of a "
            "second daemon; otherwise stop it or use --socket."
        )
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(info.st_mode):
            raise EnvironmentProblem(
                f"{path} exists and is not a socket; remove it or choose another --socket."
            )
        try:
            os.unlink(path)  # stale: nothing accepts connections on it
        except OSError as exc:  # e.g. another user's, in a sticky directory
            raise EnvironmentProblem(
                f"{path} is a stale socket (uid {info.st_uid}) that we cannot remove "
                f"({exc.strerror}); remove it as its owner or choose another --socket."
            ) from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise EnvironmentProblem(
            f"cannot listen on {path}: {exc.strerror}; choose another --socket."
        ) from None
    finally:
        os.umask(old_umask)
    return Listener(sock, path, activated=False, lock_fd=lock_fd)
