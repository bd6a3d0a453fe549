"""Child processes: spawn so they die with us, wait on events, stop TERM -> KILL, reap.

Slow operations are written once, as generators of ``Wait`` requests ("wake me when one of
these fds is readable, or at this deadline"), and driven by ``run_blocking`` here or by an
event loop elsewhere. That keeps one launch path for the CLI, ``Display`` and async callers.

A ``Child`` is never signalled after it has been reaped: until then its pid (and its process
group id, which equals its pid) cannot be reused by another process, so a signal can only
reach what we started.
"""

from __future__ import annotations

import ctypes
import math
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Generator, Sequence

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)

class Wait:
    """Resume when one of ``fds`` is readable or at ``deadline`` (time.monotonic()); None = never."""

    __slots__ = ("fds", "deadline")

    def __init__(self, fds: tuple[int, ...], deadline: float | None):
        self.fds = fds
        self.deadline = deadline

    def __repr__(self) -> str:
        return f"Wait(fds={self.fds}, deadline={self.deadline})"


class Offload:
    """Run blocking ``fn(*args)`` off the event loop: in a worker thread under asyncio
    (``_aio.run_steps``), inline under ``run_blocking``. The steps are sent its return value,
    or have its exception thrown into them."""

    __slots__ = ("fn", "args")

    def __init__(self, fn: Callable[..., object], *args: object):
        self.fn = fn
        self.args = args

    def __repr__(self) -> str:
        return f"Offload({getattr(self.fn, '__name__', self.fn)})"

    def call(self) -> object:
        return self.fn(*self.args)


# A generator of Waits that is sent the set of ready fds and returns a T. (Spelled as a
# string: importing typing costs the CLI milliseconds.)
Steps = Generator


class Events:
    """Things a driver watches besides the steps' own fds (signals, a COMMAND, a watchdog).

    ``handle`` is called with the ready fds among ``fds()`` (possibly none, when ``deadline()``
    has passed); an exception it raises is thrown into the steps, so that their cleanup runs.
    """

    def fds(self) -> tuple[int, ...]:
        return ()

    def deadline(self) -> float | None:
        return None

    def handle(self, ready: set[int]) -> None:
        pass


def run_blocking(steps: Steps, events: Events | None = None):
    """Drive ``steps`` to completion in this thread with poll(2).

    An exception raised while we wait (KeyboardInterrupt, or one raised by ``events``) is
    thrown into the steps, so that their cleanup runs before it propagates.
    """
    ready: set[int] | None = None  # a fresh generator must first be sent None
    error: BaseException | None = None
    while True:
        try:
            wait = steps.throw(error) if error is not None else steps.send(ready)  # type: ignore[arg-type]
        except StopIteration as done:
            return done.value
        error = None
        try:
            if isinstance(wait, Offload):
                ready = wait.call()
            else:
                ready = _wait_with_events(wait, events) if events is not None else poll_ready(wait)
        except BaseException as exc:  # noqa: BLE001 - handed to the steps, which re-raise it
            error = exc


def _wait_with_events(wait: Wait, events: Events) -> set[int]:
    """Poll until the steps' own fds or deadline are due, handling ``events`` meanwhile."""
    while True:
        own_fds = events.fds()
        own_deadline = events.deadline()
        deadline = wait.deadline
        if own_deadline is not None and (deadline is None or own_deadline < deadline):
            deadline = own_deadline
        ready = poll_ready(Wait(wait.fds + own_fds, deadline))
        mine = ready.intersection(own_fds)
        if mine or (own_deadline is not None and time.monotonic() >= own_deadline):
            events.handle(mine)
        ready -= mine
        if ready or (wait.deadline is not None and time.monotonic() >= wait.deadline):
            return ready


def poll_ready(wait: Wait) -> set[int]:
    """Block until one of the fds is readable or the deadline passes; the readable fds."""
    poller = select.poll()
    for fd in wait.fds:
        poller.register(fd, select.POLLIN)
    if wait.deadline is None:
        timeout_ms = None
    else:
        timeout_ms = max(0, math.ceil((wait.deadline - time.monotonic()) * 1000))
    return {fd for fd, _ in poller.poll(timeout_ms)}


def _die_with_parent(parent_pid: int, deathsig: int):
    def setup() -> None:  # runs in the child between fork and exec
        # PR_SET_PDEATHSIG delivers ``deathsig`` when the *thread* that forked us exits;
        # so processes must be spawned from a thread that outlives them.
        if _libc.prctl(_PR_SET_PDEATHSIG, deathsig, 0, 0, 0) != 0:
            os._exit(126)
        # If the parent died before prctl took effect, no signal will ever come: leave now.
        if os.getppid() != parent_pid:
            os._exit(126)

    return setup


def signal_when_parent_dies(parent_pid: int, signum: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send us ``signum`` when our parent (the thread that forked us) exits.

    ``parent_pid`` is the parent as first seen; False if it is already gone (we have been
    re-parented), in which case no signal will ever come.
    """
    if _libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    return os.getppid() == parent_pid


def become_subreaper() -> None:
    """Orphans among our descendants (what COMMAND started and left) become our children,
    not init's: we can then stop them without any risk of pid reuse (see stop_adopted)."""
    if _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _children_of_ours() -> set[int]:
    pids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as listing:
                pids.update(int(pid) for pid in listing.read().split())
        except FileNotFoundError:  # a thread that just ended
            continue
    return pids


def stop_adopted(grace: float) -> list[int]:
    """SIGTERM every child we still have (all of them orphans we adopted as a subreaper:
    call this after our own children are reaped), SIGKILL those left after ``grace``, reap
    them all. They are unreaped children of ours, so their pids cannot have been reused.
    Returns the pids that were still running."""
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
        running += [process.pid for process in adopted if not _is_zombie(process.pid)]
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


def _is_zombie(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is None or stat[0] in ("Z", "X")


class Child:
    """A process we spawned and have not reaped; ``pidfd`` becomes readable when it exits."""

    def __init__(self, popen: subprocess.Popen, argv: Sequence[str], own_group: bool):
        self._popen = popen
        self.argv = tuple(argv)
        self.pid = popen.pid
        self.own_group = own_group
        self.spawned_at = time.monotonic()
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except BaseException:  # e.g. out of fds: we could not watch it, so it must not live
            popen.kill()
            popen.wait()
            raise
        self.start_ticks = start_ticks(self.pid)  # unreaped, so it cannot be gone

    def __repr__(self) -> str:
        name = os.path.basename(self.argv[0])
        if self.returncode is None:
            return f"<Child {name} running with pid {self.pid}>"
        return f"<Child {name} pid {self.pid} {describe_status(self.returncode)}>"

    @property
    def returncode(self) -> int | None:
        """Exit status once reaped (negative: killed by that signal), else None."""
        return self._popen.returncode

    def has_exited(self) -> bool:
        """True once the process has ended, without reaping it (its pid stays ours)."""
        if self._popen.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the child's whole process group (or the child alone)."""
        if self._popen.returncode is not None:
            return  # reaped: its pid may already belong to someone else
        try:
            if self.own_group:
                os.killpg(self.pid, signum)
            else:
                os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def reap(self) -> int:
        """Collect the exit status (blocks until exit) and release the pidfd."""
        status = self._popen.wait()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        return status

    def stop_steps(self, grace: float, on_escalate=None) -> Steps[int]:
        """SIGTERM the group, wait up to ``grace`` s, then SIGKILL the group; reap. Returns status.

        SIGKILL goes to the group even after a clean exit of the leader, so that nothing it
        started outlives it. If we are interrupted while waiting, we escalate at once.
        """
        if self._popen.returncode is not None:
            return self._popen.returncode
        if not self.has_exited():
            self.signal(signal.SIGTERM)
            try:
                yield Wait((self.pidfd,), time.monotonic() + grace)
            except BaseException:
                self.signal(signal.SIGKILL)
                self.reap()
                raise
            if not self.has_exited() and on_escalate is not None:
                on_escalate(self)
        self.signal(signal.SIGKILL)
        return self.reap()  # after SIGKILL the exit is imminent: a blocking wait is fine


def spawn(argv: Sequence[str], *, env: dict[str, str] | None = None, pass_fds: Sequence[int] = (),
          stdin: int | None = None, stdout: int | None = None,
          stderr: int | None = None, own_group: bool = True,
          deathsig: int = signal.SIGKILL) -> Child:
    """Start ``argv``; it gets ``deathsig`` if we die. ``own_group``: a new session and group,
    so that a stop reaches everything it started. Raises FileNotFoundError/PermissionError."""
    popen = subprocess.Popen(
        list(argv), env=env, pass_fds=tuple(pass_fds), stdin=stdin, stdout=stdout, stderr=stderr,
        start_new_session=own_group, preexec_fn=_die_with_parent(os.getpid(), deathsig),
    )
    return Child(popen, argv, own_group)


def peer_credentials(sock) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a connected Unix socket: for a
    client's connection, the process that called listen(); for a server's, the one that
    connected (SO_PEERCRED, fixed by the kernel at that moment)."""
    import socket
    import struct

    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)


def describe_status(returncode: int) -> str:
    """'exited with status 1' / 'was killed by SIGKILL', for log lines."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


def shell_status(returncode: int) -> int:
    """The exit code a shell would report: the status, or 128+signal."""
    return 128 - returncode if returncode < 0 else returncode


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (which may contain spaces)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            raw = stream.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(b")") + 2:].decode().split()


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (field 22 of /proc/PID/stat); None if gone.

    psutil's create_time() is this plus the boot time; we read the field ourselves because
    importing psutil costs ~13 ms of CPU on every `xsupervise run`, on a machine whose other
    core the X server is busy starting on.
    """
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None


def same_process(pid: int | None, ticks: int | None) -> bool:
    """True if ``pid`` runs (not a zombie) and started at ``ticks``: not a reuse of the pid."""
    if not pid or ticks is None:
        return False
    fields = _proc_stat(pid)
    return bool(fields) and fields[0] != "Z" and int(fields[19]) == ticks


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
    """Wait (on their pidfds) until all have exited or ``timeout`` passes; return the living."""
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
    """SIGTERM, wait up to ``grace``, then SIGKILL; True if it ended within the grace."""
    process.signal(signal.SIGTERM)
    if not wait_exited([process], grace):
        return True
    process.signal(signal.SIGKILL)
    wait_exited([process], grace)
    return False
