"""Processes: how we start, pin, watch, wait for and end them, on Linux.

One concept, as asyncio's ``unix_events`` keeps child watchers, pidfds and signals together.
In order:

- pinned processes: a process we did not spawn, held by pidfd and start time, so that a
  signal never reaches a stranger who reused its pid; orphans; the subreaper's leftovers;
- sessions: the fallback boundary (a process group and session of the server's own) and
  the sweeps of what a dead supervisor's session left;
- kernel calls: prctl (die with the parent, subreaper), clone3, PID and user namespaces,
  inotify, peer credentials, exit statuses in words;
- inheritance: what a child started with ``os.posix_spawn`` would inherit, reset;
- signals as events: SIGTERM/SIGINT/SIGHUP (and, for a subreaper, SIGCHLD) as a readable fd;
- steps: slow operations written once, as generators of ``Wait``/``Offload``, and the two
  drivers that run them (poll(2) and asyncio).
"""

from __future__ import annotations

import ctypes
import math
import os
import select
import signal
import time
from collections.abc import Callable, Generator, Sequence
from types import FrameType

# typing costs the CLI milliseconds at start-up; mypy reads this branch as always taken.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    import socket
    from typing import Any, TypeAlias, TypeVar

    _T = TypeVar("_T")
    # Yields Wait or Offload requests, is sent their results, returns a T.
    Steps: TypeAlias = Generator["Wait | Offload", Any, _T]
else:
    Steps = Generator


# --- pinned processes ----------------------------------------------------------------------------
# Processes we did not spawn (or no longer parent): identified by pid *and* start time, held
# by a pidfd, so that a signal can never reach another process that reused the pid. Waiting
# here blocks: these run in the CLI, or in a worker thread (an Offload), never on an event loop.


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


def end_child(pid: int) -> None:
    """SIGKILL and reap ``pid``, a child of ours (a namespace's init: all in it go too).
    Through a pidfd, and only while it is still our child: with SIGCHLD ignored the kernel
    reaps it itself, and its pid may then be another's."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        fields = proc_stat(pid)
        if fields is not None and int(fields[1]) == os.getpid():
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    finally:
        os.close(pidfd)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


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
    cli.foreground). Returns the pids that were still running."""
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


# --- sessions: the fallback boundary and its sweeps ----------------------------------------------
# The fallback boundary (see launch.containment): a process group and session of the server's own;
# and the crash recovery's sweeps of what a dead supervisor's session left.
#
# A session's members are the processes whose session id is the server's pid, that are ours
# (uid; any uid for root, whose server may have changed its own) and that started no earlier
# than the server. A session id is not reused while a member lives; once the leader and all
# members are gone its number may be, by a new session leader: so a sweep goes ahead only while
# that pid is free or still the server (see session_is_ours).
# Each process is pinned by pidfd (and its start time checked) before any signal, so a stranger
# is never hit. A setsid daemon leaves the session: only a cgroup or a PID namespace holds it.

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


# --- kernel calls --------------------------------------------------------------------------------
# Small kernel helpers: prctl (die with the parent, subreaper), inotify, peer credentials,
# exit statuses in words.

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


# A stop signal that reaches a child between fork and exec would run our handler there, and
# the handler writes to our event loop's wakeup fd, which the child still shares: the daemon
# would see a stop signal it was never sent (a "second" SIGTERM cuts every grace short). So
# the spawning thread holds them blocked across the fork (see held_stop_signals), and the
# child restores the default action before it unblocks them: one sent meanwhile stops it.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def held_stop_signals() -> set[int | signal.Signals]:
    """Block the stop signals in this thread; return the mask to restore after the fork."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def die_with_parent(
    parent_pid: int,
    deathsig: int,
    enter: Callable[[], None] | None = None,
    mask: set[int | signal.Signals] | None = None,
) -> Callable[[], None]:
    def setup() -> None:  # runs in the child between fork and exec
        if enter is not None:  # first: it may hand over to a copy of us (fork_into_cgroup)
            enter()  # a boundary's; raises: Popen then raises SubprocessError (see spawn)
        # PR_SET_PDEATHSIG delivers ``deathsig`` when the *thread* that forked us exits;
        # so processes must be spawned from a thread that outlives them.
        if _libc.prctl(_PR_SET_PDEATHSIG, deathsig, 0, 0, 0) != 0:
            os._exit(126)
        # If the parent died before prctl took effect, no signal will ever come: leave now.
        if os.getppid() != parent_pid:
            os._exit(126)
        if mask is not None:  # last: a stop signal held since the fork now stops us
            for signum in STOP_SIGNALS:
                if callable(signal.getsignal(signum)):
                    signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    return setup


CLONE_NEWPID = 0x20000000


def new_pid_namespace_for_children() -> int:
    """The next child this *thread* forks is the init (pid 1) of a new PID namespace, and its
    descendants live there. Undo with restore_pid_namespace(fd), the fd returned: until
    then every fork of this thread goes into that namespace. Other threads are not affected.
    Raises OSError (EPERM without CAP_SYS_ADMIN: a user namespace is then needed)."""
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    if _libc.unshare(CLONE_NEWPID) != 0:
        error = ctypes.get_errno()
        os.close(own)
        raise OSError(error, os.strerror(error))
    return own


def restore_pid_namespace(own: int) -> None:
    """This thread's children are born in our own PID namespace again."""
    try:
        if _libc.setns(own, CLONE_NEWPID) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"cannot return to our own PID namespace: {os.strerror(error)}")
    finally:
        os.close(own)


_SYS_CLONE3 = 435  # the same number on every architecture of the generic table (Linux 5.3)
_CLONE_PARENT = 0x8000
_CLONE_INTO_CGROUP = 0x200000000


class _CloneArgs(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            *("flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack"),
            *("stack_size", "tls", "set_tid", "set_tid_size", "cgroup"),
        )
    ]


_CLONE_NEWUSER = 0x10000000


def fork_into_new_namespaces() -> int:
    """fork(), but the copy is born in a new user namespace and a new PID namespace (pid 1
    there), and is a child of *our* parent: 0 in the copy, its pid here. As for
    fork_into_cgroup, only for a child of ours between fork and exec. Its uid and gid maps
    are unwritten (see launch.containment): it must wait for them. Raises OSError (EPERM,
    ENOSPC: user namespaces are refused here)."""
    return _clone3(_CloneArgs(flags=_CLONE_NEWUSER | CLONE_NEWPID | _CLONE_PARENT))


def _clone3(args: _CloneArgs) -> int:
    pid = _libc.syscall(ctypes.c_long(_SYS_CLONE3), ctypes.byref(args), ctypes.sizeof(args))
    if pid < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"clone3 failed: {os.strerror(error)}")
    return int(pid)


def fork_into_cgroup(cgroup_fd: int) -> int:
    """fork(), but the copy is born in the cgroup ``cgroup_fd`` (a directory fd) and is a
    child of *our* parent (CLONE_PARENT, with our exit signal): 0 in the copy, its pid here.

    Only for a child of ours between fork and exec, which has one thread: the copy comes back
    into Python as os.fork's would, without its bookkeeping. Being born in a cgroup is what
    makes this worth it: moving a process in (cgroup.procs) waits for an RCU grace period,
    1 to 25 ms here; this costs a fork. Raises OSError: ENOSYS before Linux 5.7 (then
    move in), EBUSY/EOPNOTSUPP for a cgroup that cannot hold processes."""
    return _clone3(_CloneArgs(flags=_CLONE_INTO_CGROUP | _CLONE_PARENT, cgroup=cgroup_fd))


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


IN_MODIFY, IN_MOVED_TO, IN_CREATE = 0x2, 0x80, 0x100


def inotify_watch(path: str, mask: int) -> int:
    """A non-blocking inotify fd that becomes readable on ``mask`` events at ``path`` (the
    stdlib has no inotify). Raises OSError."""
    fd = int(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1 failed")
    if _libc.inotify_add_watch(fd, os.fsencode(path), mask) < 0:
        errno = ctypes.get_errno()
        os.close(fd)
        raise OSError(errno, f"cannot watch {path}")
    return fd


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
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


# --- inheritance ---------------------------------------------------------------------------------
# What a child we start with ``os.posix_spawn`` would inherit from us, reset as subprocess
# does (``close_fds=True``, ``restore_signals=True``), for the paths that spawn without it: a
# PID namespace's init (launch.process) and COMMAND on a leased display (cli.pool_run).

# Python ignores these; a child must not start with them ignored.
RESTORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


def inheritable_fds() -> list[int]:
    """Our descriptors above 2 that an exec would keep (Python makes its own close-on-exec;
    these came from our parent, or were made inheritable on purpose)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if fd > 2 and os.get_inheritable(fd):
                found.append(fd)
        except OSError:  # the listing's own descriptor, closed by now
            pass
    return found


def close_inherited() -> list[tuple[int, int]]:
    """posix_spawn file actions that close those descriptors in the child, ours untouched."""
    return [(os.POSIX_SPAWN_CLOSE, fd) for fd in inheritable_fds()]


def pipe_above_2() -> tuple[int, int]:
    """A close-on-exec pipe whose ends are above 2: a child's 0-2, made before our code runs
    in it, must not overwrite them (our own 0-2 may be closed, so a new pipe may get them)."""
    import fcntl

    ends = os.pipe2(os.O_CLOEXEC)
    moved: list[int] = []
    try:
        for end in ends:
            moved.append(fcntl.fcntl(end, fcntl.F_DUPFD_CLOEXEC, 3))
    except BaseException:
        for end in moved:
            os.close(end)
        raise
    finally:
        for end in ends:
            os.close(end)
    return moved[0], moved[1]


# --- signals as events ---------------------------------------------------------------------------
# Turn SIGTERM/SIGINT/SIGHUP into events that a poll loop waits on.
#
# Handlers only queue the signal; the wakeup fd becomes readable. Nothing is raised from a
# handler, so there is no window in which a signal can skip a cleanup: the driver's event
# handler raises *inside* the steps (process.run_blocking), which stop the server before the
# exception propagates. SIGCHLD may wake the loop too (a subreaper's orphans), never queued.

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _wake_only(_signum: int, _frame: FrameType | None) -> None:
    """A handler whose only effect is the wakeup fd's byte (see SignalInbox)."""


class SignalInbox:
    """The stop signals we got, through a pipe that wakes a poll loop. ``exit_with_parent``:
    a SIGTERM after the first is dropped. The kernel sends PR_SET_PDEATHSIG again each time
    we are handed from one exiting thread of our dying parent to the next (a multi-threaded
    parent such as Jupyter or pytest-xdist, SIGKILLed), still under the same parent pid:
    that is the same news again, not a second request that would cut the grace short.
    SIGINT still hurries a stop.

    ``wake_on_child_exit``: SIGCHLD wakes the loop too (it is no stop, and is not queued), for
    a subreaper that reaps the orphans it is handed as they end. Like the stop signals'
    handlers, it is undone by close()."""

    def __init__(self, exit_with_parent: bool = False, wake_on_child_exit: bool = False) -> None:
        self.read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pending: list[int] = []
        self._once = {signal.SIGTERM} if exit_with_parent else set()  # counted once
        self._seen: set[int] = set()
        self._previous_wakeup = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._previous = {signum: signal.signal(signum, self._handle) for signum in HANDLED}
        if wake_on_child_exit:  # a Python handler, so that the wakeup fd is written
            self._previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, _wake_only)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if signum in self._once:
            if signum in self._seen:
                return
            self._seen.add(signum)
        self._pending.append(signum)

    def drain(self) -> list[int]:
        """Signals received since the last call, oldest first."""
        try:
            while os.read(self.read_fd, 512):
                pass
        except BlockingIOError:
            pass
        pending, self._pending = self._pending, []
        return pending

    def close(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_wakeup)
        os.close(self.read_fd)
        os.close(self._write_fd)

    def __enter__(self) -> SignalInbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# --- steps and their drivers ---------------------------------------------------------------------
# Steps: slow operations written once, as generators, and the two drivers that run them.
#
# A steps generator yields requests and is sent their results:
# - ``Wait(fds, deadline)``: "wake me when one of these fds is readable, or at this deadline";
#   it is sent the set of readable fds (empty at the deadline).
# - ``Offload(fn, *args)``: "run this blocking call where it blocks nobody"; it is sent the
#   call's return value, or has its exception thrown in.
#
# ``run_blocking`` here drives them with poll(2) (the CLI, ``Display``); ``run_steps`` drives
# them on an asyncio loop (``AsyncDisplay``, ``serve``), where an Offload runs in a worker thread.
# So there is one launch path, and nothing on it may block except through an Offload.
#
# On the loop, waiting is ``loop.add_reader`` on the steps' fds (pipes, sockets, pidfds) and a
# timer at their deadline; an Offload (crash recovery, the stale-file scan) runs in the loop's
# default executor, so the loop is never blocked. A cancellation is thrown into the steps like
# any other exception: they stop their X server (TERM, grace, KILL, reap), remove its files,
# and re-raise; a second cancellation during the grace escalates to SIGKILL at once.


class Wait:
    """Resume when one of ``fds`` is readable or at ``deadline`` (time.monotonic(); None: never)."""

    __slots__ = ("deadline", "fds")

    def __init__(self, fds: tuple[int, ...], deadline: float | None):
        self.fds = fds
        self.deadline = deadline

    def __repr__(self) -> str:
        return f"Wait(fds={self.fds}, deadline={self.deadline})"


class Offload:
    """Run blocking ``fn(*args)`` off the event loop: in a worker thread under asyncio
    (``run_steps``), inline under ``run_blocking``. The steps are sent its return value, or
    have its exception thrown into them. ``fn`` must not spawn processes: they would die
    with the worker thread (PR_SET_PDEATHSIG, see launch.process.spawn)."""

    __slots__ = ("args", "fn")

    def __init__(self, fn: Callable[..., object], *args: object):
        self.fn = fn
        self.args = args

    def __repr__(self) -> str:
        return f"Offload({getattr(self.fn, '__name__', self.fn)})"

    def call(self) -> object:
        return self.fn(*self.args)


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


def _advance(steps: Steps[_T], sent: object, error: BaseException | None) -> tuple[bool, Any]:
    """One move of ``steps`` (both drivers make it): send them ``sent``, or throw ``error``
    into them. (True, their value) once they have ended; else (False, what they ask for)."""
    try:
        return False, steps.throw(error) if error is not None else steps.send(sent)
    except StopIteration as done:
        return True, done.value


def run_blocking(steps: Steps[_T], events: Events | None = None) -> _T:
    """Drive ``steps`` to completion in this thread with poll(2).

    An exception raised while we wait (KeyboardInterrupt, or one raised by ``events``) is
    thrown into the steps, so that their cleanup runs before it propagates.
    """
    sent: object = None  # a fresh generator must first be sent None
    error: BaseException | None = None
    while True:
        done, request = _advance(steps, sent, error)
        if done:
            value: _T = request  # their value
            return value
        error = None
        try:
            if isinstance(request, Offload):
                sent = request.call()
            elif events is not None:
                sent = _wait_with_events(request, events)
            else:
                sent = poll_ready(request)
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


# -- the asyncio driver ------------------------------------------------------------------
async def run_steps(steps: Steps[_T]) -> _T:
    """Run ``steps`` to completion on the running loop; return their value."""
    import asyncio  # here: the CLI's run_blocking path has no use for it

    loop = asyncio.get_running_loop()
    sent: object = None  # a fresh generator must first be sent None
    error: BaseException | None = None
    while True:
        done, request = _advance(steps, sent, error)
        if done:
            value: _T = request  # their value
            return value
        error = None
        try:
            if isinstance(request, Offload):
                # If we are cancelled meanwhile, the call still runs to its end in its thread;
                # the steps learn of the cancellation at once.
                sent = await loop.run_in_executor(None, request.call)
            else:
                sent = await _wait(loop, request)
        except BaseException as exc:  # noqa: BLE001 - e.g. CancelledError: handed to the steps
            error = exc


async def _wait(loop: asyncio.AbstractEventLoop, wait: Wait) -> set[int]:
    """Wait on the loop (``add_reader`` and a timer) until one fd is readable or the deadline
    passes; the readable fds."""
    future: asyncio.Future[None] = loop.create_future()
    ready: set[int] = set()

    def wake(fd: int | None = None) -> None:
        if fd is not None:
            ready.add(fd)
        if not future.done():
            future.set_result(None)

    for fd in wait.fds:
        loop.add_reader(fd, wake, fd)
    # loop.time() is time.monotonic(), the clock of Wait.deadline.
    timer = loop.call_at(wait.deadline, wake) if wait.deadline is not None else None
    try:
        await future
    finally:
        for fd in wait.fds:
            loop.remove_reader(fd)
        if timer is not None:
            timer.cancel()
    return ready
