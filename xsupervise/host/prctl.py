"""Small kernel helpers: prctl (die with the parent, subreaper), inotify, peer credentials,
exit statuses in words. Kept apart from launch.process so that each stays readable."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


# A stop signal that reaches a child between fork and exec would run our handler there, and
# the handler writes to our event loop's wakeup fd, which the child still shares: the daemon
# would see a stop signal it was never sent (a "second" SIGTERM cuts every grace short). So
# the spawning thread holds them blocked across the fork (see held_stop_signals), and the
# child restores the default action before it unblocks them: one sent meanwhile stops it.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def held_stop_signals() -> set[int | signal.Signals]:
    """Block the stop signals in this thread; return the mask to restore after the fork."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def die_with_parent(
    parent_pid: int,
    deathsig: int,
    enter: Callable[[], None] | None = None,
    mask: set[int | signal.Signals] | None = None,
) -> Callable[[], None]:
    def setup() -> None:  # runs in the child between fork and exec
        if enter is not None:  # first: it may hand over to a copy of us (fork_into_cgroup)
            enter()  # a boundary's; raises: Popen then raises SubprocessError (see spawn)
        # PR_SET_PDEATHSIG delivers ``deathsig`` when the *thread* that forked us exits;
        # so processes must be spawned from a thread that outlives them.
        if _libc.prctl(_PR_SET_PDEATHSIG, deathsig, 0, 0, 0) != 0:
            os._exit(126)
        # If the parent died before prctl took effect, no signal will ever come: leave now.
        if os.getppid() != parent_pid:
            os._exit(126)
        if mask is not None:  # last: a stop signal held since the fork now stops us
            for signum in STOP_SIGNALS:
                if callable(signal.getsignal(signum)):
                    signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    return setup


CLONE_NEWPID = 0x20000000


def new_pid_namespace_for_children() -> int:
    """The next child this *thread* forks is the init (pid 1) of a new PID namespace, and its
    descendants live there. Undo with restore_pid_namespace(fd), the fd returned: until
    then every fork of this thread goes into that namespace. Other threads are not affected.
    Raises OSError (EPERM without CAP_SYS_ADMIN: a user namespace is then needed)."""
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    if _libc.unshare(CLONE_NEWPID) != 0:
        error = ctypes.get_errno()
        os.close(own)
        raise OSError(error, os.strerror(error))
    return own


def restore_pid_namespace(own: int) -> None:
    """This thread's children are born in our own PID namespace again."""
    try:
        if _libc.setns(own, CLONE_NEWPID) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"cannot return to our own PID namespace: {os.strerror(error)}")
    finally:
        os.close(own)


_SYS_CLONE3 = 435  # the same number on every architecture of the generic table (Linux 5.3)
_CLONE_PARENT = 0x8000
_CLONE_INTO_CGROUP = 0x200000000


class _CloneArgs(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            *("flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack"),
            *("stack_size", "tls", "set_tid", "set_tid_size", "cgroup"),
        )
    ]


_CLONE_NEWUSER = 0x10000000


def fork_into_new_namespaces() -> int:
    """fork(), but the copy is born in a new user namespace and a new PID namespace (pid 1
    there), and is a child of *our* parent: 0 in the copy, its pid here. As for
    fork_into_cgroup, only for a child of ours between fork and exec. Its uid and gid maps
    are unwritten (see launch.containment): it must wait for them. Raises OSError (EPERM,
    ENOSPC: user namespaces are refused here)."""
    return _clone3(_CloneArgs(flags=_CLONE_NEWUSER | CLONE_NEWPID | _CLONE_PARENT))


def _clone3(args: _CloneArgs) -> int:
    pid = _libc.syscall(ctypes.c_long(_SYS_CLONE3), ctypes.byref(args), ctypes.sizeof(args))
    if pid < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"clone3 failed: {os.strerror(error)}")
    return int(pid)


def fork_into_cgroup(cgroup_fd: int) -> int:
    """fork(), but the copy is born in the cgroup ``cgroup_fd`` (a directory fd) and is a
    child of *our* parent (CLONE_PARENT, with our exit signal): 0 in the copy, its pid here.

    Only for a child of ours between fork and exec, which has one thread: the copy comes back
    into Python as os.fork's would, without its bookkeeping. Being born in a cgroup is what
    makes this worth it: moving a process in (cgroup.procs) waits for an RCU grace period,
    1 to 25 ms here; this costs a fork. Raises OSError: ENOSYS before Linux 5.7 (then
    move in), EBUSY/EOPNOTSUPP for a cgroup that cannot hold processes."""
    return _clone3(_CloneArgs(flags=_CLONE_INTO_CGROUP | _CLONE_PARENT, cgroup=cgroup_fd))


def signal_when_parent_dies(parent_pid: int, signum: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send us ``signum`` when our parent (the thread that forked us) exits.

    ``parent_pid`` is the parent as first seen; False if it is already gone (we have been
    re-parented), in which case no signal will ever come.
    """
    if _libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    return os.getppid() == parent_pid


def become_subreaper() -> None:
    """Orphans among our descendants (what COMMAND started and left) become our children,
    not init's: we can then stop them without any risk of pid reuse (see stop_adopted)."""
    if _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


IN_MODIFY, IN_MOVED_TO, IN_CREATE = 0x2, 0x80, 0x100


def inotify_watch(path: str, mask: int) -> int:
    """A non-blocking inotify fd that becomes readable on ``mask`` events at ``path`` (the
    stdlib has no inotify). Raises OSError."""
    fd = int(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1 failed")
    if _libc.inotify_add_watch(fd, os.fsencode(path), mask) < 0:
        errno = ctypes.get_errno()
        os.close(fd)
        raise OSError(errno, f"cannot watch {path}")
    return fd


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a connected Unix socket: for a
    client's connection, the process that called listen(); for a server's, the one that
    connected (SO_PEERCRED, fixed by the kernel at that moment)."""
    import socket
    import struct

    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)


def describe_status(returncode: int) -> str:
    """'exited with status 1' / 'was killed by SIGKILL', for log lines."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


def shell_status(returncode: int) -> int:
    """The exit code a shell would report: the status, or 128+signal."""
    return 128 - returncode if returncode < 0 else returncode
