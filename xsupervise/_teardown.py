"""Teardown of a boundary (see _containment): wait for *every* process of a spawn, not only
the first, then kill what is left, as steps (see _steps.py) that never block their driver.

- A PID namespace: our child (the "outside" shell) exits only once its init has seen every
  process of the namespace gone, so waiting for our child is enough.
- A cgroup: wait (inotify on cgroup.events) until it is empty; ``cgroup.kill``; remove it.
- The fallback, a process group and session: poll /proc for members of the session every
  _POLL s (there is no event for "a session emptied"); SIGKILL them, pinned, when time is up.
"""

from __future__ import annotations

import os
import signal
import time

from ._group import session_members
from ._pinned import Pinned
from ._steps import Steps, Wait, poll_ready

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._process import Child

_POLL = 0.02


def _grouped(child: Child) -> bool:
    """Does the fallback's session sweep apply (no cgroup or namespace holds the spawn)?"""
    return child.own_group and (child.boundary is None or child.boundary.kind == "group")


def rest_steps(child: Child, deadline: float) -> Steps[None]:
    """After our child has exited on SIGTERM: let the rest of its boundary exit too, until
    ``deadline`` (the same grace); the caller SIGKILLs what is left."""
    if child.boundary is not None and child.boundary.cgroup is not None:
        yield from child.boundary.empty_steps(max(0.0, deadline - time.monotonic()))
    elif _grouped(child):
        while session_members(child.pid, child.start_ticks) and time.monotonic() < deadline:
            yield Wait((), min(deadline, time.monotonic() + _POLL))


def term_steps(child: Child, deadline: float) -> Steps[None]:
    """Send SIGTERM and wait for the exit until ``deadline``; the caller SIGKILLs after that.

    A program that has not yet signalled that it has started (``child.started_fd``, an X
    server's -displayfd) gets its SIGTERM only once it has, or not at all. An X server binds
    /tmp/.X11-unix/X<n> a moment *before* it installs its SIGTERM handler: a SIGTERM in
    between kills it by the default action and leaves that file, under a number nobody was
    told (seen in CI). A SIGTERM sent that early may also be lost: a PID namespace's init
    ignores every signal it has no handler for yet. Once the number is written, both have
    their handlers. A server that does not start within the grace gets the SIGKILL, which
    notes its sockets first (``Child.before_kill``), so the files it leaves are removed."""
    if child.started_fd >= 0 and not poll_ready(Wait((child.started_fd,), 0.0)):
        ready = yield Wait((child.pidfd, child.started_fd), deadline)
        if child.pidfd in ready or not ready or child.has_exited():
            return
    child.term_sent = True
    child.signal(signal.SIGTERM)
    yield Wait((child.pidfd,), deadline)


def kill_rest(child: Child) -> None:
    """SIGKILL what is left in the boundary besides our child's group (no waiting)."""
    if child.boundary is not None and child.boundary.cgroup is not None:
        child.boundary.kill()  # the cgroup is ours alone: no stranger's pid is in it
    elif _grouped(child):
        for pid, ticks in session_members(child.pid, child.start_ticks):
            process = Pinned.pin(pid, ticks)
            if process is not None:
                process.signal(signal.SIGKILL)
                process.close()


def clear_steps(child: Child, grace: float) -> Steps[bool]:
    """Once our child is reaped: wait until the boundary is empty (False if it is not within
    ``grace``); kill a cgroup's rest first and remove it. (A session's rest got its SIGKILL
    before the reap: once the leader is reaped its pid, the session id, may be reused.)"""
    boundary = child.boundary
    if boundary is not None and boundary.init_pidfd >= 0:
        # Our child (outside the namespace) may go first; the init exits once it is empty.
        try:
            yield Wait((boundary.init_pidfd,), time.monotonic() + grace)
        finally:
            os.close(boundary.init_pidfd)
            boundary.init_pidfd = -1
    if child.boundary is not None and child.boundary.cgroup is not None:
        child.boundary.kill()
        empty = yield from child.boundary.empty_steps(grace)
        if empty:
            child.boundary.remove()
        return empty
    if _grouped(child):
        deadline = time.monotonic() + grace
        while session_members(child.pid, child.start_ticks):
            if time.monotonic() >= deadline:
                return False
            yield Wait((), min(deadline, time.monotonic() + _POLL))
    return True


def clear_now(child: Child, timeout: float) -> None:
    """clear_steps for a caller that can no longer yield (after the SIGKILL and the reap)."""
    if child.boundary is not None and child.boundary.init_pidfd >= 0:
        poll_ready(Wait((child.boundary.init_pidfd,), time.monotonic() + timeout))
        os.close(child.boundary.init_pidfd)
        child.boundary.init_pidfd = -1
    if child.boundary is not None and child.boundary.cgroup is not None:
        from ._steps import run_blocking

        child.boundary.kill()
        if run_blocking(child.boundary.empty_steps(timeout)):
            child.boundary.remove()
