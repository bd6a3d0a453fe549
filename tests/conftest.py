"""Shared fixtures. Every test runs with a private runtime directory and ends with a leak check:
no process we started (or that was orphaned to us), no zombie, no session file, no new
/tmp/.X11-unix entry may remain. A leak fails the test; the leftover is removed by pid/path.
"""

from __future__ import annotations

import compileall
import ctypes
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

TESTS = Path(__file__).parent
FAKE_X = str(TESTS / "fake_x.py")
X11_UNIX = "/tmp/.X11-unix"
XSUPERVISE = [sys.executable, "-m", "xsupervise"]

# Orphans (e.g. an X server whose supervisor a test SIGKILLed) are re-parented to us rather
# than to PID 1, so the leak check sees them and they can be reaped.
_PR_SET_CHILD_SUBREAPER = 36
ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

# The tests start hundreds of Python processes of ours (the CLI, supervisors, daemons). Where
# PYTHONDONTWRITEBYTECODE is set (CI images often set it) each would compile the package
# from source again, ~30 ms apiece: compile it once, here (Python still reads .pyc files).
compileall.compile_dir(str(TESTS.parent / "xsupervise"), quiet=1)

requires_xvfb = pytest.mark.skipif(shutil.which("Xvfb") is None, reason="Xvfb is not installed")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # XSUPERVISE_TEST_SHUFFLE=SEED runs the tests in a random order of that seed (.ci/stress):
    # a test that passes only after another, or a race that one order hides, shows up.
    seed = os.environ.get("XSUPERVISE_TEST_SHUFFLE")
    if seed:
        import random

        random.Random(seed).shuffle(items)
    # @pytest.mark.root("why"): the test chowns to other users, acts as another uid or relies
    # on root's own rules; as anyone else it would fail for that reason alone.
    if os.geteuid() == 0:
        return
    for item in items:
        marker = item.get_closest_marker("root")
        if marker is not None:
            why = marker.args[0] if marker.args else "it acts as or for another user"
            item.add_marker(pytest.mark.skip(reason=f"needs root: {why}"))


def fake_server(mode: str) -> str:
    """The --server value for a fake X server in ``mode`` (see fake_x.py)."""
    return f"{FAKE_X} {mode}"


def _x11_entries() -> set[str]:
    try:
        return set(os.listdir(X11_UNIX))
    except FileNotFoundError:
        return set()


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in list(os.environ):
        if name.startswith("XSUPERVISE_"):
            monkeypatch.delenv(name)
    x11_before = _x11_entries()
    fds_before = set(os.listdir("/proc/self/fd"))
    yield runtime
    leaks = []
    for child in psutil.Process().children(recursive=True):
        try:
            leaks.append(f"process {child.pid} {child.status()} {child.cmdline()}")
            child.kill()
        except psutil.NoSuchProcess:
            continue
    for child in psutil.Process().children():
        try:
            os.waitpid(child.pid, 0)
        except ChildProcessError:
            pass
    sessions = runtime / "xsupervise" / "sessions"
    if sessions.exists():
        leaks += [f"file {path}" for path in sessions.iterdir()]
    from xsupervise.host.sockets import bound_abstract_displays

    live = {f"X{number}" for number in bound_abstract_displays()}
    for name in _x11_entries() - x11_before - live:  # a live one would show as a process above
        leaks.append(f"file {X11_UNIX}/{name}")
        os.unlink(f"{X11_UNIX}/{name}")
    leaked_fds = set(os.listdir("/proc/self/fd")) - fds_before
    leaks += [
        f"fd {fd} -> {os.readlink(f'/proc/self/fd/{fd}')}"
        for fd in leaked_fds
        if os.path.exists(f"/proc/self/fd/{fd}")
    ]
    assert not leaks, "leaked: " + "; ".join(leaks) + _logs_of(tmp_path)


def _logs_of(tmp_path: Path) -> str:
    """The end of each log a test kept in its tmp_path (a daemon's stderr): what a leak's
    report needs to be understood from CI's output alone."""
    tails = []
    for log in sorted(tmp_path.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-40:]
        tails.append(f"\n--- the end of {log}:\n" + "\n".join(lines))
    return "".join(tails)


@pytest.fixture
def runtime_dir(isolated: Path) -> Path:
    return isolated / "xsupervise"


def read_line(stream, timeout: float = 15.0) -> str:
    """One line from a child's unbuffered pipe, waiting on the pipe itself (no sleeps)."""
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        raise AssertionError(f"no line within {timeout} s")
    return stream.readline().decode()


def read_report(path: Path) -> dict[str, str]:
    facts: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, _, value = line.partition("=")
            facts[key] = value
    return facts


def start_cli(*args: str, **popen) -> subprocess.Popen:
    # Unbuffered, so that read_line's select() sees every line that is not consumed yet.
    return subprocess.Popen(
        [*XSUPERVISE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, **popen
    )


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait for a process to end (reaping it if it is our child); True if it did."""
    deadline = time.monotonic() + timeout
    try:
        process = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
                return True
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
            return True
        except psutil.TimeoutExpired:
            return False
        except psutil.NoSuchProcess:
            return True
    return False


def free_display_number(start: int = 40) -> int:
    """A display number with no socket file, lock file or abstract socket."""
    from xsupervise.host.sockets import bound_abstract_displays

    bound = bound_abstract_displays()
    for number in range(start, start + 500):
        if (
            number not in bound
            and not os.path.exists(f"{X11_UNIX}/X{number}")
            and not os.path.exists(f"/tmp/.X{number}-lock")
        ):
            return number
    raise AssertionError("no free display number")


# -- running as another uid ----------------------------------------------------------------------
# A checkout (and its .venv) under /root is 0700 on Debian: uid 65534 cannot read it. So what
# that uid runs is staged where it can read it: a copy of the package and of its imports in a
# 0755 directory, run by the base interpreter (not the venv's) with PYTHONPATH. If the
# interpreter itself is out of its reach (e.g. a pyenv under /root), the test skips, saying so.
_STAGED_PACKAGES = ("xsupervise", "psutil", "xdg", "systemd")


@pytest.fixture(scope="session")
def as_other_user() -> Iterator[tuple[list[str], dict[str, str]]]:
    """(argv prefix to run Python as uid 65534, environment) for a staged copy of xsupervise."""
    import importlib.util
    import tempfile

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to act as uid 65534")
    stage = tempfile.mkdtemp(prefix="xsupervise-stage-")
    try:
        os.chmod(stage, 0o755)
        for name in _STAGED_PACKAGES:
            spec = importlib.util.find_spec(name)
            if spec is None or not spec.submodule_search_locations:
                continue
            source = next(iter(spec.submodule_search_locations))
            shutil.copytree(
                source,
                os.path.join(stage, name),
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        for root, dirs, files in os.walk(stage):
            for entry in dirs + files:
                os.chmod(os.path.join(root, entry), 0o755 if entry in dirs else 0o644)
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": stage}
        # Ours may sit under /root (pyenv): then the system's, if it is the same version.
        ours = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
        same = f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"
        for python in dict.fromkeys([ours, same]):
            prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python]
            try:
                probe = subprocess.run(
                    # (and it must see its own interpreter, which it runs servers with)
                    [
                        *prefix,
                        "-c",
                        "import xsupervise, psutil, xdg, os, sys; "
                        "assert os.access(sys.executable, os.X_OK)",
                    ],
                    capture_output=True,
                    text=True,
                    env=env,
                )
            except FileNotFoundError:
                continue
            if probe.returncode == 0:
                break
        if probe.returncode != 0:
            why = (probe.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(
                f"uid 65534 cannot run {python} with a staged copy of xsupervise ({why}); the "
                "interpreter must be one other users can run (e.g. not a pyenv under /root)"
            )
        yield prefix, env
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def ask_as(uid: int, path: str, request: dict | None = None) -> dict:
    """Send one control request as ``uid`` (credentials are fixed at connect time); the reply."""
    import json
    import socket

    line = (json.dumps(request or {"op": "ping"}) + "\n").encode()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(path)
            try:
                sock.sendall(line)
            except BrokenPipeError:
                pass  # refused and closed before our line was read: the refusal is there
            os.write(write_fd, sock.makefile("rb").readline())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as reply:
        data = reply.read()
    os.waitpid(pid, 0)
    return dict(json.loads(data))


@pytest.fixture
def short_runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A runtime directory with a short path: pytest's are too long for the unix sockets of
    xvnc and xwayland (108 bytes). conftest checks its own; this one is checked here."""
    path = Path(tempfile.mkdtemp(prefix="xs-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
    try:
        yield path / "xsupervise"
        sessions = path / "xsupervise" / "sessions"
        assert not sessions.exists() or list(sessions.iterdir()) == []
    finally:
        shutil.rmtree(path)
