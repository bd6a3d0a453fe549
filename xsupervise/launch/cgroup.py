"""cgroup v2 for containment (see launch.containment): find our own writable cgroup, make, kill
(``cgroup.kill``, Linux >= 5.14), wait until empty (inotify on ``cgroup.events``), remove."""

from __future__ import annotations

import os

from ..host.steps import Steps, Wait

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess

CGROUP_PREFIX = "xsupervise-"
_probed: dict[str, str | None] = {}
_KEEPERS: dict[int, subprocess.Popen[bytes]] = {}  # pid -> the keeper (see start_keeper)


def cgroup_base() -> str | None:
    """Our own cgroup v2 directory, if we may create cgroups under it and move processes."""
    if "cgroup" in _probed:
        return _probed["cgroup"]
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
    from ..host.prctl import IN_MODIFY, inotify_watch

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
    from ..host.steps import run_blocking

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
