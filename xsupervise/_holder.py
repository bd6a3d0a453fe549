"""Who holds the control socket's path: decided from the kernel's tables, never by connecting.

Connecting to find out would be wrong twice over: when a socket unit holds the path, the
connection socket-activates the service (bringing its displays back), and SO_PEERCRED names
whoever called listen(), which for a socket unit is a daemon long dead (or its pid recycled).
So: the listening sockets bound to the path come from ``/proc/net/unix`` (flag
``__SO_ACCEPTCON``), and the processes holding them from ``/proc/PID/fd`` (``socket:[INODE]``),
as they are now. The lock file's holder comes from ``/proc/locks``.
"""

from __future__ import annotations

import os

_ACCEPTCON = 0x10000  # /proc/net/unix Flags: a listening socket


def listening_inodes(path: str) -> set[int]:
    """Socket inodes listening on ``path`` in this network namespace."""
    # The table holds the path as bound, which may name the same file through another
    # spelling (a symlinked /var/run -> /run): compare the real directory and the name.
    name, where = os.path.basename(path), _real_directory(path)
    found = set()
    with open("/proc/net/unix", "rb") as table:
        next(table, None)  # the header
        for line in table:
            fields = line.rstrip(b"\n").split(None, 7)
            if len(fields) != 8 or not int(fields[3], 16) & _ACCEPTCON:
                continue
            bound = os.fsdecode(fields[7])
            if os.path.basename(bound) == name and _real_directory(bound) == where:
                found.add(int(fields[6]))
    return found


def _real_directory(path: str) -> str:
    return os.path.realpath(os.path.dirname(os.path.abspath(path)))


def holders(inodes: set[int]) -> list[int]:
    """Pids of the processes that have one of these sockets open (those we may look at)."""
    targets = {f"socket:[{inode}]" for inode in inodes}
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry.name}/fd")
        except OSError:  # gone, or not ours to look at
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry.name}/fd/{fd}") in targets:
                    pids.append(int(entry.name))
                    break
            except OSError:
                continue
    return sorted(pids)


def lock_holder(fd: int) -> int | None:
    """The pid holding an flock on the file open as ``fd`` (from /proc/locks), or None."""
    info = os.fstat(fd)
    key = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        with open("/proc/locks") as table:
            for line in table:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == key:
                    return int(fields[4])
    except (OSError, ValueError):
        pass
    return None


def _command(pid: int) -> str:
    import psutil

    try:
        process = psutil.Process(pid)
        return " ".join(process.cmdline()) or process.name()
    except psutil.Error:
        return "?"


def describe(pids: list[int]) -> str:
    """Who holds a listening socket, for a refusal line: systemd (a socket unit) by name."""
    parts = []
    for pid in pids:
        command = _command(pid)
        if pid == 1:
            parts.append(
                "systemd (PID 1) for a socket unit: see `systemctl status xsupervise.socket`"
            )
        elif os.path.basename(command.split(" ", 1)[0]) == "systemd" and "--user" in command:
            parts.append(
                f"your systemd user manager (pid {pid}) for a socket unit: see "
                "`systemctl --user status xsupervise.socket`"
            )
        else:
            parts.append(f"pid {pid} ({command})")
    if not parts:
        return (
            "a process we may not look at (another user's, or systemd's socket unit: see "
            "`systemctl status xsupervise.socket`)"
        )
    return " and ".join(parts)
