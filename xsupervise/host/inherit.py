"""What a child we start with ``os.posix_spawn`` would inherit from us, reset as subprocess
does (``close_fds=True``, ``restore_signals=True``), for the paths that spawn without it: a
PID namespace's init (launch.process) and COMMAND on a leased display (cli.pool_run)."""

from __future__ import annotations

import os
import signal

# Python ignores these; a child must not start with them ignored.
RESTORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


def inheritable_fds() -> list[int]:
    """Our descriptors above 2 that an exec would keep (Python makes its own close-on-exec;
    these came from our parent, or were made inheritable on purpose)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if fd > 2 and os.get_inheritable(fd):
                found.append(fd)
        except OSError:  # the listing's own descriptor, closed by now
            pass
    return found


def close_inherited() -> list[tuple[int, int]]:
    """posix_spawn file actions that close those descriptors in the child, ours untouched."""
    return [(os.POSIX_SPAWN_CLOSE, fd) for fd in inheritable_fds()]


def pipe_above_2() -> tuple[int, int]:
    """A close-on-exec pipe whose ends are above 2: a child's 0-2, made before our code runs
    in it, must not overwrite them (our own 0-2 may be closed, so a new pipe may get them)."""
    import fcntl

    ends = os.pipe2(os.O_CLOEXEC)
    moved: list[int] = []
    try:
        for end in ends:
            moved.append(fcntl.fcntl(end, fcntl.F_DUPFD_CLOEXEC, 3))
    except BaseException:
        for end in moved:
            os.close(end)
        raise
    finally:
        for end in ends:
            os.close(end)
    return moved[0], moved[1]
