"""The fallback boundary (see _containment): a process group and session of the server's own.

Its members are the processes whose session id is the server's pid, that are ours (uid) and
that started no earlier than the server: a session id is not reused while a member lives, and
each member is pinned by pidfd (and its start time checked) before any signal, so a stranger
is never hit. A setsid daemon leaves the session: only a cgroup or a PID namespace holds it.
"""

from __future__ import annotations

import os

from ._pinned import Pinned, proc_stat, terminate_pinned


def session_members(sid: int, ticks: int | None) -> list[tuple[int, int]]:
    """(pid, start ticks) of every live process of ours in session ``sid`` (zombies aside)."""
    uid = os.geteuid()
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = proc_stat(int(name))
        # After the command name: state, ppid, pgrp, session, ... starttime is field 19 here.
        if not fields or fields[0] == "Z" or int(fields[3]) != sid:
            continue
        if ticks is not None and int(fields[19]) < ticks:
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != uid:
                continue
        except OSError:
            continue
        members.append((int(name), int(fields[19])))
    return members


def sweep_session(sid: int, ticks: int, grace: float) -> list[int]:
    """Crash recovery: SIGTERM, then SIGKILL after ``grace``, every member of session ``sid``
    (the dead supervisor's server's)."""
    swept = []
    for pid, start in session_members(sid, ticks):
        process = Pinned.pin(pid, start)
        if process is not None:
            terminate_pinned(process, grace)
            process.close()
            swept.append(pid)
    return swept


def marked_processes(xauthority: str, ticks: int | None) -> list[tuple[int, int]]:
    """(pid, start ticks) of every live process of ours whose environment names the session's
    cookie (XAUTHORITY=path) and that started no earlier than ``ticks``: what a COMMAND
    started (it runs with the caller's terminal and signals, outside the server's boundary).
    The path holds the session's random token: no other session's process has it."""
    uid = os.geteuid()
    entry = os.fsencode(f"XAUTHORITY={xauthority}")
    found: list[tuple[int, int, int]] = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = proc_stat(int(name))
        if not fields or fields[0] == "Z" or (ticks is not None and int(fields[19]) < ticks):
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != uid:
                continue
            with open(f"/proc/{name}/environ", "rb") as stream:
                if entry not in stream.read().split(b"\0"):
                    continue
        except OSError:
            continue
        found.append((int(name), int(fields[1]), int(fields[19])))
    # Orphans only, and their children: a process whose parent lives on and is not marked
    # (say, jupyter-server-proxy's own child given the display) is its parent's business.
    marked = {pid for pid, _, _ in found}
    return [(pid, ticks) for pid, ppid, ticks in found if ppid in marked or _adopter(ppid)]


def _adopter(pid: int) -> bool:
    """Is ``pid`` what orphans are re-parented to: init, or a systemd (user) manager?"""
    if pid == 1:
        return True
    try:
        with open(f"/proc/{pid}/comm") as stream:
            return stream.read().strip() == "systemd"
    except OSError:
        return False
