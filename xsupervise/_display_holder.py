"""Who serves a display number: the processes holding its listening sockets, from /proc.

Never by connecting or by SO_PEERCRED alone: SO_PEERCRED names whoever called listen(),
which for a server that listened and then forked (daemonized) is a process long gone, its
pid perhaps reused. The listening sockets named ``/tmp/.X11-unix/X<n>`` (or the abstract
``@/tmp/.X11-unix/X<n>``) come from ``/proc/net/unix``, their holders from ``/proc/PID/fd``
(``_holder.holders``), as they are now. A process we may not look at is said to be one.
"""

from __future__ import annotations

import os

from ._holder import holders

_ACCEPTCON = 0x10000  # /proc/net/unix Flags: a listening socket
_COMMAND_CHARS = 120
_X_PREFIX = "/tmp/.X11-unix/X"


def _listening_x_sockets(listening_only: bool = True) -> dict[int, str]:
    """inode -> bound path of every listening X socket (``/tmp/.X11-unix/X<n>``, or the
    abstract ``@/tmp/.X11-unix/X<n>``), from ``/proc/net/unix``; with ``listening_only``
    False, also those bound but not yet listening."""
    found: dict[int, str] = {}
    try:
        with open("/proc/net/unix", "rb") as table:
            next(table, None)  # the header
            for line in table:
                fields = line.rstrip(b"\n").split(None, 7)
                listening = int(fields[3], 16) & _ACCEPTCON if len(fields) == 8 else 0
                if len(fields) == 8 and (listening or not listening_only):
                    path = os.fsdecode(fields[7])
                    if path.lstrip("@").startswith(_X_PREFIX):
                        found[int(fields[6])] = path
    except OSError:
        pass
    return found


def listening_inodes(number: int) -> set[int]:
    """Inodes of the sockets listening as display ``number`` (path or abstract)."""
    names = {f"{_X_PREFIX}{number}", f"@{_X_PREFIX}{number}"}
    return {inode for inode, path in _listening_x_sockets().items() if path in names}


def displays_held_by(pids: set[int]) -> set[int]:
    """Display numbers whose socket *file* ``/tmp/.X11-unix/X<n>`` is bound by one of
    ``pids`` (listening, or about to): what a server holds before it has told us its number."""
    numbers = {
        f"socket:[{inode}]": int(path[len(_X_PREFIX) :])
        for inode, path in _listening_x_sockets(listening_only=False).items()
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
    inodes = listening_inodes(number)
    if not inodes:
        return "a process that has gone since (nothing listens as that display now)", False
    pids = holders(inodes)
    if not pids:
        return (
            "a process we may not look at (another user's; as root, `ss -xlp` names it)",
            False,
        )
    ours = any(
        (our_server is not None and started_by(pid, our_server))
        or (our_cookie is not None and _carries(pid, our_cookie))
        for pid in pids
    )
    return " and ".join(describe_process(pid) for pid in pids), ours


def stop_holders(number: int, since: int | None, grace: float = 2.0) -> None:
    """Stop (TERM, grace, KILL, each pinned) what serves display ``number`` and started no
    earlier than ``since``: an X server our server put in the background (see who_serves)."""
    from ._group import terminate_all
    from ._pinned import start_ticks

    found = [
        (pid, ticks)
        for pid in holders(listening_inodes(number))
        if (ticks := start_ticks(pid)) is not None and (since is None or ticks >= since)
    ]
    terminate_all(found, grace)
