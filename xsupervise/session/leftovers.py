"""What ``run``/``start -- COMMAND`` finds still running at its end, and whose it is.

The supervisor of a COMMAND is a subreaper: whatever COMMAND or the X server leaves running
(a background job, a compositor's helper, a daemon) becomes its child, and it stops them all
(``stop_adopted``). By then their parents are gone, so each is attributed by what the kernel
kept, best first, and never by a guess:

1. ancestry seen while their parents ran: the X server's descendants (pid and start time) are
   noted when it becomes ready and when the session begins to stop (``Lineage.snapshot``),
   and so are the orphans we adopted before COMMAND started (only the server ran then);
2. session and process group: the X server runs in a session of its own (and the wm in
   another), COMMAND in ours; a process can leave a session only for a new one (setsid);
3. environment: COMMAND got ``XAUTHORITY`` naming this session's cookie, the server did not;
4. the leader of its (new) session, if that was a descendant seen in 1.

What none of these places is reported as such ("of unknown origin"), not blamed on COMMAND.
"""

from __future__ import annotations

import os

from ..host import log
from ..host.pinned import UNREAPED_CHILDREN, _children_of_ours, proc_stat, stop_adopted

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .clock import LaunchedServer

COMMAND = "COMMAND"


def _descendants(pid: int) -> list[int]:
    """``pid``'s living descendants, from /proc/PID/task/TID/children (a few reads)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as listing:
                    children = [int(child) for child in listing.read().split()]
            except OSError:
                continue
            found += children
            pending += children
    return found


def _command_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as stream:
            return stream.read().strip() or "?"
    except OSError:
        return "?"


def _environment_has(pid: int, entry: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as stream:
            return entry in stream.read().split(b"\0")
    except OSError:  # gone, or not ours to read (a setuid program)
        return False


class Lineage:
    """What tells the X server's processes from COMMAND's, gathered while they run."""

    def __init__(self) -> None:
        self.roots: dict[int, str] = {}  # a session/group leader we spawned -> its side's name
        self.seen: dict[tuple[int, int], str] = {}  # (pid, start ticks) of a descendant -> side
        self.seen_pids: dict[int, str] = {}
        self.cookie_entry = b""
        self.found: dict[int, tuple[str, str]] = {}  # leftover pid -> (side, command name)
        self.without_command = False  # `start` with no COMMAND: every orphan is a server's

    def add_root(self, pid: int, side: str) -> None:
        """``pid`` (a process we spawned in a session of its own) and its descendants are
        ``side``'s ("X server pid N", "window manager pid N")."""
        self.roots[pid] = side

    def note_server(self, server: LaunchedServer, command_started: bool) -> None:
        """A server of the session is ready: note it, its wm, its cookie and descendants.
        Before COMMAND has started, every orphan we adopted came from the server (a helper
        that double-forked while it started): it is the server's too."""
        side = f"X server pid {server.pid}"
        self.add_root(server.pid, side)
        if not command_started:
            for pid in _children_of_ours() - UNREAPED_CHILDREN:
                self._see(pid, side)
        wm = getattr(server, "wm", None)  # the wm setting's window manager (see launch/wm.py)
        if wm is not None:
            self.add_root(wm.pid, f"window manager pid {wm.pid}")
        self.cookie_entry = os.fsencode(f"XAUTHORITY={server.auth_path}")
        self.snapshot()

    def snapshot(self) -> None:
        """Note the living descendants of every root, for once they are orphaned."""
        for root, side in self.roots.items():
            for pid in _descendants(root):
                self._see(pid, side)

    def _see(self, pid: int, side: str) -> None:
        stat = proc_stat(pid)
        if stat is not None:
            self.seen[(pid, int(stat[19]))] = side
            self.seen_pids[pid] = side

    def side_of(self, pid: int) -> str:
        """Whose ``pid`` is: a root's side, COMMAND, or "" (unknown)."""
        stat = proc_stat(pid)
        if stat is None:
            return ""
        group, session = int(stat[2]), int(stat[3])
        side = self.seen.get((pid, int(stat[19])))
        if side is None:
            side = self.roots.get(session) or self.roots.get(group)
        if side is None and (session == os.getsid(0) or group == os.getpgid(0)):
            side = COMMAND  # our session: only COMMAND was started in it
        if side is None and self.cookie_entry and _environment_has(pid, self.cookie_entry):
            side = COMMAND
        if side is None:
            side = self.seen_pids.get(session, "")  # its session's leader was seen in 1.
        if not side and self.without_command:
            side = "The X server"  # a server that was never ready, or left no trace
        return side

    def note(self, pids: list[int]) -> None:
        """For stop_adopted: attribute each leftover before it is signalled."""
        for pid in pids:
            if pid not in self.found:
                self.found[pid] = (self.side_of(pid), _command_name(pid))

    def report(self) -> list[str]:
        """One line per side: what it left running (pids and command names)."""
        sides: dict[str, list[str]] = {}
        for pid, (side, name) in sorted(self.found.items()):
            sides.setdefault(side, []).append(f"pid {pid} {name}")
        lines = []
        for side, processes in sides.items():
            who = side or "Something of unknown origin (neither the X server's nor COMMAND's)"
            lines.append(
                f"{who} left {len(processes)} process(es) running ({', '.join(processes)}); "
                "stopped them."
            )
        return lines


def stop_leftovers(grace: float, lineage: Lineage) -> None:
    """Stop every orphan we adopted (see stop_adopted) and say whose each one was."""
    stop_adopted(grace, lineage.note)
    for line in lineage.report():
        log.get().warning("%s", line)
