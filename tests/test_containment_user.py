"""Containment as an unprivileged user (uid 65534): the boundary is a PID namespace inside a
user namespace where the system allows one (else the process group), and nothing is left."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FAKE_X, read_line, read_report, requires_xvfb, wait_gone

pytestmark = requires_xvfb
NOBODY = 65534


@pytest.fixture
def nobody_home(as_other_user) -> Iterator[tuple[list[str], dict[str, str], Path]]:
    """(argv prefix to run Python as uid 65534, its environment, a directory it owns)."""
    prefix, env = as_other_user
    home = Path(tempfile.mkdtemp(prefix="xsupervise-nobody-"))
    try:
        os.chmod(home, 0o755)
        # Its interpreter: the one uid 65534 runs (ours may sit under /root).
        script = Path(FAKE_X).read_text().split("\n", 1)[1]
        (home / "fake_x.py").write_text(f"#!{prefix[-1]}\n{script}")
        os.chmod(home / "fake_x.py", 0o755)
        runtime = home / "run"
        runtime.mkdir(mode=0o700)
        os.chown(runtime, NOBODY, NOBODY)
        (home / "report").touch()
        os.chown(home / "report", NOBODY, NOBODY)
        env = {**env, "XDG_RUNTIME_DIR": str(runtime), "FAKE_X_REPORT": str(home / "report")}
        yield prefix, env, home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _start(prefix: list[str], env: dict[str, str], home: Path, mode: str) -> subprocess.Popen:
    server = f"{home / 'fake_x.py'} {mode}"
    return subprocess.Popen(
        [*prefix, "-m", "xsupervise", "-v", "start", "--json", "--server", server],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _contained_by(prefix: list[str], env: dict[str, str]) -> str:
    status = subprocess.run(
        [*prefix, "-m", "xsupervise", "status", "--json"], env=env, capture_output=True
    )
    return json.loads(status.stdout)[0]["containment"]


@contextlib.contextmanager
def _running(
    prefix: list[str], env: dict[str, str], home: Path, mode: str
) -> Iterator[subprocess.Popen]:
    """_start's supervisor, killed and reaped after if it is still running."""
    process = _start(prefix, env, home, mode)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


@pytest.mark.parametrize("ending", ["sigterm", "sigkill"])
def test_an_unprivileged_wrapper_server_leaves_nothing(nobody_home, ending: str):
    prefix, env, home = nobody_home
    with _running(prefix, env, home, "wrapper") as process:
        line = read_line(process.stdout)
        assert line, process.stderr.read().decode()
        facts = json.loads(line)
        kind = _contained_by(prefix, env)
        pids = [int(v) for k, v in read_report(home / "report").items() if k in ("pid", "server")]
        assert facts["server_pid"] in pids
        process.send_signal(signal.SIGTERM if ending == "sigterm" else signal.SIGKILL)
        process.wait(timeout=30)
    userns = subprocess.run(
        [*prefix[:-1], "unshare", "--user", "--map-root-user", "--pid", "true"],
        capture_output=True,
    )
    assert kind == ("pidns" if userns.returncode == 0 else "group"), userns.stderr
    if kind == "pidns" or ending == "sigterm":
        assert all(wait_gone(pid, 1.0) for pid in pids), f"left: {pids} ({kind})"
    else:  # the fallback: the next command of that user sweeps what is left
        subprocess.run([*prefix, "-m", "xsupervise", "list"], env=env, capture_output=True)
        assert all(wait_gone(pid, 1.0) for pid in pids)
    subprocess.run([*prefix, "-m", "xsupervise", "clean"], env=env, capture_output=True)
    assert list((Path(env["XDG_RUNTIME_DIR"]) / "xsupervise" / "sessions").iterdir()) == []


def _userns_allowed(prefix: list[str]) -> bool:
    return (
        subprocess.run(
            [*prefix[:-1], "unshare", "--user", "--map-root-user", "--pid", "true"],
            capture_output=True,
        ).returncode
        == 0
    )


# As test_containment.py's failed start: a 1 s deadline (the fake forks its daemon within
# milliseconds) and a short grace; the test is that nothing is left, not their lengths.
FAIL_FAST = ["--timeout", "1", "--kill-grace", "0.3"]


@pytest.mark.parametrize("shape", ["background", "double-fork"])
def test_an_unprivileged_failed_start_leaves_nothing(nobody_home, shape: str):
    """A server that leaves a setsid daemon behind and never becomes ready (background), or
    whose daemon serves instead of it (double-fork): run fails, and nothing is left."""
    prefix, env, home = nobody_home
    server = f"{home / 'fake_x.py'} {shape}"
    done = subprocess.run(
        [*prefix, "-m", "xsupervise", "run", *FAIL_FAST, "--server", server, "--", "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0, done.stderr
    facts = read_report(home / "report")
    pids = [int(facts[key]) for key in ("pid", "first", "daemon") if key in facts]
    assert len(pids) == 3, facts
    assert all(wait_gone(pid, 1.0) for pid in pids), done.stderr
    if _userns_allowed(prefix):  # the namespace took the daemon: nothing to report
        assert "left 1 process(es)" not in done.stderr, done.stderr


def test_an_unprivileged_server_has_one_process_of_ours_in_front(nobody_home):
    """Issue 22: unprivileged, our child is the init of the server's PID and user namespaces
    (pid 1 there; the server is pid 2), as root's: where the `unshare --user` chain put two
    shells. It maps only our own uid, as root there."""
    import psutil

    prefix, env, home = nobody_home
    if not _userns_allowed(prefix):
        pytest.skip("user namespaces are refused here")
    with _running(prefix, env, home, "wrapper") as process:
        line = read_line(process.stdout)
        assert line, process.stderr.read().decode()
        server = psutil.Process(json.loads(line)["server_pid"])
        ours = [child for child in psutil.Process(process.pid).children() if child.is_running()]
        init = [child for child in ours if child.name() == "sh"]
        assert len(init) == 1 and server.ppid() == init[0].pid  # the wrapper's shell
        status = Path(f"/proc/{init[0].pid}/status").read_text()
        assert status.split("NSpid:")[1].split()[:2] == [str(init[0].pid), "1"]
        assert Path(f"/proc/{init[0].pid}/uid_map").read_text().split() == ["0", "65534", "1"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    assert wait_gone(server.pid, 1.0) and wait_gone(init[0].pid, 1.0)
