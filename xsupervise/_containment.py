"""Containment: a boundary around every process a session starts, so that none outlives it.

Best first (see docs/containment.md for what each guarantees and needs):

- ``cgroup``: a cgroup v2 of the session's own (where the hierarchy is writable: root, a unit
  with ``Delegate=yes``), *and* a PID namespace when one can be made. Teardown writes
  ``cgroup.kill`` and waits until the cgroup is empty; crash recovery kills a dead
  supervisor's cgroup.
- ``pidns``: a PID namespace (with a user namespace when unprivileged). Its init is a shell
  that gets SIGHUP when the supervisor dies (``unshare --kill-child``) and then exits, and the
  kernel kills everything else in the namespace with it.
- ``group``: the fallback: a process group and session; crash recovery sweeps the session.

The cgroup and the namespace are chosen once per process (a probe: ``unshare ... true``).
``XSUPERVISE_CONTAINMENT`` (auto, cgroup, pidns, group) caps the choice: for tests and bench.
"""

from __future__ import annotations

import os

from ._steps import Steps, Wait

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

CGROUP_PREFIX = "xsupervise-"
# The namespace's init: runs the server, forwards nothing (the server shares our process group,
# so our SIGTERM reaches it), and leaves when the supervisor dies (SIGHUP from --kill-child):
# init's exit makes the kernel SIGKILL everything else in the namespace.
_INIT = (
    'trap "exit 129" HUP; trap \'kill -TERM "$child" 2>/dev/null\' TERM; trap : INT; '
    '"$@" & child=$!; '
    'while :; do wait "$child"; status=$?; kill -0 "$child" 2>/dev/null || exit "$status"; done'
)
_probed: dict[str, object] = {}


def _cgroup_base() -> str | None:
    """Our own cgroup v2 directory, if we may create cgroups under it and move processes."""
    if "cgroup" in _probed:
        return _probed["cgroup"]  # type: ignore[return-value]
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
    _probed["cgroup"] = base
    return base


def _namespace_prefix() -> tuple[str, ...] | None:
    """The `unshare` command line that makes a PID namespace here, or None if none can be."""
    if "pidns" in _probed:
        return _probed["pidns"]  # type: ignore[return-value]
    import shutil
    import subprocess

    prefix: tuple[str, ...] | None = None
    unshare = shutil.which("unshare")
    if unshare is not None:
        user = () if os.geteuid() == 0 else ("--user", "--map-root-user")
        candidate = (unshare, *user, "--pid", "--fork", "--kill-child=SIGHUP", "--")
        try:
            probe = subprocess.run(
                (*candidate, "true"),
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

    def __init__(self, kind: str, cgroup: str | None, namespace: tuple[str, ...] | None):
        self.kind = kind  # "cgroup", "pidns" or "group"
        self.cgroup = cgroup
        self.namespace = namespace
        self._procs = os.path.join(cgroup, "cgroup.procs").encode() if cgroup else b""

    def __repr__(self) -> str:
        return f"<Boundary {self.describe()}>"

    def describe(self) -> str:
        """For the `-v` line: 'cgroup /sys/fs/cgroup/...; pid namespace'."""
        parts = []
        if self.cgroup:
            parts.append(f"cgroup {self.cgroup}")
        if self.namespace:
            user = " and user" if "--user" in self.namespace else ""
            parts.append(f"pid{user} namespace")
        return "; ".join(parts) or "process group and session (no cgroup or namespace here)"

    def argv(self, argv: Sequence[str]) -> list[str]:
        if self.namespace is None:
            return list(argv)
        return [*self.namespace, "/bin/sh", "-c", _INIT, "xsupervise-init", *argv]

    def enter(self) -> None:
        """In the child, between fork and exec: move into the cgroup (before any fork)."""
        if self._procs:
            fd = os.open(self._procs, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)

    def kill(self) -> None:
        """SIGKILL everything in the cgroup at once (Linux >= 5.14)."""
        if self.cgroup:
            kill_cgroup(self.cgroup)

    def empty_steps(self, timeout: float) -> Steps[bool]:
        """Wait (on inotify, no polling) until the cgroup is empty; False after ``timeout``."""
        if not self.cgroup:
            return True
        import time

        deadline = time.monotonic() + timeout
        watch = _watch(os.path.join(self.cgroup, "cgroup.events"))
        try:
            while populated(self.cgroup):
                if time.monotonic() >= deadline:
                    return False
                ready = yield Wait((watch,) if watch >= 0 else (), deadline)
                if ready and watch >= 0:
                    os.read(watch, 4096)
        finally:
            if watch >= 0:
                os.close(watch)
        return True

    def remove(self) -> None:
        if self.cgroup:
            remove_cgroup(self.cgroup)


def choose(label: str) -> Boundary:
    """The best boundary this process can make, for a spawn named ``label`` (session token and
    a role). Makes the cgroup directory now; ``Boundary.remove`` removes it."""
    wanted = os.environ.get("XSUPERVISE_CONTAINMENT", "auto")  # tests, bench: force a kind
    namespace = _namespace_prefix() if wanted in ("auto", "cgroup", "pidns") else None
    base = _cgroup_base() if wanted in ("auto", "cgroup") else None
    if base is not None:
        path = os.path.join(base, CGROUP_PREFIX + label)
        try:
            os.mkdir(path)
        except OSError:
            pass
        else:
            if os.path.exists(os.path.join(path, "cgroup.kill")):
                return Boundary("cgroup", path, namespace)
            remove_cgroup(path)
    if namespace is not None:
        return Boundary("pidns", None, namespace)
    return Boundary("group", None, None)


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
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = int(libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK))
    if fd < 0:
        return -1
    if libc.inotify_add_watch(fd, path.encode(), 0x00000002) < 0:  # IN_MODIFY
        os.close(fd)
        return -1
    return fd


def all_cgroup_tokens() -> dict[str, list[str]]:
    """Every session token with cgroups under our base, and their paths."""
    base = _cgroup_base()
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


def clear_cgroup(cgroup: str, timeout: float) -> bool:
    """Kill a cgroup's processes, wait until it is empty and remove it (blocking: recovery)."""
    from ._steps import run_blocking

    kill_cgroup(cgroup)
    empty = run_blocking(Boundary("cgroup", cgroup, None).empty_steps(timeout))
    remove_cgroup(cgroup)
    return bool(empty)


def sweep_session(sid: int, ticks: int, grace: float) -> list[int]:
    """The fallback's crash recovery: SIGTERM, then SIGKILL, every process of ours whose session
    is ``sid`` (the server's) and that started no earlier than the server (``ticks``). Each is
    pinned by pidfd and checked first; a session id is not reused while a member lives."""
    from ._pinned import Pinned, proc_stat, terminate_pinned

    uid = os.geteuid()
    swept = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        fields = proc_stat(pid)
        # After the command name: state, ppid, pgrp, session, ... starttime is field 19 here.
        if not fields or int(fields[3]) != sid or int(fields[19]) < ticks or fields[0] == "Z":
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
        except OSError:
            continue
        process = Pinned.pin(pid, int(fields[19]))
        if process is not None:
            terminate_pinned(process, grace)
            process.close()
            swept.append(pid)
    return swept
