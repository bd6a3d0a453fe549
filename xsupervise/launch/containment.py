"""Containment: a boundary around every process a session starts, so that none outlives it.

Best first (see docs/containment.md for what each guarantees, needs and costs):

- ``pidns``: a PID namespace (with a user namespace when unprivileged). Its init dies with the
  supervisor (a watcher on a pipe, see _DIRECT), and the kernel then kills everything in the
  namespace; teardown waits for every process in it (see _INIT below).
- ``cgroup``: a cgroup v2 of the spawn's own, where the hierarchy is writable (root, a unit
  with ``Delegate=yes``) but no namespace can be made. Teardown waits until it is empty, then
  writes ``cgroup.kill``; crash recovery kills a dead supervisor's cgroup.
- ``group``: the fallback: a process group and session; crash recovery sweeps the session.

Where we may make a PID namespace ourselves (CAP_SYS_ADMIN: root, most containers), our child
*is* the namespace's init (new_pid_namespace_for_children): one shell in front of the server,
one exec, no probe. Elsewhere a user namespace is needed, which a multi-threaded process cannot
enter: our child forks the init into both (enter_user_namespace); where that is refused, or
on a kernel without clone3, ``unshare --user`` makes both, probed once per process.
``XSUPERVISE_CONTAINMENT`` (auto, pidns, cgroup, group) caps the choice: for tests and bench.
"""

from __future__ import annotations

import os
import signal

from ..host.processes import (
    STOP_SIGNALS,
    UNREAPED_CHILDREN,
    Steps,
    Wait,
    fork_into_cgroup,
    fork_into_new_namespaces,
    pipe_above_2,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable, Sequence
    from typing import Protocol

    class _Spawned(Protocol):  # a subprocess.Popen or a launch.process.Spawned
        def kill(self) -> None: ...
        def wait(self) -> int: ...


NS_DISPLAYFD = 3  # in a namespace the server's -displayfd is 3 (the pipe arrives as stdin)
# In a PID namespace three processes run the server (see docs/containment.md):
# - "outside" (our child; `unshare --pid` without --fork, so it stays out and its first child
#   is the namespace's init): dies with us (PR_SET_PDEATHSIG), starts the init, closes its
#   copy of the -displayfd pipe (so that a server closing it is seen at once), forwards
#   SIGTERM to the init and exits with its status;
# - the init (pid 1 there; `setpriv --pdeathsig KILL`, so it dies with "outside", and the
#   kernel then kills everything in the namespace) runs the server. On SIGTERM, or once the
#   server has exited, it sends SIGTERM to every process of the namespace (`kill -1`: a
#   wrapper's X server, a compositor's children), reaps them (dash reaps any child, orphans
#   included, while it waits for `sleep`), and SIGKILLs what is left after _NS_GRACE_STEPS
#   times 20 ms. Only then does it exit with the server's status: teardown waits for every
#   process of the session, not only the first.
# - the server, pid 2 there, with the pipe as fd 3 and /dev/null as stdin.
# dash names fds 0-9 only: hence the pipe as stdin, moved to fd 3 before any fork. Once
# they have started their child, both shells send their own stderr to /dev/null: the log is
# the server's ("Terminated", a shell's note on a job killed by a signal, is not).
_NS_GRACE_STEPS = 100
_WAIT = 'while :; do wait "$1"; s=$?; kill -0 "$1" 2>/dev/null || break; done; '
# Exit as the child did: by its signal (128+N from wait), so that we see "killed by SIGSEGV".
_EXIT = (
    'if [ "$s" -gt 128 ]; then trap - TERM INT HUP; ulimit -c 0; kill -$((s-128)) $$; fi; exit "$s"'
)
_INIT = (
    "trap 'kill -TERM -1 2>/dev/null' TERM; trap : INT HUP; "
    '"$@" & c=$!; exec 3>&- 2>/dev/null; set -- "$c"; ' + _WAIT + "kill -TERM -1 2>/dev/null; n=0; "
    "while kill -0 -1 2>/dev/null; do n=$((n+1)); "
    f'[ "$n" -gt {_NS_GRACE_STEPS} ] && kill -KILL -1 2>/dev/null; sleep 0.02; done; ' + _EXIT
)
# Direct (see new_pid_namespace_for_children): our child is the init itself, one shell in
# front of the server, started with vfork (no preexec_fn: ~2 ms less than a fork of us).
# - stdin: the -displayfd pipe, moved to fd 3 as for "outside";
# - stdout: the read end of a pipe only we write to (close-on-exec here), moved to fd 4; the
#   init's own stdout becomes its stderr (the log). A watcher, the init's second child,
#   reads it: at end of file, i.e. once we are gone however we died (even before it
#   started), it SIGKILLs every process of the namespace; the init then ends, and so does the
#   namespace. This replaces PR_SET_PDEATHSIG, which would need a preexec_fn (a fork).
#   The watcher ignores TERM, INT and HUP: a stop's SIGTERM (to the group, and the init's
#   `kill -TERM -1`) must not end it, or a supervisor killed during the grace would leave a
#   server that resists SIGTERM running. Our fork()s without exec (multiprocessing) close
#   their copy of our end at once (see _close_watch_fds_after_fork).
# - after the server, the init ends the watcher (SIGKILL; `wait`, no polling) and goes on as
#   _INIT does. An init cannot kill itself by a signal, so _EXIT ends in `exit 128+N`, which
#   Child reads back as "killed by N".
_WATCH = "{ trap '' TERM INT HUP; read -r _ <&4; kill -KILL -1; } 3>&- 2>/dev/null & w=$!; "
_DIRECT_INIT = (
    "exec 3<&0 0</dev/null 4<&1 1>&2; trap 'kill -TERM -1 2>/dev/null' TERM; trap : INT HUP; "
    '"$@" 4<&- & c=$!; '
    + _WATCH
    + 'exec 3>&- 4<&- 2>/dev/null; set -- "$c"; '
    + _WAIT
    + 'kill -KILL "$w" 2>/dev/null; wait "$w"; kill -TERM -1 2>/dev/null; n=0; '
    "while kill -0 -1 2>/dev/null; do n=$((n+1)); "
    f'[ "$n" -gt {_NS_GRACE_STEPS} ] && kill -KILL -1 2>/dev/null; sleep 0.02; done; ' + _EXIT
)
_DIRECT = ("/bin/sh", "-c", _DIRECT_INIT, "xsupervise-init") if os.path.exists("/bin/sh") else None
# $1 is the supervisor's pid: if it died before PR_SET_PDEATHSIG was set again (setpriv, after
# a user namespace cleared it), nothing would ever stop us: leave at once.
_OUTSIDE = (
    "trap 'kill -TERM \"$i\" 2>/dev/null' TERM; trap : INT HUP; exec 3<&0 0</dev/null; "
    '[ "$PPID" = "$1" ] || exit 126; '
    'init=$2; shift 2; setpriv --pdeathsig KILL -- /bin/sh -c "$init" xsupervise-init "$@" & '
    'i=$!; exec 3>&- 2>/dev/null; set -- "$i"; ' + _WAIT + _EXIT
)
_probed: dict[str, object] = {}


def _can_unshare_directly() -> bool:
    """May this process make a PID namespace itself (a syscall and its undo: microseconds)?"""
    if "direct" not in _probed:
        from ..host.processes import new_pid_namespace_for_children, restore_pid_namespace

        try:
            restore_pid_namespace(new_pid_namespace_for_children())
            _probed["direct"] = _DIRECT is not None
        except OSError:
            _probed["direct"] = False
    return bool(_probed["direct"])


def _namespace_prefix() -> tuple[str, ...] | None:
    """The `unshare` command line that makes a PID namespace here, or None if none can be."""
    if "pidns" in _probed:
        return _probed["pidns"]  # type: ignore[return-value]
    import shutil
    import subprocess

    prefix: tuple[str, ...] | None = None
    unshare = shutil.which("unshare")
    if unshare is not None:
        # A user namespace clears our PR_SET_PDEATHSIG (new credentials): setpriv sets it again.
        user = () if os.geteuid() == 0 else ("--user", "--map-root-user")
        again = () if not user else ("setpriv", "--pdeathsig", "KILL", "--")
        candidate = (unshare, *user, "--pid", "--", *again, "/bin/sh", "-c", _OUTSIDE)
        try:
            probe = subprocess.run(
                (*candidate, "xsupervise-ns", str(os.getpid()), _INIT, "true"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=5,
            )
            prefix = candidate if probe.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            prefix = None
    _probed["pidns"] = prefix
    return prefix


class Boundary:
    """The boundary one spawned process (an X server, a COMMAND) and its descendants live in."""

    def __init__(
        self,
        kind: str,
        cgroup: str | None,
        namespace: tuple[str, ...] | None,
        direct: bool = False,
        user: bool = False,
    ):
        self.kind = kind  # "cgroup", "pidns" or "group"
        self.cgroup = cgroup
        self.namespace = namespace  # the command line in front of the program
        self.direct = direct  # our child is the namespace's init (see _DIRECT)
        self.user = user  # direct, in a user namespace too (see enter_user_namespace)
        self.prefix: tuple[str, ...] = ()  # without a namespace: see _AS_AN_INIT_WOULD
        self.watch_fd = -1  # direct: our end of the watcher's pipe; closing it kills all
        self._procs = os.path.join(cgroup, "cgroup.procs").encode() if cgroup else b""
        self._keeper: tuple[int, int] | None = None  # a cgroup's keeper (see start_keeper)
        self._report = (-1, -1)  # a cgroup's spawn: the pipe its copy's pid comes back on
        self.clone_killed = False  # see entered_copy
        self.init_pidfd = -1  # a namespace's init: it exits once the namespace is empty

    def find_program(self, outside: int) -> tuple[int, int] | None:
        """In a namespace: (pid, start ticks) of the program its init runs, once it does; and
        a pidfd on the init (see watch_init)."""
        if self.namespace is None:
            return None
        from ..host.processes import start_ticks

        if self.direct:  # our child is the init: its end is the namespace's, no pidfd needed
            pid = child_of(outside, "2")
        else:
            init, pid = program_pid(outside)
            if init is not None:
                self.watch_init(init, outside)
        ticks = start_ticks(pid) if pid is not None else None
        return (pid, ticks) if pid is not None and ticks is not None else None

    def watch_init(self, init: int, outside: int) -> None:
        """Hold a pidfd on the namespace's init (still ``outside``'s child: not a reused pid).
        Our child, outside, may be reaped before the kernel has emptied the namespace; the
        init's exit comes after that (see _teardown.clear_steps)."""
        if self.init_pidfd >= 0:
            return
        from ..host.processes import proc_stat

        try:
            pidfd = os.pidfd_open(init)
        except OSError:
            return
        fields = proc_stat(init)
        if fields is not None and int(fields[1]) == outside:
            self.init_pidfd = pidfd
        else:
            os.close(pidfd)

    def spawned(self, popen: _Spawned) -> None:
        """Once our child is in the cgroup: start its keeper, which kills the cgroup if we die.
        If we cannot, the child (unwatched yet, so it must not live) and the cgroup go."""
        if self.cgroup is not None and self._keeper is None:
            try:
                self._keeper = start_keeper(self.cgroup)
            except BaseException:
                popen.kill()
                popen.wait()
                self.kill()
                self.remove()
                raise

    def __repr__(self) -> str:
        return f"<Boundary {self.describe()}>"

    def describe(self) -> str:
        """For the `-v` line: 'pid and user namespace', 'cgroup /sys/fs/cgroup/...'."""
        if self.namespace:
            user = self.user or "--user" in self.namespace
            return "pid and user namespace" if user else "pid namespace"
        if self.cgroup:
            return f"cgroup {self.cgroup}"
        return "process group and session (no namespace or cgroup can be made here)"

    def argv(self, argv: Sequence[str]) -> list[str]:
        if self.namespace is None:
            return [*self.prefix, *argv]
        if self.direct:
            return [*self.namespace, *argv]
        return [*self.namespace, "xsupervise-ns", str(os.getpid()), _INIT, *argv]

    def before_spawn(self) -> None:
        """Before a cgroup's fork: the pipe on which enter() reports the copy that execs.
        Above fd 2, as subprocess keeps its own pipe: the child's 0-2 are made before enter()
        runs, and would overwrite a pipe of ours there (our own 0-2 may be closed)."""
        if self.cgroup is not None:
            self._report = pipe_above_2()

    def enter(self) -> None:
        """In the child, between fork and exec: get into the cgroup before anything forks.

        Born there rather than moved in: the child forks a copy of itself into the cgroup as
        our child (host.processes.fork_into_cgroup), reports its pid and leaves; the copy goes on
        to exec. Moving in (a write to cgroup.procs) waits for an RCU grace period, up to
        25 ms here; it remains the way where clone3 cannot (Linux < 5.7)."""
        if not self._procs:
            return
        leader = os.getpid()
        try:
            if "clone3" in REFUSED:
                raise OSError("clone3 is refused here (see clone3_refused)")
            directory = os.open(self.cgroup or "", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            os.write(self._report[1], b"c")  # cloning: nothing more means it killed us
            pid = fork_into_cgroup(directory)
        except OSError:
            os.write(self._report[1], b"m")  # moving in: we go on to run the program
        else:
            if pid:
                try:  # whatever happens, never go on to exec a second copy of the program
                    os.write(self._report[1], pid.to_bytes(4, "little"))
                finally:
                    os._exit(0)
            if os.getsid(0) == leader:  # the spawn asked for a session of its own
                os.setsid()
            return
        fd = os.open(self._procs, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

    def entered_copy(self) -> int | None:
        """After a cgroup's spawn: the pid of the copy enter() made, which runs the program
        (the child it was forked from has left), or None: the child itself runs it. Once.
        ``clone_killed``: the child died in the clone (a seccomp filter's SIGSYS)."""
        read_end, write_end = self._report
        if read_end < 0:
            return None
        self._report = (-1, -1)
        os.close(write_end)
        try:
            data = os.read(read_end, 8)  # written before its writer left or exec'd: no wait
        finally:
            os.close(read_end)
        self.clone_killed = data == b"c"
        return int.from_bytes(data[1:], "little") if len(data) == 5 else None

    def kill(self) -> None:
        """SIGKILL everything in the cgroup at once (Linux >= 5.14)."""
        if self.cgroup:
            kill_cgroup(self.cgroup)

    def empty_steps(self, timeout: float) -> Steps[bool]:
        """Wait (on inotify, no polling) until the cgroup is empty; False after ``timeout``."""
        if not self.cgroup:
            return True
        return (yield from empty_steps(self.cgroup, timeout))

    def watch(self, fd: int) -> None:
        """Hold our end of a direct namespace's watcher pipe (see _DIRECT)."""
        self.watch_fd = fd
        _WATCHING.add(self)

    def release_watch(self) -> None:
        """Close our end of a direct namespace's watcher pipe: once our child is reaped (it
        is empty then), or to end it at once if it is not."""
        _WATCHING.discard(self)
        if self.watch_fd >= 0:
            os.close(self.watch_fd)
            self.watch_fd = -1

    def remove(self) -> None:
        self.release_watch()
        copy = self.entered_copy()
        if copy is not None and self.cgroup:
            # The spawn failed after enter() (its exec, or a ^C raised as it returned): the
            # copy may run the program. It was born in the cgroup, which holds nothing else
            # of anyone's: end it there (never by its pid, which SIGCHLD ignored frees).
            kill_cgroup(self.cgroup)
            try:
                os.waitpid(copy, 0)
            except ChildProcessError:
                pass  # SIGCHLD ignored: the kernel reaped it
            clear_cgroup(self.cgroup, 1.0)
        if self._keeper is not None:
            stop_keeper(*self._keeper)
            self._keeper = None
        if self.cgroup:
            remove_cgroup(self.cgroup)


_WATCHING: set[Boundary] = set()  # boundaries holding a watcher pipe's end (see _DIRECT)


# Unprivileged, our child cannot be the init as root's is (a user namespace cannot be entered
# by a process with threads, nor left). So our child, between fork and exec (one thread),
# forks a copy of itself into a new user namespace and a new PID namespace, as our own child
# (CLONE_PARENT), writes the copy's uid and gid maps (ours as root there, as `unshare
# --map-root-user` does), reports its pid and leaves; the copy, pid 1 there, waits for its
# maps and execs the same init as root's (_DIRECT): one process of ours in front of the
# server, where the `unshare --user` chain (_namespace_prefix) put two shells. Where user
# namespaces are refused, the first start falls back (see launch.process) and later ones use
# that chain's probe, then a cgroup or the group.

# The mechanisms that turned out to be refused here ("user namespace": the init above;
# "clone3": a cgroup's spawn, see clone3_refused): later starts do not try them again.
REFUSED: set[str] = set()


def after_user_namespace_refused() -> Boundary:
    """A start could not make its user namespace: later ones do not try again, and this one
    gets the `unshare --user` chain where its probe says it works, else the group."""
    REFUSED.add("user namespace")
    prefix = _namespace_prefix()
    if prefix is not None:
        return Boundary("pidns", None, prefix)
    group = Boundary("group", None, None)
    group.prefix = _AS_AN_INIT_WOULD  # the spawn was made for an init's descriptors
    return group


# What a namespace's init does with its descriptors (stdin, an X server's -displayfd pipe,
# becomes fd 3), for a program spawned as if for one that then runs without: the shell execs
# it, so nothing stands in front of it.
_AS_AN_INIT_WOULD = ("/bin/sh", "-c", 'exec 3<&0 0</dev/null; exec "$@"', "xsupervise-exec")


def _may_make_user_namespaces() -> bool:
    """What the kernel's settings say (a start finds out the rest)."""
    for path, refusing in (
        ("/proc/sys/user/max_user_namespaces", "0"),
        ("/proc/sys/kernel/unprivileged_userns_clone", "0"),  # Debian's switch
    ):
        try:
            with open(path) as stream:
                if stream.read().strip() == refusing:
                    return False
        except OSError:
            pass
    return True


def enter_user_namespace(own_group: bool, report: int) -> Callable[[], None]:
    """The preexec_fn of an unprivileged direct spawn (see above). ``report``: where the
    copy's pid, then b"\x01" once its maps are written, go. The copy waits for its maps on a
    pipe only it and its forker hold: it leaves (126) if they could not be written, or if the
    forker died first (end of file: nobody else holds that pipe's write end)."""
    uid, gid = os.geteuid(), os.getegid()

    def enter() -> None:
        go = os.pipe2(os.O_CLOEXEC)
        pid = fork_into_new_namespaces()  # OSError: Popen raises SubprocessError
        if pid:
            try:
                os.write(report, pid.to_bytes(4, "little"))
                try:
                    for name, line in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1")):
                        _write_proc(pid, name, line)
                    _write_proc(pid, "gid_map", f"0 {gid} 1")
                except OSError:
                    os.write(go[1], b"0")
                else:
                    os.write(go[1], b"1")
                    os.write(report, b"\x01")
            finally:
                os._exit(0)
        os.close(go[1])
        if os.read(go[0], 1) != b"1":
            os._exit(126)
        if own_group:
            os.setsid()
        for signum in STOP_SIGNALS:  # the init's shell traps them: none may stay ignored
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())  # as root's init: none held

    return enter


def _write_proc(pid: int, name: str, line: str) -> None:
    fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def clone3_refused() -> None:
    """A cgroup's spawn whose child died in clone3 (a seccomp filter that kills with SIGSYS):
    this process moves its children in from now on. (A filter that answers ENOSYS or EPERM,
    as Docker's does, needs nothing: enter() moves in.)"""
    REFUSED.add("clone3")


def _close_watch_fds_after_fork() -> None:
    """In a child we fork() without exec: our ends of the watchers' pipes are the parent's
    alone, or that child would keep every namespace alive after the parent's death."""
    for boundary in _WATCHING:
        try:
            os.close(boundary.watch_fd)
        except OSError:
            pass
        boundary.watch_fd = -1
    _WATCHING.clear()


os.register_at_fork(after_in_child=_close_watch_fds_after_fork)


def choose(label: str) -> Boundary:
    """The best boundary this process can make, for a spawn named ``label`` (session token and
    a count). A PID namespace first: it holds everything (setsid and setuid included) and dies
    with the supervisor by itself; then a cgroup of our own (the server is born in it, see
    enter(); a keeper kills it when the supervisor dies); then the group.
    Makes the cgroup directory now; ``Boundary.remove`` removes it."""
    wanted = os.environ.get("XSUPERVISE_CONTAINMENT", "auto")  # tests, bench: force a kind
    if wanted in ("auto", "pidns"):
        if _can_unshare_directly():
            return Boundary("pidns", None, _DIRECT, direct=True)
        if _DIRECT is not None and "user namespace" not in REFUSED and _may_make_user_namespaces():
            return Boundary("pidns", None, _DIRECT, direct=True, user=True)
        namespace = _namespace_prefix()
        if namespace is not None:
            return Boundary("pidns", None, namespace)
    base = cgroup_base() if wanted in ("auto", "cgroup") else None
    if base is not None:
        path = os.path.join(base, CGROUP_PREFIX + label)
        try:
            os.mkdir(path)
        except OSError:
            pass
        else:
            if os.path.exists(os.path.join(path, "cgroup.kill")):
                return Boundary("cgroup", path, None)
            remove_cgroup(path)
    return Boundary("group", None, None)


def program_pid(outside: int) -> tuple[int | None, int | None]:
    """In a PID namespace: the pids (in ours) of its init (``outside``'s child) and of the
    program the init runs, i.e. pid 2 of the namespace (the init's first child; its later ones
    are `sleep`s); None where one is not, or no longer, there. Reads /proc (there is no
    /proc/PID/task/*/children on every kernel), the likely pids first."""
    init = child_of(outside)
    return init, (child_of(init, "2") if init is not None else None)


def child_of(parent: int, inner: str | None = None) -> int | None:
    """A child of ``parent`` (whose pid in its own namespace is ``inner``, if given)."""
    from ..host.processes import proc_stat

    candidates = [str(pid) for pid in range(parent + 1, parent + 8)]  # usually the next
    for name in (*candidates, *(n for n in os.listdir("/proc") if n.isdigit())):
        fields = proc_stat(int(name))
        if fields and int(fields[1]) == parent and (inner is None or _nspid(name) == inner):
            return int(name)
    return None


def _nspid(pid: str) -> str | None:
    """The pid of ``pid`` in its own (innermost) namespace."""
    try:
        with open(f"/proc/{pid}/status") as stream:
            return next((line.split()[-1] for line in stream if line.startswith("NSpid:")), None)
    except OSError:
        return None


# --- cgroup v2 -----------------------------------------------------------------------------------
# cgroup v2 for containment: find our own writable cgroup, make, kill
# (``cgroup.kill``, Linux >= 5.14), wait until empty (inotify on ``cgroup.events``), remove.

CGROUP_PREFIX = "xsupervise-"
_probed_base: dict[str, str | None] = {}
_KEEPERS: dict[int, subprocess.Popen[bytes]] = {}  # pid -> the keeper (see start_keeper)


def cgroup_base() -> str | None:
    """Our own cgroup v2 directory, if we may create cgroups under it and move processes."""
    if "cgroup" in _probed_base:
        return _probed_base["cgroup"]
    base = None
    try:
        with open("/proc/self/cgroup") as stream:
            relative = next((line[3:].strip() for line in stream if line.startswith("0::")), None)
        mount = None
        with open("/proc/self/mountinfo") as stream:
            for line in stream:
                before, _, after = line.partition(" - ")
                if after.split(" ", 1)[0] == "cgroup2":
                    fields = before.split()
                    mount = (fields[3], fields[4])  # (root within the hierarchy, mount point)
                    break
        if relative is not None and mount is not None and relative.startswith(mount[0]):
            inside = relative[len(mount[0]) :].strip("/")
            candidate = os.path.join(mount[1], inside) if inside else mount[1]
            procs = os.path.join(candidate, "cgroup.procs")
            if os.access(candidate, os.W_OK) and os.access(procs, os.W_OK):
                base = candidate
    except OSError:
        base = None
    _probed_base["cgroup"] = base
    return base


def populated(cgroup: str) -> bool:
    try:
        with open(os.path.join(cgroup, "cgroup.events")) as stream:
            return "populated 1" in stream.read()
    except FileNotFoundError:
        return False


def kill_cgroup(cgroup: str) -> None:
    try:
        with open(os.path.join(cgroup, "cgroup.kill"), "w") as stream:
            stream.write("1")
    except FileNotFoundError:
        pass


def remove_cgroup(cgroup: str) -> None:
    try:
        os.rmdir(cgroup)
    except (FileNotFoundError, OSError):
        pass  # busy: a process stuck in the kernel; recovery tries again later


def _watch(path: str) -> int:
    """An inotify fd that becomes readable when ``path`` (a cgroup.events) changes; -1 if none."""
    from ..host.processes import IN_MODIFY, inotify_watch

    try:
        return inotify_watch(path, IN_MODIFY)
    except OSError:
        return -1


def all_cgroup_tokens() -> dict[str, list[str]]:
    """Every session token with cgroups under our base, and their paths."""
    base = cgroup_base()
    found: dict[str, list[str]] = {}
    if base is None:
        return found
    try:
        names = os.listdir(base)
    except OSError:
        return found
    for name in names:
        if name.startswith(CGROUP_PREFIX):
            token, _, _ = name[len(CGROUP_PREFIX) :].rpartition("-")
            found.setdefault(token, []).append(os.path.join(base, name))
    return found


def visible_to_us(cgroup: str) -> bool:
    """Whether every process of ``cgroup`` is in our PID namespace: cgroup.procs lists as 0 a
    process we cannot see, i.e. one of another namespace's supervisors, never ours to judge
    (its pid means nothing here, so "its supervisor is dead" cannot be told)."""
    try:
        with open(os.path.join(cgroup, "cgroup.procs")) as stream:
            return "0" not in stream.read().split()
    except OSError:
        return False


def clear_cgroup(cgroup: str, timeout: float) -> bool:
    """Kill a cgroup's processes, wait until it is empty and remove it (blocking: recovery)."""
    from ..host.processes import run_blocking

    kill_cgroup(cgroup)
    empty = run_blocking(empty_steps(cgroup, timeout))
    remove_cgroup(cgroup)
    return bool(empty)


def empty_steps(cgroup: str, timeout: float) -> Steps[bool]:
    """Wait (on inotify, no polling) until ``cgroup`` is empty; False after ``timeout``."""
    import time

    if not populated(cgroup):  # the usual case: no inotify, whose close waits ~4 ms (SRCU)
        return True
    deadline = time.monotonic() + timeout
    watch = _watch(os.path.join(cgroup, "cgroup.events"))
    try:
        while populated(cgroup):
            if time.monotonic() >= deadline:
                return False
            # Without inotify (its instances used up): look again every 20 ms.
            soon = deadline if watch >= 0 else min(deadline, time.monotonic() + 0.02)
            ready = yield Wait((watch,) if watch >= 0 else (), soon)
            if ready and watch >= 0:
                os.read(watch, 4096)
    finally:
        if watch >= 0:
            os.close(watch)
    return True


# The keeper kills a cgroup when its supervisor dies, however it dies: it reads a pipe whose
# only writer is the supervisor (close-on-exec, so no child holds it) and writes cgroup.kill
# at end of file. It is not in the cgroup, does not die with us (no PR_SET_PDEATHSIG), and
# exits at once after a clean stop, when we close the pipe ourselves.
_KEEPER = 'read -r _; echo 1 > "$1" 2>/dev/null; exit 0'


def start_keeper(cgroup: str) -> tuple[int, int]:
    """Spawn the keeper of ``cgroup``; return its (pid, our end of its pipe)."""
    import subprocess

    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        keeper = subprocess.Popen(
            ["/bin/sh", "-c", _KEEPER, "xsupervise-keeper", os.path.join(cgroup, "cgroup.kill")],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a signal to our group (^C) must not fire it early
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    _KEEPERS[keeper.pid] = keeper
    UNREAPED_CHILDREN.add(keeper.pid)  # its Popen reaps it (stop_keeper), not reap_orphans
    return keeper.pid, write_end


def stop_keeper(pid: int, write_end: int) -> None:
    """After a clean teardown: end the keeper (the cgroup is empty: its kill is a no-op)."""
    import subprocess

    os.close(write_end)
    keeper = _KEEPERS.pop(pid, None)
    if keeper is not None:
        try:
            keeper.wait(timeout=1.0)  # it exits as soon as it reads end of file: ~1 ms
        except subprocess.TimeoutExpired:
            _KEEPERS[pid] = keeper  # still ours: never left unreaped for good
        else:
            UNREAPED_CHILDREN.discard(pid)
