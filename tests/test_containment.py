"""Containment (issue 11): nothing a session starts outlives it, whatever shape its server has.

Each fake server shape (tests/fake_x.py: wrapper, background, double-fork) goes through a clean
stop, a failed start and a SIGKILL of its supervisor, under each mechanism this machine offers
(XSUPERVISE_CONTAINMENT caps the choice). The fake reports every pid it makes; all must go.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    XSUPERVISE,
    fake_server,
    read_line,
    read_report,
    requires_xvfb,
    start_cli,
    wait_gone,
)
from xsupervise.launch import containment as _cgroup
from xsupervise.launch import containment as _containment


def _available() -> list[str]:
    kinds = ["group"]
    if _containment._namespace_prefix() is not None:
        kinds.append("pidns")
    if _cgroup.cgroup_base() is not None:
        kinds.append("cgroup")
    return kinds


KINDS = _available()
requires_own_pidns = pytest.mark.skipif(
    not _containment._can_unshare_directly(),
    reason="needs CAP_SYS_ADMIN (a PID namespace of our own)",
)
requires_cgroup = pytest.mark.skipif("cgroup" not in KINDS, reason="no writable cgroup v2 here")
pytestmark = requires_xvfb


def _pids(report: Path) -> list[int]:
    facts = read_report(report)
    return [int(facts[key]) for key in ("pid", "server", "daemon", "first") if key in facts]


def _env(kind: str, report: Path) -> dict[str, str]:
    return {**os.environ, "XSUPERVISE_CONTAINMENT": kind, "FAKE_X_REPORT": str(report)}


def _wait_report(report: Path, key: str) -> None:
    import time

    deadline = time.monotonic() + 10
    while key not in read_report(report):  # the fake writes it within milliseconds
        assert time.monotonic() < deadline, f"fake never reported {key}"
        time.sleep(0.01)


@pytest.mark.parametrize("kind", KINDS)
def test_a_wrapper_server_stops_whole(kind: str, tmp_path: Path, runtime_dir: Path):
    report = tmp_path / "report"
    env = _env(kind, report)
    with start_cli("start", "--json", "--server", fake_server("wrapper"), env=env) as process:
        facts = json.loads(read_line(process.stdout))
        status = subprocess.run(
            [*XSUPERVISE, "status", "--json"], env=env, capture_output=True, timeout=30
        )
        pids = _pids(report)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    assert json.loads(status.stdout)[0]["containment"] == kind
    assert len(pids) == 2
    assert all(wait_gone(pid, 1.0) for pid in pids)
    assert facts["server_pid"]


# A failed start: the deadline is waited for (the fake forks its daemon within milliseconds,
# 1 s leaves room under load), then the grace (the cgroup waits it for the setsid daemon,
# which no SIGTERM reaches); the test is that nothing is left, not how long either is.
FAIL_FAST = ["--timeout", "1", "--kill-grace", "0.1"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", ["background", "double-fork"])
def test_a_failed_start_leaves_nothing(kind: str, shape: str, tmp_path: Path):
    report = tmp_path / "report"
    result = subprocess.run(
        [*XSUPERVISE, "run", *FAIL_FAST, "--server", fake_server(shape), "--", "true"],
        env=_env(kind, report),
        capture_output=True,
        timeout=60,
    )
    assert result.returncode != 0
    pids = _pids(report)
    assert len(pids) == 3  # the fake, its first fork, its daemon
    assert all(wait_gone(pid, 1.0) for pid in pids), result.stderr


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", ["wrapper", "background", "double-fork"])
def test_a_sigkilled_supervisor_leaves_nothing(
    kind: str, shape: str, tmp_path: Path, runtime_dir: Path
):
    report = tmp_path / "report"
    env = _env(kind, report)
    args = ["start", "--json", "--timeout", "30", "--server", fake_server(shape)]
    with start_cli(*args, env=env) as process:
        if shape == "wrapper":
            read_line(process.stdout)
        else:
            _wait_report(report, "daemon")
        pids = _pids(report)
        process.kill()
        process.wait()
    escapes = kind == "group" and shape != "wrapper"
    if escapes:
        # The fallback cannot follow a setsid daemon; the next command sweeps what it can.
        pids = pids[:1]
    if kind != "group":
        assert all(wait_gone(pid, 1.0) for pid in pids)  # nobody's help needed
    subprocess.run([*XSUPERVISE, "run", "--", "true"], env=env, check=True, timeout=60)
    # The fallback's escaped daemon is expected to be alive (killed below): not waited for.
    escaped = int(read_report(report)["daemon"]) if escapes else None
    leftover = [pid for pid in _pids(report) if not wait_gone(pid, 0 if pid == escaped else 1.0)]
    for pid in leftover:  # only the fallback's escaped daemon; by its pid, then fail
        os.kill(pid, signal.SIGKILL)
        assert wait_gone(pid, 10.0)  # gone, not just signalled, before the leak check looks
    assert escapes or not leftover
    assert list((runtime_dir / "sessions").iterdir()) == []


@requires_cgroup
def test_cgroups_are_removed(tmp_path: Path):
    base = _cgroup.cgroup_base()
    assert base is not None
    before = {name for name in os.listdir(base) if name.startswith("xsupervise-")}
    subprocess.run(
        [*XSUPERVISE, "run", "--", "true"], env=_env("cgroup", tmp_path / "r"), check=True
    )
    after = {name for name in os.listdir(base) if name.startswith("xsupervise-")}
    assert after <= before


@pytest.mark.parametrize("command", ["list", "status", "clean"])
def test_the_next_command_sweeps_what_a_killed_supervisor_left(
    command: str, tmp_path: Path, runtime_dir: Path
):
    """The fallback (a process group and session) cannot stop a grandchild when its supervisor
    is SIGKILLed: the next command does, and list/status show the session as abandoned."""
    report = tmp_path / "report"
    env = _env("group", report)
    with start_cli("start", "--json", "--server", fake_server("wrapper"), env=env) as process:
        read_line(process.stdout)
        server = int(read_report(report)["server"])
        supervisor = process.pid
        process.kill()
        process.wait()
    assert not wait_gone(server, 0.2)  # the grandchild outlived its supervisor
    shown = subprocess.run(
        [*XSUPERVISE, command, *(["--json"] if command == "status" else [])],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    assert wait_gone(server, 1.0)  # swept by that command, pinned by pid and start time
    left = list((runtime_dir / "sessions").iterdir())
    if command == "clean":
        assert left == []
        return
    assert left, "list and status keep the files until a start, run or clean"
    if command == "status":
        (entry,) = json.loads(shown.stdout)
        assert entry["state"] == "abandoned"
        assert f"supervisor pid {supervisor} died" in entry["abandoned"]
        assert "left: record, cookie, log" in entry["abandoned"]
    else:
        assert "abandoned" in shown.stdout and f"supervisor pid {supervisor} died" in shown.stdout
    subprocess.run([*XSUPERVISE, "clean"], env=env, check=True, capture_output=True, timeout=30)
    assert list((runtime_dir / "sessions").iterdir()) == []


def test_what_a_command_left_is_swept_after_its_supervisor_is_killed(
    tmp_path: Path, runtime_dir: Path
):
    """COMMAND keeps the caller's terminal and signals, outside the server's boundary: what it
    leaves when its supervisor is SIGKILLed carries COMMAND's mark (XSUPERVISE_COMMAND_OF),
    and the next command stops it, and nothing that merely uses the display."""
    pids = tmp_path / "pids"
    script = f"sleep 300 & echo $! > {pids}; echo started; wait"
    _kill_a_supervisor_of(script, pids, tmp_path, runtime_dir)


def _kill_a_supervisor_of(script: str, pids: Path, tmp_path: Path, runtime_dir: Path) -> None:
    with start_cli("start", "--", "sh", "-c", script) as process:
        while read_line(process.stdout).strip() != "started":  # after start's own lines
            pass
        orphan = int(pids.read_text())
        process.kill()
        process.wait()
    assert not wait_gone(orphan, 0.2)  # COMMAND (sh) died with its supervisor, not its child
    bystander = subprocess.Popen(  # the display's env, not COMMAND's mark: not COMMAND's
        ["sleep", "301"], env={**os.environ, "XAUTHORITY": _auth_path(runtime_dir)}
    )
    try:
        subprocess.run([*XSUPERVISE, "list"], check=True, capture_output=True, timeout=30)
        assert wait_gone(orphan, 1.0)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
    subprocess.run([*XSUPERVISE, "clean"], check=True, capture_output=True, timeout=30)


def _auth_path(runtime_dir: Path) -> str:
    (cookie,) = (runtime_dir / "sessions").glob("*.xauth")
    return str(cookie)


def _children_other_than_keepers() -> list[int]:
    import psutil

    def is_keeper(child: psutil.Process) -> bool:  # a cgroup's (see launch.containment)
        try:
            return "xsupervise-keeper" in child.cmdline()
        except psutil.ZombieProcess:
            return False

    return [child.pid for child in psutil.Process().children() if not is_keeper(child)]


@requires_cgroup
@pytest.mark.parametrize("born", [True, False], ids=["born-in-it", "moved-in"])
def test_a_cgroups_server_is_our_child_in_its_own_session_and_cgroup(born: bool, monkeypatch):
    """Issue 22: the server is born in its cgroup (clone3, CLONE_INTO_CGROUP: no RCU grace
    period to wait for), forked by our child as *our* child, which then leaves. It is still
    our child, leads its own session, and nothing else of ours is left. Where clone3 cannot,
    the child moves itself in, as before."""
    import errno

    import psutil

    import xsupervise

    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    real = _containment.fork_into_cgroup

    def fork_into_cgroup(directory: int) -> int:  # runs in our child, before its exec
        if not born:
            raise OSError(errno.ENOSYS, "no clone3 here")
        pid = real(directory)
        if pid == 0:
            os.write(write_end, b"copy")
        return pid

    monkeypatch.setattr(_containment, "fork_into_cgroup", fork_into_cgroup)
    monkeypatch.setenv("XSUPERVISE_CONTAINMENT", "cgroup")
    try:
        with xsupervise.Display() as display:
            os.close(write_end)
            assert os.read(read_end, 16) == (b"copy" if born else b"")
            server = psutil.Process(display.server_pid)
            assert server.ppid() == os.getpid() and server.name() == "Xvfb"
            assert os.getsid(server.pid) == os.getpgid(server.pid) == server.pid
            cgroup = Path(f"/proc/{server.pid}/cgroup").read_text().splitlines()
            assert any(line.startswith("0::/") and "/xsupervise-" in line for line in cgroup)
            assert _children_other_than_keepers() == [server.pid]  # its forker was reaped
    finally:
        os.close(read_end)
        with contextlib.suppress(OSError):
            os.close(write_end)
    assert wait_gone(server.pid, 1.0)


def _in_child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (it may close its fds, filter syscalls...)."""
    env = {**os.environ, "XSUPERVISE_CONTAINMENT": "cgroup"}
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60
    )


_CHILDREN = """
def children():
    import psutil
    return [(c.pid, c.status()) for c in psutil.Process().children()
            if "xsupervise-keeper" not in (c.cmdline() if c.status() != "zombie" else [])]
"""


@requires_cgroup
def test_a_cgroups_spawn_with_our_standard_fds_closed_tracks_the_program(tmp_path: Path):
    """With fds 0-2 closed, a pipe we make lands on them, and the child's 0-2 would
    overwrite it (found in review: the program ran untracked, its pid in its log)."""
    report = tmp_path / "report"
    result = _in_child(
        _CHILDREN
        + """
import os, subprocess, sys
for fd in (0, 1, 2):
    os.close(fd)
log = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
from xsupervise.launch.containment import choose
from xsupervise.launch.process import spawn
boundary = choose("closed-fds-test")
child = spawn(["sleep", "30"], stdin=subprocess.DEVNULL, stdout=log, stderr=log, boundary=boundary)
procs = open(os.path.join(boundary.cgroup, "cgroup.procs")).read().split()
facts = [child.has_exited(), procs == [str(child.pid)]]
boundary.kill()
child.reap_within(5)
boundary.remove()
with open(sys.argv[1], "w") as stream:
    stream.write(repr([facts, children()]))
""",
        str(report),
    )
    assert report.read_text() == "[[False, True], []]", result.stderr


@requires_cgroup
def test_an_exec_failure_with_sigchld_ignored_is_the_programs_and_leaves_no_cgroup():
    result = _in_child(
        """
import os, signal
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
from xsupervise.launch.containment import choose
from xsupervise.launch.process import spawn
boundary = choose("sigchld-test")
try:
    spawn(["/nonexistent/xsupervise-test-server"], boundary=boundary)
except FileNotFoundError:
    print("not found", os.path.exists(boundary.cgroup))
"""
    )
    assert result.stdout.strip() == "not found False", result.stderr


@requires_cgroup
def test_a_seccomp_filter_that_kills_clone3_falls_back_and_later_spawns_move_in():
    """A sandbox that kills a process calling clone3 (SIGSYS) rather than answering ENOSYS:
    the first spawn falls back, the next ones move into their cgroup (found in review)."""
    result = _in_child(
        _CHILDREN
        + """
import ctypes, os, subprocess
class Filter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]
class Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]
# clone3 (435) -> SECCOMP_RET_KILL_PROCESS; anything else -> allow
rules = (Filter * 4)(Filter(0x20, 0, 0, 0), Filter(0x15, 0, 1, 435),
                     Filter(0x06, 0, 0, 0x80000000), Filter(0x06, 0, 0, 0x7FFF0000))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(Program(4, rules)), 0, 0) == 0  # SECCOMP_MODE_FILTER
from xsupervise.launch.containment import choose
from xsupervise.launch.process import spawn
kinds = []
for attempt in range(2):
    child = spawn(["sleep", "30"], stdin=subprocess.DEVNULL, boundary=choose(f"seccomp-{attempt}"))
    boundary = child.boundary
    kinds.append(boundary.kind)
    if boundary.cgroup:
        procs = open(os.path.join(boundary.cgroup, "cgroup.procs")).read().split()
        kinds.append(procs == [str(child.pid)])
        boundary.kill()
    else:
        child.signal(9)
    child.reap_within(5)
    boundary.remove()
print(kinds, children())
"""
    )
    assert result.stdout.strip() == "['group', 'cgroup', True] []", result.stderr


requires_userns = pytest.mark.skipif(
    _containment._DIRECT is None
    or subprocess.run(["unshare", "--user", "--pid", "true"], capture_output=True).returncode,
    reason="no user namespaces here",
)


def _user_boundary() -> _containment.Boundary:
    """What an unprivileged user gets where user namespaces are allowed (forced as root)."""
    return _containment.Boundary("pidns", None, _containment._DIRECT, direct=True, user=True)


@requires_userns
@pytest.mark.parametrize("refusal", ["clone3", "maps", "forker-killed"])
def test_a_refused_user_namespace_falls_back_and_later_spawns_do_not_try(refusal, monkeypatch):
    """Where user namespaces are refused (the clone, or writing the copy's uid map), that
    spawn runs in the `unshare` chain (root's works here) and nothing of the attempt is left;
    later choices skip it."""
    import errno

    from xsupervise.launch.process import spawn

    def refused(*_args: object) -> int:
        if refusal == "forker-killed":  # between the clone and the maps (found in review)
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.EPERM, "refused")

    name = "fork_into_new_namespaces" if refusal == "clone3" else "_write_proc"
    monkeypatch.setattr(_containment, name, refused)
    monkeypatch.setattr(_containment, "REFUSED", set())
    child = spawn(
        ["sleep", "30"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        boundary=_user_boundary(),
    )
    try:
        chain = _containment._namespace_prefix() is not None
        assert child.boundary is not None and not child.boundary.direct
        assert child.boundary.kind == ("pidns" if chain else "group")
        assert "user namespace" in _containment.REFUSED
        assert _children_other_than_keepers() == [child.pid]  # no copy, no zombie
    finally:
        child.signal(signal.SIGKILL)
        child.reap_within(5)


@requires_userns
@pytest.mark.parametrize("chain", [True, False], ids=["then-unshare", "then-group"])
def test_a_display_whose_user_namespace_is_refused_starts_all_the_same(chain, monkeypatch):
    """The first start where user namespaces turn out to be refused (an AppArmor rule, a
    container's seccomp) is spawned for an init's descriptors: it runs in the `unshare`
    chain where that works, else in the group with the same descriptors, and answers."""
    import errno

    import xsupervise

    def refused(*_args: object) -> int:
        raise OSError(errno.EPERM, "refused")

    monkeypatch.setattr(_containment, "fork_into_new_namespaces", refused)
    monkeypatch.setattr(_containment, "_can_unshare_directly", lambda: False)  # unprivileged
    monkeypatch.setattr(_containment, "_may_make_user_namespaces", lambda: True)
    monkeypatch.setattr(_containment, "REFUSED", set())
    if not chain:
        monkeypatch.setitem(_containment._probed, "pidns", None)  # unshare refused too
    with xsupervise.Display() as display:
        boundary = display._server.child.boundary
        assert boundary is not None
        assert (boundary.kind, boundary.direct) == (("pidns", False) if chain else ("group", False))
        answered = subprocess.run(
            ["xdpyinfo"], env={**os.environ, **display.env}, capture_output=True, timeout=30
        )
        assert answered.returncode == 0
    assert "user namespace" in _containment.REFUSED


_CTRL_C_DURING_A_SPAWN = """
import os, signal, subprocess
from xsupervise.launch import containment
from xsupervise.launch.process import spawn
real = subprocess.Popen
class Popen(real):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
subprocess.Popen = Popen
signal.signal(signal.SIGINT, signal.default_int_handler)  # whether or not we got it ignored
signal.alarm(10)  # a hang fails the test, not the suite
boundary = BOUNDARY
try:
    spawn(["sleep", "1000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
          boundary=boundary)
except KeyboardInterrupt:
    print("interrupted", children(), bool(boundary.cgroup and os.path.exists(boundary.cgroup)))
"""


@pytest.mark.parametrize(
    "boundary",
    [
        pytest.param('containment.choose("ctrl-c-test")', marks=requires_cgroup, id="cgroup"),
        pytest.param(
            'containment.Boundary("pidns", None, containment._DIRECT, direct=True, user=True)',
            marks=requires_userns,
            id="user-namespace",
        ),
    ],
)
def test_a_ctrl_c_held_during_a_spawn_ends_the_program_and_its_boundary(boundary: str):
    """A ^C that arrives while the program is spawned is held (stop signals are blocked)
    and raised as the spawn returns: the program, and the copy that runs it, must end with
    its boundary, at once (found in review: the spawn waited for the copy forever)."""
    result = _in_child(_CHILDREN + _CTRL_C_DURING_A_SPAWN.replace("BOUNDARY", boundary))
    assert result.stdout.split("\n")[0] == "interrupted [] False", result.stderr


@requires_cgroup
def test_an_empty_cgroup_is_seen_empty_without_an_inotify_watch(monkeypatch):
    """Issue 22: a stop finds the cgroup empty (its server reaped) and sets no watch: closing
    an inotify instance waits for an SRCU grace period, about 4 ms, twice per stop."""
    from xsupervise.host.processes import run_blocking

    def no_watch(path: str) -> int:
        raise AssertionError(f"an inotify watch on {path}")

    monkeypatch.setenv("XSUPERVISE_CONTAINMENT", "cgroup")
    boundary = _containment.choose("empty-cgroup-test")
    try:
        monkeypatch.setattr(_cgroup, "_watch", no_watch)
        assert run_blocking(boundary.empty_steps(1.0)) is True
    finally:
        boundary.remove()


@requires_cgroup
def test_a_program_that_cannot_run_in_a_cgroup_leaves_no_process_and_no_cgroup(monkeypatch):
    from xsupervise.launch.containment import choose
    from xsupervise.launch.process import spawn

    monkeypatch.setenv("XSUPERVISE_CONTAINMENT", "cgroup")
    boundary = choose("exec-failure-test")
    assert boundary.cgroup is not None
    with pytest.raises(FileNotFoundError):
        spawn(["/nonexistent/xsupervise-test-server"], boundary=boundary)
    assert _children_other_than_keepers() == []  # the copy that failed its exec: reaped
    assert not os.path.exists(boundary.cgroup)


@pytest.mark.parametrize("kind", KINDS)
def test_a_stopped_server_inside_its_boundary_is_killed_after_the_grace(kind: str, monkeypatch):
    import time

    import xsupervise

    monkeypatch.setenv("XSUPERVISE_CONTAINMENT", kind)
    display = xsupervise.Display(kill_grace=0.3).start()
    pid = display.server_pid
    os.kill(pid, signal.SIGSTOP)  # SIGTERM stays pending: only a SIGKILL ends it
    started = time.monotonic()
    display.stop()
    assert time.monotonic() - started < 3.0
    assert wait_gone(pid, 0.0), f"X server pid {pid} outlived the stop ({kind})"


def test_start_in_the_fallback_stops_a_daemon_its_server_left(tmp_path: Path, runtime_dir: Path):
    """Without COMMAND too, the supervisor adopts what leaves the server's session (it is a
    child subreaper) and stops it with the session, saying whose it was."""
    report = tmp_path / "report"
    env = _env("group", report)
    args = ["start", "--timeout", "2", "--server", fake_server("double-fork")]
    with start_cli(*args, env=env) as process:
        _wait_report(report, "daemon")
        daemon = int(read_report(report)["daemon"])
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        stderr = process.stderr.read().decode()
    assert wait_gone(daemon, 1.0), stderr
    assert f"The X server left 1 process(es) running (pid {daemon} " in stderr, stderr
    assert "COMMAND" not in stderr, stderr


def test_a_session_id_taken_by_another_process_is_never_swept():
    """Once a dead server's session is empty, its number may lead a new session: the sweep
    goes ahead only while that pid is free or is still the server (pinned by start time)."""
    from xsupervise.host.processes import session_is_ours, start_ticks, sweep_session

    other = subprocess.Popen(["sleep", "300"], start_new_session=True)  # leads session `pid`
    try:
        ticks = start_ticks(other.pid)
        assert ticks is not None
        assert session_is_ours(other.pid, ticks)  # still "the server" that started then
        assert not session_is_ours(other.pid, ticks - 1)  # a later process on that number
        assert sweep_session(other.pid, ticks - 1, 0.1) == []
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


@pytest.mark.root("it runs its server as uid 65534")
@pytest.mark.parametrize("kind", KINDS)
def test_a_setuid_like_server_does_not_outlive_a_sigkilled_supervisor(
    kind: str, tmp_path: Path, runtime_dir: Path
):
    """A change of credentials (setuid exec, setpriv) clears PR_SET_PDEATHSIG: the server
    outlives its killed supervisor unless a namespace or cgroup holds it; in the fallback the
    next command stops it (pinned by pid and start time, whatever its uid)."""
    import shutil

    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    wrapper = tmp_path / "Xnobody"
    wrapper.write_text(
        '#!/bin/sh\nexec setpriv --reuid=65534 --regid=65534 --clear-groups Xvfb "$@"\n'
    )
    wrapper.chmod(0o755)
    env = _env(kind, tmp_path / "report")
    with start_cli("start", "--json", "--server", str(wrapper), env=env) as process:
        server = json.loads(read_line(process.stdout))["server_pid"]
        assert os.stat(f"/proc/{server}").st_uid == 65534
        process.kill()
        process.wait()
    if kind == "group":
        assert not wait_gone(server, 0.3)  # no PDEATHSIG any more: it lives on
        subprocess.run([*XSUPERVISE, "list"], env=env, check=True, capture_output=True)
    assert wait_gone(server, 1.0), f"X server pid {server} outlived its supervisor ({kind})"
    subprocess.run([*XSUPERVISE, "clean"], env=env, check=True, capture_output=True)


@pytest.mark.skipif("cgroup" not in KINDS, reason="no writable cgroup v2 here")
@pytest.mark.root("it makes a PID namespace with its own /proc")
def test_recovery_leaves_the_cgroup_of_a_supervisor_it_cannot_see(tmp_path: Path):
    """A cgroup shared with another PID namespace's supervisors: its owner's pid means
    nothing in ours, so "its supervisor is dead" cannot be told, and its processes (listed as
    0 in cgroup.procs) are not ours to kill. Seen when two test runs shared a cgroup."""
    base = _cgroup.cgroup_base()
    assert base is not None
    cgroup = os.path.join(base, f"{_cgroup.CGROUP_PREFIX}99999999.1-0badcafe-1")
    os.mkdir(cgroup)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
            procs.write(str(sleeper.pid))
        inside = ["unshare", "--pid", "--fork", "--mount-proc", *XSUPERVISE, "clean"]
        subprocess.run(inside, capture_output=True, timeout=60, check=True)
        assert sleeper.poll() is None, "another namespace's cgroup was killed"
        # Seen from where its processes are visible, the dead owner's cgroup is cleared.
        subprocess.run([*XSUPERVISE, "clean"], capture_output=True, timeout=60, check=True)
        assert sleeper.wait(timeout=10) == -signal.SIGKILL
    finally:
        sleeper.kill()
        sleeper.wait()
        _cgroup.remove_cgroup(cgroup)


@requires_own_pidns
def test_one_process_of_ours_stands_in_front_of_the_server(runtime_dir: Path):
    """Issue 22: the namespace's init is our own child, and the server's parent (one shell in
    front of it, where there were unshare, sh, setpriv and sh)."""
    import psutil

    env = {**os.environ, "XSUPERVISE_CONTAINMENT": "pidns"}
    with start_cli("start", "--json", env=env) as process:
        facts = json.loads(read_line(process.stdout))
        server = psutil.Process(facts["server_pid"])
        init = server.parent()
        assert init is not None and init.parent().pid == process.pid
        assert [child.pid for child in psutil.Process(process.pid).children()] == [init.pid]
        assert server.name() == "Xvfb"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    assert wait_gone(server.pid, 1.0) and wait_gone(init.pid, 1.0)


@pytest.mark.parametrize("kind", KINDS)
def test_no_descriptor_of_the_supervisor_reaches_the_server(kind: str, runtime_dir: Path):
    """As subprocess's close_fds: an inheritable fd the supervisor was given (a --displayfd,
    socket activation's fd 3) stays out of the server and its boundary's processes, or a
    reader of it would never see end of file while the server runs."""
    import psutil

    read_end, write_end = os.pipe()
    given = os.fstat(write_end).st_ino
    env = {**os.environ, "XSUPERVISE_CONTAINMENT": kind}
    try:
        with start_cli("start", "--json", env=env, pass_fds=(write_end,)) as process:
            facts = json.loads(read_line(process.stdout))
            holding = []
            theirs = psutil.Process(process.pid).children(recursive=True)
            for proc in theirs:
                inodes = {
                    os.stat(f"/proc/{proc.pid}/fd/{fd}").st_ino
                    for fd in os.listdir(f"/proc/{proc.pid}/fd")
                    if os.path.exists(f"/proc/{proc.pid}/fd/{fd}")
                }
                if given in inodes:
                    holding.append(proc.cmdline())
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        assert facts["server_pid"] in {proc.pid for proc in theirs}
        assert holding == []
    finally:
        os.close(read_end)
        os.close(write_end)


SUPERVISOR_KILLED_MID_STOP = """
import os, signal, sys, time
from xsupervise.launch.containment import choose
from xsupervise.launch.process import run_blocking, spawn
child = spawn(["sh", "-c", "trap '' TERM; exec sleep 1234"], boundary=choose("t-1"),
              stdout=2, stderr=2)
deadline = time.monotonic() + 10
def comm():
    try:
        with open(f"/proc/{child.find_program()}/comm") as stream:
            return stream.read().strip()
    except OSError:
        return ""
while comm() != "sleep":  # exec'd: SIGTERM is ignored from now on
    assert time.monotonic() < deadline
    time.sleep(0.01)
child.signal(signal.SIGTERM)  # a stop begins: the program ignores it, the grace runs
print(child.program_pid, flush=True)
time.sleep(60)  # SIGKILLed here, during the grace
"""


@requires_own_pidns
def test_a_supervisor_killed_during_a_stop_takes_its_namespace_along():
    """The review's case: a stop's SIGTERM reaches the whole namespace (the init's trap sends
    `kill -TERM -1`); the watcher must not die of it, or a supervisor SIGKILLed during the
    grace would leave a program that ignores SIGTERM running for good."""
    with _supervisor(SUPERVISOR_KILLED_MID_STOP) as (supervisor, program):
        init = _parent(program)
        assert not wait_gone(program, 0.2)  # it ignores SIGTERM
        supervisor.kill()
        # The whole namespace: its init ends a moment after the program (under a heavy load,
        # once, more than 2 s after it): wait for that as an event, not for a fixed time.
        assert wait_gone(program, 2.0) and wait_gone(init, 10.0)


def _parent(pid: int) -> int:
    """The parent of ``pid`` (of a namespace's program: its init)."""
    import psutil

    return psutil.Process(pid).ppid()


@contextlib.contextmanager
def _supervisor(script: str) -> Iterator[tuple[subprocess.Popen, int]]:
    """A supervisor of ours running ``script`` (in a PID namespace of its own), and the pid of
    the program it started, which the script prints; killed and reaped after."""
    env = {**os.environ, "XSUPERVISE_CONTAINMENT": "pidns"}
    process = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE)
    try:
        yield process, int(read_line(process.stdout, timeout=10))
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


SUPERVISOR_THAT_FORKS = """
import os, sys, time
from xsupervise.launch.containment import choose
from xsupervise.launch.process import spawn
child = spawn(["sleep", "1234"], boundary=choose("t-1"), stdout=2, stderr=2)
deadline = time.monotonic() + 10
while child.find_program() == child.pid:
    assert time.monotonic() < deadline
if os.fork() == 0:  # multiprocessing's "fork": no exec, our descriptors copied
    time.sleep(30)
    os._exit(0)
print(child.program_pid, flush=True)
time.sleep(60)
"""


@requires_own_pidns
def test_a_fork_of_the_supervisor_does_not_keep_its_namespace_alive():
    """The watcher's pipe is close-on-exec, but a fork() without exec copies our end of it:
    the copy is closed in the child at once, so our death alone still ends the namespace."""
    import psutil

    forked = []
    try:
        with _supervisor(SUPERVISOR_THAT_FORKS) as (supervisor, program):
            ours = psutil.Process(supervisor.pid)
            forked = [p for p in ours.children() if p.cmdline() == ours.cmdline()]
            assert len(forked) == 1
            init = _parent(program)
            supervisor.kill()
            assert wait_gone(program, 2.0) and wait_gone(init, 10.0)  # see the test above
    finally:
        for process in forked:
            process.kill()
            process.wait(5)


CLOSED_STANDARD_FDS = """
import os, sys
os.close(0)
os.close(1)  # the pipes, log and cookie files we open next get numbers 0 and 1
import xsupervise
with xsupervise.Display(":auto") as display:
    fds = {fd: os.readlink(f"/proc/{display.server_pid}/fd/{fd}") for fd in (0, 1, 2)}
    print("ready", display.display, fds, file=sys.stderr, flush=True)
"""


@pytest.mark.parametrize("kind", KINDS)
def test_a_supervisor_started_without_stdin_and_stdout_still_starts(kind: str, runtime_dir: Path):
    """As subprocess does: descriptors numbered 0-2 of ours are moved out of the way before
    they are given to the child as its 0-2, or one would overwrite another."""
    env = {**os.environ, "XSUPERVISE_CONTAINMENT": kind}
    result = subprocess.run(
        [sys.executable, "-c", CLOSED_STANDARD_FDS], env=env, capture_output=True, timeout=60
    )
    assert result.returncode == 0 and b"ready :" in result.stderr, result.stderr
    fds = ast.literal_eval(result.stderr.split(b"ready :")[1].split(b" ", 1)[1].decode())
    assert fds[0] == "/dev/null"
    assert fds[1] == fds[2] and fds[2].endswith(".log"), fds  # the server's log, both
