"""Processes we did not spawn (or no longer parent): identified by pid *and* start time, held
by a pidfd, so that a signal can never reach another process that reused the pid. Waiting here
blocks: these run in the CLI, or in a worker thread (an Offload), never on an event loop."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Sequence

from .steps import Wait, poll_ready


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (which may contain spaces)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            raw = stream.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(b")") + 2 :].decode().split()


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (field 22 of /proc/PID/stat); None if gone.

    psutil's create_time() is this plus the boot time; we read the field ourselves because
    importing psutil costs ~13 ms of CPU on every `xsupervise run`, on a machine whose other
    core the X server is busy starting on.
    """
    fields = proc_stat(pid)
    return int(fields[19]) if fields else None


def same_process(pid: int | None, ticks: int | None) -> bool:
    """True if ``pid`` runs (not a zombie) and started at ``ticks``: not a reuse of the pid."""
    if not pid or ticks is None:
        return False
    fields = proc_stat(pid)
    if not fields:
        return False
    return fields[0] != "Z" and int(fields[19]) == ticks


def is_zombie(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is None or stat[0] in ("Z", "X")


class Pinned:
    """A process we did not spawn (or no longer parent), held by a pidfd.

    ``pin`` opens the pidfd first and checks the start time afterwards: if they match, the
    pidfd refers to exactly that process, and signals sent through it can never reach a
    process that later reuses the pid.
    """

    def __init__(self, pid: int, pidfd: int):
        self.pid = pid
        self.pidfd = pidfd

    def __repr__(self) -> str:
        return f"<Pinned pid {self.pid}>"

    @classmethod
    def pin(cls, pid: int | None, ticks: int | None) -> Pinned | None:
        """A pidfd for ``pid`` if it is still the process that started at ``ticks``."""
        if not pid or ticks is None:
            return None
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        if same_process(pid, ticks):
            return cls(pid, pidfd)
        os.close(pidfd)
        return None

    def signal(self, signum: int) -> None:
        try:
            signal.pidfd_send_signal(self.pidfd, signum)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


def wait_exited(processes: Sequence[Pinned], timeout: float) -> list[Pinned]:
    """Wait (on their pidfds) until all have exited or ``timeout`` passes; return the living.
    Blocking: call it from a thread (an Offload) or the CLI, never on an event loop."""
    deadline = time.monotonic() + timeout
    living = {process.pidfd: process for process in processes}
    while living:
        ready = poll_ready(Wait(tuple(living), deadline))
        if not ready:
            break
        for fd in ready:
            living.pop(fd)
    return list(living.values())


def terminate_pinned(process: Pinned, grace: float) -> bool:
    """SIGTERM, wait up to ``grace``, then SIGKILL (and wait up to ``grace`` more); True if it
    ended within the first grace. Blocking, like wait_exited."""
    process.signal(signal.SIGTERM)
    if not wait_exited([process], grace):
        return True
    process.signal(signal.SIGKILL)
    wait_exited([process], grace)
    return False


def _children_of_ours() -> set[int]:
    pids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as listing:
                pids.update(int(pid) for pid in listing.read().split())
        except FileNotFoundError:  # a thread that just ended
            continue
    return pids


# Pids of every Child (see launch.process) not reaped yet: reap_orphans leaves those to their owner.
UNREAPED_CHILDREN: set[int] = set()


def reap_orphans() -> list[int]:
    """Reap exited children that are no Child of ours: orphans the kernel hands to PID 1 of a
    PID namespace (a container's init) or to a subreaper. Never blocks; returns their pids."""
    reaped = []
    for pid in _children_of_ours() - UNREAPED_CHILDREN:
        if is_zombie(pid):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    reaped.append(pid)
            except ChildProcessError:  # reaped meanwhile by its owner
                pass
    return reaped


def stop_adopted(grace: float, on_found: Callable[[list[int]], None] | None = None) -> list[int]:
    """SIGTERM every child we still have (all of them orphans we adopted as a subreaper:
    call this after our own children are reaped), SIGKILL those left after ``grace``, reap
    them all. They are unreaped children of ours, so their pids cannot have been reused.
    ``on_found`` is shown each round's running ones before they are signalled (see
    session.leftovers). Returns the pids that were still running."""
    running: list[int] = []
    for _ in range(3):  # adopted processes may still be forking; a few rounds catch them
        adopted = []
        for pid in _children_of_ours():
            try:
                adopted.append(Pinned(pid, os.pidfd_open(pid)))
            except ProcessLookupError:
                continue
        if not adopted:
            break
        found = [process.pid for process in adopted if not is_zombie(process.pid)]
        if on_found is not None:
            on_found(found)
        running += found
        for process in adopted:
            process.signal(signal.SIGTERM)  # a zombie ignores it
        for process in wait_exited(adopted, grace):
            process.signal(signal.SIGKILL)
        for process in adopted:
            process.close()
            try:
                os.waitpid(process.pid, 0)
            except ChildProcessError:
                pass
    return running
