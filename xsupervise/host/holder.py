"""Who holds a socket: the control socket's path, a display number. Decided from the kernel's
tables (one reader of ``/proc/net/unix``, ``unix_sockets``), never by connecting.

The control socket:

Connecting to find out would be wrong twice over: when a socket unit holds the path, the
connection socket-activates the service (bringing its displays back), and SO_PEERCRED names
whoever called listen(), which for a socket unit is a daemon long dead (or its pid recycled).
So: the listening sockets bound to the path come from ``/proc/net/unix`` (flag
``__SO_ACCEPTCON``), and the processes holding them from ``/proc/PID/fd`` (``socket:[INODE]``),
as they are now. The lock file's holder comes from ``/proc/locks``.

A display number: the processes holding its listening sockets.

Never by connecting or by SO_PEERCRED alone: SO_PEERCRED names whoever called listen(),
which for a server that listened and then forked (daemonized) is a process long gone, its
pid perhaps reused. The listening sockets named ``/tmp/.X11-unix/X<n>`` (or the abstract
``@/tmp/.X11-unix/X<n>``) come from ``/proc/net/unix``, their holders from ``/proc/PID/fd``
(``host.holder.holders``), as they are now. A process we may not look at is said to be one.
"""

from __future__ import annotations

import os

from .paths import socket_path

_ACCEPTCON = 0x10000  # /proc/net/unix Flags: a listening socket


def unix_sockets(listening_only: bool = True) -> dict[int, str]:
    """inode -> bound path (``@`` first for an abstract one) of the unix sockets of this
    network namespace that have a path, from ``/proc/net/unix``; with ``listening_only``,
    only those listening (flag ``__SO_ACCEPTCON``)."""
    found: dict[int, str] = {}
    with open("/proc/net/unix", "rb") as table:  # OSError: the caller says what it means
        next(table, None)  # the header
        for line in table:
            fields = line.rstrip(b"\n").split(None, 7)
            if len(fields) == 8 and (int(fields[3], 16) & _ACCEPTCON or not listening_only):
                found[int(fields[6])] = os.fsdecode(fields[7])
    return found


def listening_inodes(path: str) -> set[int]:
    """Socket inodes listening on ``path`` in this network namespace."""
    # The table holds the path as bound, which may name the same file through another
    # spelling (a symlinked /var/run -> /run): compare the real directory and the name.
    name, where = os.path.basename(path), _real_directory(path)
    return {
        inode
        for inode, bound in unix_sockets().items()
        if os.path.basename(bound) == name and _real_directory(bound) == where
    }


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


def lock_holder(path: str) -> int | None:
    """The pid holding an flock on the file ``path`` (from /proc/locks), or None."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
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


_COMMAND_CHARS = 120
_X_PREFIX = socket_path(0)[:-1]  # "/tmp/.X11-unix/X"


def _x_sockets(listening_only: bool = True) -> dict[int, str]:
    """inode -> path of the X sockets (``/tmp/.X11-unix/X<n>``, or the abstract
    ``@/tmp/.X11-unix/X<n>``); none if the table cannot be read."""
    try:
        sockets = unix_sockets(listening_only)
    except OSError:
        return {}
    return {
        inode: path for inode, path in sockets.items() if path.lstrip("@").startswith(_X_PREFIX)
    }


def display_inodes(number: int) -> set[int]:
    """Inodes of the sockets listening as display ``number`` (path or abstract)."""
    names = {f"{_X_PREFIX}{number}", f"@{_X_PREFIX}{number}"}
    return {inode for inode, path in _x_sockets().items() if path in names}


def bound_abstract_displays() -> set[int]:
    """Display numbers whose abstract X socket is bound right now: if it is, display n is
    live, whatever the files say (it vanishes with the process)."""
    prefix = f"@{_X_PREFIX}"
    return {
        int(path[len(prefix) :])
        for path in unix_sockets(listening_only=False).values()
        if path.startswith(prefix) and path[len(prefix) :].isdigit()
    }


def displays_held_by(pids: set[int]) -> set[int]:
    """Display numbers whose socket *file* ``/tmp/.X11-unix/X<n>`` is bound by one of
    ``pids`` (listening, or about to): what a server holds before it has told us its number."""
    numbers = {
        f"socket:[{inode}]": int(path[len(_X_PREFIX) :])
        for inode, path in _x_sockets(listening_only=False).items()
        if path.startswith(_X_PREFIX) and path[len(_X_PREFIX) :].isdigit()
    }
    held = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone, or not ours to look at
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link in numbers:
                held.add(numbers[link])
    return held


def _user(pid: int) -> str:
    import pwd

    try:
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return "?"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _command(pid: int) -> str:
    """Its command line, shortened for a one-line message."""
    import psutil

    try:
        process = psutil.Process(pid)
        command = " ".join(process.cmdline()) or process.name()
    except psutil.Error:
        return "?"
    if len(command) > _COMMAND_CHARS:
        command = command[: _COMMAND_CHARS - 3] + "..."
    return command


def started_by(pid: int, ancestor: int) -> bool:
    """``ancestor`` is among ``pid``'s living ancestors (its parent, the parent's parent...)."""
    import psutil

    try:
        return any(parent.pid == ancestor for parent in psutil.Process(pid).parents())
    except psutil.Error:
        return False


def describe_process(pid: int) -> str:
    """'pid 123 (user alice: Xvfb :5 -nolisten tcp)'."""
    return f"pid {pid} (user {_user(pid)}: {_command(pid)})"


def _carries(pid: int, argument: str) -> bool:
    """``argument`` is one of ``pid``'s command-line arguments."""
    import psutil

    try:
        return argument in psutil.Process(pid).cmdline()
    except psutil.Error:
        return False


def who_serves(
    number: int, our_server: int | None = None, our_cookie: str | None = None
) -> tuple[str, bool]:
    """(who holds display ``number``'s listening sockets, as words; whether one of them is
    our server's: started by ``our_server``, or given our session's cookie file
    ``our_cookie`` (a path nobody else knows; what a launcher that exited passed on to the X
    server it left behind)). Says so when nobody we may look at holds them."""
    inodes = display_inodes(number)
    if not inodes:
        return "a process that has gone since (nothing listens as that display now)", False
    pids = holders(inodes)
    if not pids:
        return (
            "a process we may not look at (another user's; as root, `ss -xlp` names it)",
            False,
        )
    # Described first: a holder found ours below was alive (and described) a moment before,
    # so the line never names ours with a command line it could not read (it may be exiting).
    described = " and ".join(describe_process(pid) for pid in pids)
    ours = any(
        (our_server is not None and started_by(pid, our_server))
        or (our_cookie is not None and _carries(pid, our_cookie))
        for pid in pids
    )
    return described, ours


def stop_holders(number: int, since: int | None, grace: float = 2.0) -> None:
    """Stop (TERM, grace, KILL, each pinned) what serves display ``number`` and started no
    earlier than ``since``: an X server our server put in the background (see who_serves)."""
    from .group import terminate_all
    from .pinned import start_ticks

    found = [
        (pid, ticks)
        for pid in holders(display_inodes(number))
        if (ticks := start_ticks(pid)) is not None and (since is None or ticks >= since)
    ]
    terminate_all(found, grace)
