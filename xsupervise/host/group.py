"""The fallback boundary (see launch.containment): a process group and session of the server's own;
and the crash recovery's sweeps of what a dead supervisor's session left.

A session's members are the processes whose session id is the server's pid, that are ours
(uid; any uid for root, whose server may have changed its own) and that started no earlier
than the server. A session id is not reused while a member lives; once the leader and all
members are gone its number may be, by a new session leader: so a sweep goes ahead only while
that pid is free or still the server (see session_is_ours).
Each process is pinned by pidfd (and its start time checked) before any signal, so a stranger
is never hit. A setsid daemon leaves the session: only a cgroup or a PID namespace holds it.
"""

from __future__ import annotations

import os
import signal

from .pinned import Pinned, proc_stat, start_ticks, wait_exited

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

# In COMMAND's environment (and so its descendants'): the session's token. After a SIGKILLed
# supervisor, what carries it is what COMMAND left (see marked_processes).
COMMAND_MARK = "XSUPERVISE_COMMAND_OF"


def session_members(sid: int, ticks: int | None) -> list[tuple[int, int]]:
    """(pid, start ticks) of every live process of ours in session ``sid`` (zombies aside)."""
    return [(pid, start) for pid, _, start in _ours(lambda fields, _: int(fields[3]) == sid, ticks)]


def session_is_ours(sid: int, ticks: int) -> bool:
    """May session ``sid`` (a dead server's, which started at ``ticks``) be swept? Only while
    pid ``sid`` is free (the session id is then still held by members, or by no one) or is
    still that server; another process there may lead a new session of the same number."""
    now = start_ticks(sid)
    return now is None or now == ticks


def sweep_session(sid: int, ticks: int, grace: float) -> list[int]:
    """Crash recovery: stop every member of session ``sid`` (a dead supervisor's server's)."""
    if not session_is_ours(sid, ticks):
        return []
    return terminate_all(session_members(sid, ticks), grace)


def marked_processes(token: str, ticks: int | None) -> list[tuple[int, int]]:
    """(pid, start ticks) of every live process of ours that carries COMMAND_MARK=``token``
    and started no earlier than ``ticks`` (its supervisor): what a COMMAND started. It runs
    with the caller's terminal and signals, outside the server's boundary."""
    entry = os.fsencode(f"{COMMAND_MARK}={token}")

    def marked(_fields: list[str], name: str) -> bool:
        try:
            with open(f"/proc/{name}/environ", "rb") as stream:
                return entry in stream.read().split(b"\0")
        except OSError:
            return False

    return [(pid, start) for pid, _, start in _ours(marked, ticks)]


def terminate_all(processes: list[tuple[int, int]], grace: float) -> list[int]:
    """SIGTERM every (pid, ticks) still that process, wait up to ``grace`` for all together,
    SIGKILL the rest; return the pids signalled."""
    pinned = [p for pid, ticks in processes if (p := Pinned.pin(pid, ticks)) is not None]
    try:
        for process in pinned:
            process.signal(signal.SIGTERM)
        for process in wait_exited(pinned, grace):
            process.signal(signal.SIGKILL)
        wait_exited(pinned, grace)
    finally:
        for process in pinned:
            process.close()
    return [process.pid for process in pinned]


def _ours(match: Callable[[list[str], str], bool], ticks: int | None) -> list[tuple[int, int, int]]:
    """(pid, ppid, start ticks) of each live process of our uid (any, for root), started no
    earlier than ``ticks``, for which ``match(stat fields, pid as text)`` holds."""
    uid = os.geteuid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = proc_stat(int(name))
        # After the command name: state, ppid, pgrp, session, ... starttime is field 19 here.
        if not fields or fields[0] == "Z" or (ticks is not None and int(fields[19]) < ticks):
            continue
        try:
            # Root's sessions may hold a server that changed its uid (setuid, setpriv).
            if (uid != 0 and os.stat(f"/proc/{name}").st_uid != uid) or not match(fields, name):
                continue
        except OSError:
            continue
        found.append((int(name), int(fields[1]), int(fields[19])))
    return found
