"""Is a display number served by a live X server? Decided from the kernel, not from files.

On Linux an X server also listens on the abstract socket ``@/tmp/.X11-unix/X<n>``, which
vanishes with the process: if it is bound, display n is live, whatever the files say.
"""

from __future__ import annotations

import os
import stat

from .xserver import X11_UNIX_DIR, socket_path


def bound_abstract_displays() -> set[int]:
    """Display numbers whose abstract X socket is bound right now (from /proc/net/unix)."""
    prefix = f"@{X11_UNIX_DIR}/X"
    numbers = set()
    with open("/proc/net/unix", "rb") as table:
        for line in table:
            path = line.rsplit(None, 1)[-1].decode("latin-1")
            if path.startswith(prefix) and path[len(prefix):].isdigit():
                numbers.add(int(path[len(prefix):]))
    return numbers


def remove_dead_socket(number: int, inode: int | None, spawned_at_wall: float | None = None) -> bool:
    """Remove /tmp/.X11-unix/X<number> after *our* server died without removing it (SIGKILL).

    Only a socket file we own, that nobody serves, and that is the very file our server made:
    the inode we saw when we verified it, or (if it never got that far) one created after we
    spawned the server. Never follows a symlink. Returns True if it removed the file.
    """
    path = socket_path(number)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.getuid():
        return False
    if inode is not None:
        if info.st_ino != inode:
            return False
    elif spawned_at_wall is None or info.st_ctime < spawned_at_wall - 1:
        return False
    if number in bound_abstract_displays():
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
