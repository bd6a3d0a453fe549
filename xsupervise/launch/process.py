"""Child processes: spawn so they die with us, wait on events, stop TERM -> KILL, reap.

Slow operations are generators of ``Wait``/``Offload`` requests (see host/processes.py), driven by
``run_blocking`` or by an event loop (host/processes.py): one launch path for the CLI, ``Display``,
``AsyncDisplay`` and ``serve``. Nothing here blocks on a process that might not exit: after
SIGKILL we wait for the pidfd to become readable, then reap with WNOHANG.

A ``Child`` is never signalled after it has been reaped: until then its pid (and its process
group id, which equals its pid) cannot be reused by another process, so a signal can only
reach what we started.

Teardown of a boundary (see launch.containment): wait for *every* process of a spawn, not only
the first, then kill what is left, as steps (see host/processes.py) that never block their driver.

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
from _thread import allocate_lock
from collections.abc import Callable, Mapping, Sequence

from ..host.paths import which
from ..host.processes import (
    RESTORED_SIGNALS,
    STOP_SIGNALS,
    UNREAPED_CHILDREN,
    Events,
    Offload,
    Pinned,
    Steps,
    Wait,
    become_subreaper,
    close_inherited,
    describe_status,
    die_with_parent,
    end_child,
    held_stop_signals,
    new_pid_namespace_for_children,
    peer_credentials,
    pipe_above_2,
    poll_ready,
    restore_pid_namespace,
    run_blocking,
    same_process,
    session_members,
    shell_status,
    signal_when_parent_dies,
    start_ticks,
    stop_adopted,
    terminate_pinned,
    wait_exited,
)

# Steps and pinned processes live in host.processes; importers may keep using these names here.
# fmt: off
__all__ = [
    "Child", "Events", "Offload", "Pinned", "Steps", "Wait", "become_subreaper",
    "describe_status", "peer_credentials", "poll_ready", "run_blocking", "same_process",
    "shell_status", "signal_when_parent_dies", "spawn", "start_ticks", "stop_adopted",
    "terminate_pinned", "wait_exited"
]
# fmt: on

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from typing import Any

    from .containment import Boundary


class Child:
    """A process we spawned and have not reaped; ``pidfd`` becomes readable when it exits."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes] | Spawned,
        argv: Sequence[str],
        own_group: bool,
        boundary: Boundary | None = None,
    ):
        self._popen = popen
        self.argv = tuple(argv)  # what was asked for (the boundary may wrap it)
        self.boundary = boundary
        self.pid = popen.pid
        self.own_group = own_group
        self.spawned_at = time.monotonic()
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except BaseException:  # e.g. out of fds: we could not watch it, so it must not live
            popen.kill()
            popen.wait()  # just spawned, not stuck anywhere: its exit is immediate
            raise
        self.start_ticks = start_ticks(self.pid)  # unreaped, so it cannot be gone
        # The program asked for: this child, or in a PID namespace the one its init runs.
        self.program_pid, self.program_ticks = self.pid, self.start_ticks
        self.started_fd = -1  # readable once it has started: see _teardown.term_steps
        self.term_sent = False  # a stop has sent its SIGTERM (term_steps may hold it back)
        self.before_kill: Callable[[], None] | None = None  # called before a SIGKILL
        UNREAPED_CHILDREN.add(self.pid)

    def find_program(self) -> int:
        """program_pid, looked up while a namespace's init runs it (we signal only the child)."""
        if self.boundary is not None and self.program_pid == self.pid and not self.has_exited():
            found = self.boundary.find_program(self.pid)
            if found is not None:
                self.program_pid, self.program_ticks = found
        return self.program_pid

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
            if signum == signal.SIGKILL and self.boundary is not None:
                self.boundary.kill()  # a cgroup is ours alone: no stranger's pid is in it
            return  # reaped: its pid (and session id) may already belong to someone else
        if self.boundary is not None and self.boundary.namespace is not None:
            # Before our child can die: hold its namespace's init (see clear_steps), whose
            # end is the namespace's. A stop that came early (a start interrupted before the
            # launcher looked) would otherwise not wait for the namespace to empty.
            self.find_program()
        if signum == signal.SIGKILL:
            if self.before_kill is not None:
                self.before_kill()  # e.g. note what a SIGKILL will leave behind
            kill_rest(self)  # a cgroup's or a session's other processes
        try:
            if self.own_group:
                os.killpg(self.pid, signum)
            else:
                os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def _close_pidfd(self) -> None:
        UNREAPED_CHILDREN.discard(self.pid)  # called once reaped
        if self.boundary is not None:
            self.boundary.release_watch()  # a namespace's init: reaped, so the namespace is empty
        status = self._popen.returncode
        if self.boundary is not None and self.boundary.direct and status and 128 < status <= 192:
            # A namespace's init cannot die by a signal it sends itself: it exits 128+N for
            # "the program was killed by N" (as a shell's $? says; see launch.containment).
            self._popen.returncode = 128 - status
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def reap(self) -> int:
        """Collect the exit status and release the pidfd. Blocks until the exit: only for a
        child whose pidfd was readable, or where blocking is fine (see reap_steps)."""
        status = self._popen.wait()
        self._close_pidfd()
        return status if self._popen.returncode is None else self._popen.returncode

    def try_reap(self) -> int | None:
        """Collect the exit status if the process has ended (waitpid WNOHANG), else None."""
        if self._popen.poll() is not None:
            self._close_pidfd()
        return self._popen.returncode

    def reap_within(self, timeout: float) -> int | None:
        """Wait at most ``timeout`` s for the exit, then try_reap (blocks that long at worst):
        for callers that can no longer yield (a closed generator)."""
        if self._popen.returncode is None and self.pidfd >= 0:
            poll_ready(Wait((self.pidfd,), time.monotonic() + timeout))
        if (status := self.try_reap()) is not None and self.boundary is not None:
            clear_now(self, timeout)  # and what is left in its boundary (see _teardown)
        return status

    def reap_steps(
        self, stuck_after: float, on_stuck: Callable[[Child], None] | None = None
    ) -> Steps[int]:
        """Wait for the exit (the pidfd becomes readable), then reap: never blocks its driver.

        After SIGKILL the exit is normally a matter of milliseconds; but a process in
        uninterruptible sleep (D state: a hung disk, NFS, a device) only dies when it leaves
        the kernel. After ``stuck_after`` s we call ``on_stuck`` once and keep waiting.
        """
        deadline: float | None = time.monotonic() + stuck_after
        while (status := self.try_reap()) is None:
            ready = yield Wait((self.pidfd,), deadline)
            if not ready and deadline is not None and time.monotonic() >= deadline:
                deadline = None
                if on_stuck is not None:
                    on_stuck(self)
        return status

    def stop_steps(
        self,
        grace: float,
        on_escalate: Callable[[Child], None] | None = None,
        on_stuck: Callable[[Child], None] | None = None,
    ) -> Steps[int]:
        """SIGTERM the group, wait up to ``grace`` s for it *and* the rest of its boundary
        (see _teardown), then SIGKILL the group and the boundary; reap. Returns status.

        SIGKILL goes to the group even after a clean exit of the leader, so that nothing it
        started outlives it. If we are interrupted while waiting, we escalate at once. A
        process stopped (SIGSTOP) or stuck in the kernel costs its driver no blocking wait:
        see reap_steps, whose ``on_stuck`` names it after another ``grace`` s.
        """
        if self._popen.returncode is not None:
            yield from clear_steps(self, grace)
            return self._popen.returncode
        if not self.has_exited():
            deadline = time.monotonic() + grace
            try:  # SIGTERM, once it is safe to send (see term_steps)
                yield from term_steps(self, deadline)
                if self.has_exited():
                    yield from rest_steps(self, deadline)
            except GeneratorExit:
                self.signal(signal.SIGKILL)  # closed: no more yielding; the owner reaps
                raise
            except BaseException:
                self.signal(signal.SIGKILL)
                yield from self.reap_steps(grace, on_stuck)
                yield from clear_steps(self, grace)  # a namespace empty: its files are free
                raise
            if not self.has_exited() and on_escalate is not None:
                on_escalate(self)
        self.signal(signal.SIGKILL)
        status = yield from self.reap_steps(grace, on_stuck)
        yield from clear_steps(self, grace)
        return status

    def clear_boundary_now(self, timeout: float) -> None:
        """What stop_steps does after the reap, for a caller that can no longer yield."""
        clear_now(self, timeout)


def spawn(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    own_group: bool = True,
    deathsig: int = signal.SIGKILL,
    boundary: Boundary | None = None,
) -> Child:
    """Start ``argv``; it gets ``deathsig`` if we die. ``own_group``: a new session and group,
    so that a stop reaches everything it started. ``boundary``: the cgroup and/or namespace
    it runs in (see launch.containment); a cgroup we cannot enter falls back to the next best.
    Raises FileNotFoundError/PermissionError."""
    # The namespace's init runs the program: check it exists, as a plain exec would.
    if boundary is not None and boundary.namespace is not None and which(argv[0]) is None:
        raise FileNotFoundError(2, "No such file or directory", argv[0])
    popen: subprocess.Popen[bytes] | Spawned
    try:
        if boundary is not None and boundary.direct:
            popen = _spawn_direct(argv, env, pass_fds, (stdin, stdout, stderr), own_group, boundary)
        else:
            popen = _popen(
                argv, env, pass_fds, stdin, stdout, stderr, own_group, deathsig, boundary
            )
    except BaseException as exc:
        from subprocess import SubprocessError

        entering = boundary is not None and (boundary.cgroup is not None or boundary.user)
        if not isinstance(exc, SubprocessError) or boundary is None or not entering:
            if boundary is not None:
                boundary.remove()
            raise
        boundary.remove()  # we could not enter it: the fallback
        from .containment import Boundary, after_user_namespace_refused

        if boundary.user:
            boundary = after_user_namespace_refused()
        else:
            boundary = Boundary("group", None, None)
        popen = _popen(argv, env, pass_fds, stdin, stdout, stderr, own_group, deathsig, boundary)
    if boundary is None:
        return Child(popen, argv, own_group)
    boundary.spawned(popen)
    try:
        return Child(popen, argv, own_group, boundary)
    except BaseException:  # e.g. out of fds: Child killed it; its keeper and cgroup go too
        boundary.kill()
        boundary.remove()
        raise


def _popen(
    argv: Sequence[str],
    env: dict[str, str] | None,
    pass_fds: Sequence[int],
    stdin: int | None,
    stdout: int | None,
    stderr: int | None,
    own_group: bool,
    deathsig: int,
    boundary: Boundary | None,
) -> subprocess.Popen[bytes] | Spawned:
    import subprocess

    if boundary is not None:
        boundary.before_spawn()
    popen = None
    mask = held_stop_signals()  # until the child has reset its handlers (see host.processes)
    try:
        popen = subprocess.Popen(
            boundary.argv(argv) if boundary is not None else list(argv),
            env=env,
            pass_fds=tuple(pass_fds),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=own_group,
            # PR_SET_PDEATHSIG has no other way in; we spawn from one thread only (the loop's
            # or the CLI's), never from an Offload's worker.
            preexec_fn=die_with_parent(
                os.getpid(), deathsig, boundary.enter if boundary else None, mask
            ),
        )
    finally:
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a held ^C raises here
        except BaseException:
            if popen is not None:  # ours, unreaped: the program, or the copy's forker
                popen.kill()
                popen.wait()
            raise  # spawn() then ends a copy in a cgroup (Boundary.remove)
    copy = boundary.entered_copy() if boundary is not None else None
    if copy is None:
        if boundary is not None and boundary.clone_killed:
            from .containment import clone3_refused

            popen.wait()  # it died in the clone: never exec'd, so not the program
            clone3_refused()  # spawn() falls back; later spawns move in
            raise subprocess.SubprocessError("clone3 was refused by a seccomp filter")
        return popen
    popen.wait()  # the child that forked the copy into the cgroup: it has left
    return Spawned(copy)


def _spawn_direct(
    argv: Sequence[str],
    env: dict[str, str] | None,
    pass_fds: Sequence[int],
    fds: tuple[int | None, int | None, int | None],
    own_group: bool,
    boundary: Boundary,
) -> Spawned:
    """Our child is the init of a new PID namespace (see launch.containment, _DIRECT), started
    with posix_spawn (a vfork: nothing of ours runs in the child, and the CLI need not import
    subprocess before its server is spawned). The watcher's pipe stands in for
    PR_SET_PDEATHSIG. ``fds`` (stdin, stdout, stderr): stdin is a pipe the init moves to fd 3,
    or /dev/null (None too: a namespace's program never reads our terminal); the init's
    stdout is the watcher's pipe, so the program's stdout must be its stderr."""
    stdin, stdout, stderr = fds
    if pass_fds or stdout != stderr:
        raise ValueError("a direct namespace takes one pipe as stdin and stdout == stderr")
    watch_read, watch_write = os.pipe2(os.O_CLOEXEC)
    moved: list[int] = []  # sources numbered 0-2 (ours were closed), moved out of the way
    try:
        actions: list[tuple[int, int] | tuple[int, int, int] | tuple[int, int, str, int, int]] = []
        for fd, target in ((watch_read, 1), (stdin, 0), (stderr, 2)):
            if fd is None or fd == DEVNULL:
                actions.append((os.POSIX_SPAWN_OPEN, target, os.devnull, os.O_RDWR, 0))
                continue
            if fd <= 2:  # a DUP2 onto 0-2 must not overwrite another's source
                import fcntl

                fd = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
                moved.append(fd)
            actions.append((os.POSIX_SPAWN_DUP2, fd, target))
        # What subprocess's close_fds does: nothing else of ours reaches the server (a
        # --displayfd or socket-activation fd we were given would otherwise stay open in it).
        actions += close_inherited()
        environ = os.environ if env is None else env
        if boundary.user:
            pid = _spawn_in_new_user_namespace(boundary.argv(argv), environ, actions, own_group)
        else:
            pid = _posix_spawn_in_new_namespace(boundary.argv(argv), environ, actions, own_group)
    except BaseException:
        os.close(watch_write)
        raise
    finally:
        for fd in (watch_read, *moved):
            os.close(fd)
    boundary.watch(watch_write)
    return Spawned(pid)


def _posix_spawn_in_new_namespace(
    argv: list[str], env: Mapping[str, str], actions: list[Any], own_group: bool
) -> int:
    """posix_spawn ``argv`` as the init of a new PID namespace. Stop signals are held
    meanwhile, so that no KeyboardInterrupt lands between unshare() and setns() (this thread's
    later children would all go into a dead namespace); the child starts with none held."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        own_namespace = new_pid_namespace_for_children()
        try:
            pid = os.posix_spawn(
                argv[0],
                argv,
                env,
                file_actions=actions,
                setsid=own_group,
                setsigmask=(),
                # As subprocess's restore_signals, and the stop signals: an ignored TERM cannot
                # be trapped by the init's shell (a supervisor started with it ignored).
                setsigdef=(*RESTORED_SIGNALS, *STOP_SIGNALS),
            )
        except BaseException:
            restore_pid_namespace(own_namespace)
            raise
        try:
            restore_pid_namespace(own_namespace)
        except BaseException:  # never seen: our own namespace refused us; nothing may stay
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
        return pid
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _spawn_in_new_user_namespace(
    argv: list[str], env: Mapping[str, str], actions: list[Any], own_group: bool
) -> int:
    """Start ``argv`` as the init of a new PID namespace in a new user namespace, unprivileged
    (see launch.containment.enter_user_namespace): the same child as root's, with the same
    descriptors (``actions``, posix_spawn's file actions, done here by subprocess). Raises
    SubprocessError where user namespaces are refused: the caller falls back."""
    import subprocess

    from .containment import enter_user_namespace

    fds = {action[2]: action[1] for action in actions if action[0] == os.POSIX_SPAWN_DUP2}
    opened = {action[1] for action in actions if action[0] == os.POSIX_SPAWN_OPEN}
    report_read, report_write = pipe_above_2()
    popen = None
    mask = held_stop_signals()  # until the copy has reset its handlers (it starts with none)
    try:
        try:
            popen = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL if 0 in opened else fds[0],
                stdout=fds[1],
                stderr=subprocess.DEVNULL if 2 in opened else fds[2],
                start_new_session=own_group,
                preexec_fn=enter_user_namespace(own_group, report_write),
            )
        finally:
            os.close(report_write)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a held ^C raises here
    except BaseException:  # the clone refused, an exec failure, a ^C: nothing may stay
        if popen is not None:
            popen.kill()  # ours, unreaped: the forker
            popen.wait()
        _reap_reported(report_read)
        raise
    try:
        report = os.read(report_read, 5)  # written before the forker left: no wait
    finally:
        os.close(report_read)
    popen.wait()  # the forker: it has left
    if len(report) == 5:
        return int.from_bytes(report[:4], "little")
    if len(report) == 4:  # a copy whose maps could not be written: it leaves at once
        end_child(int.from_bytes(report, "little"))
    raise subprocess.SubprocessError("no user namespace could be made for the X server")


def _reap_reported(report_read: int) -> None:
    """After a spawn in a user namespace was interrupted: end the copy if it was made."""
    try:
        report = os.read(report_read, 5)
    finally:
        os.close(report_read)
    if len(report) >= 4:
        end_child(int.from_bytes(report[:4], "little"))


DEVNULL = -3  # subprocess.DEVNULL, without importing subprocess


class Spawned:
    """What Child uses of subprocess.Popen, for a process started with os.posix_spawn. As
    Popen, one waitpid at a time (a lock), so that a status is never lost to a second one."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        self._lock = allocate_lock()

    def _waitpid(self, flags: int) -> int | None:
        with self._lock:
            if self.returncode is None:
                try:
                    pid, status = os.waitpid(self.pid, flags)
                except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): no status
                    self.returncode = 0
                else:
                    if pid:
                        self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def poll(self) -> int | None:
        return self._waitpid(os.WNOHANG)

    def wait(self) -> int:
        status = self._waitpid(0)
        return 0 if status is None else status

    def kill(self) -> None:
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)


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
        from ..host.processes import run_blocking

        child.boundary.kill()
        if run_blocking(child.boundary.empty_steps(timeout)):
            child.boundary.remove()
