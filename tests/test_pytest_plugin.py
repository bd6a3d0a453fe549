"""The pytest plugin, driving a sample project's pytest in a subprocess (real Xvfb).

The inner pytest inherits this test's private XDG_RUNTIME_DIR, so conftest's leak check
also proves that its displays left no process and no session file behind.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import X11_UNIX, read_line, requires_xvfb, wait_gone

pytestmark = requires_xvfb
needs_xsetroot = pytest.mark.skipif(not shutil.which("xsetroot"), reason="no xsetroot")

RECORD = """
import json, os, pathlib

def record(name, **facts):
    facts.update(display=os.environ.get("DISPLAY"), xauthority=os.environ.get("XAUTHORITY"),
                 worker=os.environ.get("PYTEST_XDIST_WORKER"))
    pathlib.Path("out", name + ".json").write_text(json.dumps(facts))
"""


def sample(tmp_path: Path, tests: str, ini: str = "") -> Path:
    project = tmp_path / "project"
    (project / "out").mkdir(parents=True)
    (project / "pytest.ini").write_text(f"[pytest]\n{ini}\n")
    (project / "record.py").write_text(RECORD)
    (project / "test_sample.py").write_text("from record import record\n" + textwrap.dedent(tests))
    return project


def inner_env(**extra: str) -> dict[str, str]:
    ours = ("DISPLAY", "XAUTHORITY", "PYTEST_")  # the inner run must not see the outer's
    env = {name: value for name, value in os.environ.items() if not name.startswith(ours)}
    return {**env, "PYTHONPATH": ".", **extra}


# Loading every installed plugin (jupyter's, anyio, xdist...) costs each inner pytest about
# half a second: most runs load only ours, by name. The entry point itself is what the runs
# with ``autoload=True`` use (the xdist one and the one checking the plugin stays inactive).
ONLY_OURS = ("-p", "xsupervise.pytest_plugin")


def run_pytest(
    project: Path, *args: str, env: dict[str, str] | None = None, autoload: bool = False
) -> subprocess.CompletedProcess[str]:
    env = env or inner_env()
    if not autoload:
        env = {**env, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
        + ([] if autoload else list(ONLY_OURS)),
        check=False,
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def records(project: Path) -> dict[str, dict[str, object]]:
    return {path.stem: json.loads(path.read_text()) for path in (project / "out").iterdir()}


def test_run_sees_a_working_display_and_gets_its_environment_back(tmp_path: Path) -> None:
    project = sample(
        tmp_path,
        """
        import atexit, os, subprocess
        atexit.register(lambda: record("after", after=True))  # once pytest.main returned

        def test_display():
            subprocess.run(["xdpyinfo"], check=True, capture_output=True)
            record("during")
    """,
    )
    done = run_pytest(project, "--xdisplay", env=inner_env(XAUTHORITY="/theirs"))
    assert done.returncode == 0, done.stdout + done.stderr
    seen = records(project)
    assert re.fullmatch(r":\d+", seen["during"]["display"])
    assert Path(seen["during"]["xauthority"]).parent.name == "sessions"
    assert (seen["after"]["display"], seen["after"]["xauthority"]) == (None, "/theirs")


@needs_xsetroot
def test_a_failing_test_leaves_a_red_png_named_in_its_report(tmp_path: Path) -> None:
    image_module = pytest.importorskip("PIL.Image")
    project = sample(
        tmp_path,
        """
        import subprocess

        import pytest

        def test_paints_red_then_fails():
            subprocess.run(["xsetroot", "-solid", "red"], check=True)
            assert False, "the window was red"

        @pytest.fixture
        def broken():
            raise RuntimeError("a fixture that fails")

        def test_setup_error(broken):
            pass

        def test_passes():
            pass
    """,
    )
    done = run_pytest(
        project, "--xdisplay", "--xdisplay-screen", "800x600x24", "--xdisplay-screenshots", "shots"
    )
    assert done.returncode == 1, done.stdout + done.stderr
    shot = project / "shots" / "test_sample.py_test_paints_red_then_fails.png"
    assert str(shot) in done.stdout
    assert "xdisplay screenshot call" in done.stdout
    # A setup error gets its shot too; a passing test none.
    assert "xdisplay screenshot setup" in done.stdout
    assert sorted(path.name for path in (project / "shots").iterdir()) == [
        "test_sample.py_test_paints_red_then_fails.png",
        "test_sample.py_test_setup_error.png",
    ]
    with image_module.open(shot) as image:
        assert image.size == (800, 600)
        assert image.convert("RGB").getcolors(1) == [(800 * 600, (255, 0, 0))]


SERVERS = [
    pytest.param(name, marks=pytest.mark.skipif(not shutil.which(binary), reason=f"no {binary}"))
    for name, binary in (("xvfb", "Xvfb"), ("xvnc", "Xvnc"))
]


@needs_xsetroot
@pytest.mark.parametrize("server", SERVERS)
def test_the_failure_png_is_taken_on_each_server_and_named_in_junit_xml(
    tmp_path: Path, server: str, short_runtime: Path
) -> None:
    """Issue 19 (1, 2): the failure PNG under --xdisplay-server xvnc (mss's default backend
    refuses its visuals), and its path in --junitxml, which takes the properties of the
    teardown's report only."""
    import xml.etree.ElementTree as ElementTree

    image_module = pytest.importorskip("PIL.Image")
    project = sample(
        tmp_path,
        """
        import subprocess

        def test_paints_red_then_fails():
            subprocess.run(["xsetroot", "-solid", "red"], check=True)
            assert False, "the window was red"

        def test_passes():
            pass
    """,
    )
    done = run_pytest(
        project,
        "--xdisplay",
        "--xdisplay-server",
        server,
        "--xdisplay-screen",
        "640x480x24",
        "--xdisplay-screenshots",
        "shots",
        "--junitxml",
        "junit.xml",
    )
    assert done.returncode == 1, done.stdout + done.stderr
    shot = project / "shots" / "test_sample.py_test_paints_red_then_fails.png"
    cases = {
        case.get("name"): {prop.get("name"): prop.get("value") for prop in case.iter("property")}
        for case in ElementTree.parse(project / "junit.xml").iter("testcase")
    }
    assert cases == {
        "test_paints_red_then_fails": {"xdisplay_screenshot": str(shot)},
        "test_passes": {},
    }, done.stdout
    with image_module.open(shot) as image:
        assert image.size == (640, 480)
        assert image.convert("RGB").getcolors(1) == [(640 * 480, (255, 0, 0))]


@pytest.mark.skipif(
    not (shutil.which("openbox") and shutil.which("xdotool") and shutil.which("xmessage")),
    reason="needs openbox, xdotool and xmessage",
)
def test_a_window_becomes_active_only_with_a_window_manager(tmp_path: Path) -> None:
    """Issue 19 (8): what docs/pytest.md says of waiting for an active window (pytest-qt's
    waitActive): it fails on a bare display, and works with XSUPERVISE_WM=openbox."""
    project = sample(
        tmp_path,
        """
        import subprocess

        def test_window_becomes_active(xdisplay):
            window = subprocess.Popen(["xmessage", "-name", "activeme", "hi"])
            try:
                found = subprocess.run(
                    ["xdotool", "search", "--sync", "--onlyvisible", "--classname", "activeme"],
                    capture_output=True, text=True, timeout=10, check=True,
                )
                wid = found.stdout.split()[0]
                # Waits (on X events) until the window manager has made it the active window.
                subprocess.run(
                    ["xdotool", "windowactivate", "--sync", wid], timeout=10, check=True
                )
            finally:
                window.kill()
                window.wait()
    """,
    )
    bare = run_pytest(project, "--xdisplay")
    assert bare.returncode == 1, bare.stdout + bare.stderr
    assert "_NET_ACTIVE_WINDOW" in bare.stdout  # xdotool: the (absent) WM does not support it
    managed = run_pytest(project, "--xdisplay", env=inner_env(XSUPERVISE_WM="openbox"))
    assert managed.returncode == 0, managed.stdout + managed.stderr


def test_each_xdist_worker_gets_its_own_display(tmp_path: Path) -> None:
    pytest.importorskip("xdist")
    project = sample(
        tmp_path,
        """
        import pytest

        @pytest.mark.parametrize("n", range(6))
        def test_one(n, xdisplay):
            record(f"t{n}", pid=xdisplay.server_pid)
    """,
    )
    (project / "conftest.py").write_text(
        textwrap.dedent("""
        import os
        from record import record

        def pytest_sessionfinish(session):
            if not hasattr(session.config, "workerinput"):
                record("controller")
    """)
    )
    done = run_pytest(project, "--xdisplay", "-n", "2", autoload=True)
    assert done.returncode == 0, done.stdout + done.stderr
    seen = records(project)
    assert seen.pop("controller")["display"] is None  # the controller started none
    by_worker = {(facts["worker"], facts["display"], facts["pid"]) for facts in seen.values()}
    assert len(seen) == 6
    assert len(by_worker) == 2, by_worker  # one display per worker, two workers
    assert len({display for _, display, _ in by_worker}) == 2
    for _, _, pid in by_worker:
        assert wait_gone(pid, 5)


def test_sigkilled_pytest_leaves_no_server_and_no_file(tmp_path: Path, isolated: Path) -> None:
    project = sample(
        tmp_path,
        """
        import json, time

        def test_hangs(xdisplay):
            print("PIDS", json.dumps([xdisplay.server_pid, xdisplay.display]), flush=True)
            time.sleep(60)
    """,
    )
    inner = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-s", "--xdisplay", *ONLY_OURS],
        cwd=project,
        env=inner_env(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        bufsize=0,
    )
    try:
        line = ""
        while "PIDS" not in line:
            line = read_line(inner.stdout, timeout=15)
            assert line, "the inner pytest ended before its test ran"
        server_pid, display = json.loads(line.split("PIDS", 1)[1])
        supervisor = next(
            child
            for child in __import__("psutil").Process(inner.pid).children()
            if "xsupervise" in " ".join(child.cmdline())
        )
        files = os.listdir(isolated / "xsupervise" / "sessions")
        assert files, "the display's session files should exist while it runs"
        inner.send_signal(signal.SIGKILL)
        inner.wait()
        assert wait_gone(supervisor.pid, 8), "xsupervise outlived the SIGKILLed pytest"
        assert wait_gone(server_pid, 1), "the X server outlived the SIGKILLed pytest"
        assert os.listdir(isolated / "xsupervise" / "sessions") == []
        assert not os.path.exists(f"{X11_UNIX}/X{display[1:]}")
    finally:
        inner.kill()
        inner.wait()
        inner.stdout.close()


def test_sigkilled_xdist_controller_takes_its_workers_displays_within_a_second(
    tmp_path: Path,
) -> None:
    """Issue 19 (3): the xdist workers (children of the controller) outlived a SIGKILLed
    controller until their running test ended, and kept their displays up."""
    pytest.importorskip("xdist")
    import psutil

    fifo = tmp_path / "ready"
    os.mkfifo(fifo)
    project = sample(
        tmp_path,
        f"""
        import json, os, time

        import pytest

        @pytest.mark.parametrize("n", range(2))
        def test_blocks(n, xdisplay):
            line = json.dumps([os.getpid(), xdisplay.server_pid]) + "\\n"
            with open({str(fifo)!r}, "w") as ready:
                ready.write(line)
            time.sleep(120)
    """,
    )
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    # Only xdist and ours, by name (the entry point is test_each_xdist_worker_gets_its_own_
    # display's): the controller and its two workers skip loading every installed plugin.
    controller = subprocess.Popen(
        [
            *(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "xdist"),
            *(*ONLY_OURS, "--xdisplay", "-n", "2"),
        ],
        cwd=project,
        env=inner_env(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen: dict[int, int] = {}  # worker pid -> its X server's pid
    supervisors: list[int] = []
    try:
        with os.fdopen(reader, "rb", buffering=0) as lines:
            buffered = b""
            while len(seen) < 2:
                assert select.select([lines], [], [], 60)[0], "the tests never started"
                buffered += lines.read() or b""
                *done, buffered = buffered.split(b"\n")
                seen.update(tuple(json.loads(line)) for line in done)  # type: ignore[misc]
        servers = {pid: os.pidfd_open(pid) for pid in seen.values()}
        supervisors = [  # each display's `xsupervise start`: it removes the files afterwards
            child.pid
            for worker in seen
            for child in psutil.Process(worker).children()
            if "xsupervise" in " ".join(child.cmdline())
        ]
        assert len(supervisors) == 2, supervisors
        controller.kill()
        controller.wait()
        deadline = time.monotonic() + 1.0
        while servers and (left := deadline - time.monotonic()) > 0:
            for fd in select.select(list(servers.values()), [], [], left)[0]:
                servers = {pid: pidfd for pid, pidfd in servers.items() if pidfd != fd}
                os.close(fd)
        for fd in servers.values():
            os.close(fd)
        assert not servers, f"X servers {sorted(servers)} outlived the controller by 1 s"
    finally:
        controller.kill()
        controller.wait()
        for worker in seen:  # on failure: what the kernel did not stop (ours to stop)
            try:
                psutil.Process(worker).kill()
            except psutil.NoSuchProcess:
                pass
            assert wait_gone(worker, 10)
        for pid in [*seen.values(), *supervisors]:
            assert wait_gone(pid, 10)


def test_no_xdisplay_leaves_display_untouched(tmp_path: Path, isolated: Path) -> None:
    project = sample(
        tmp_path,
        """
        import os, pytest

        @pytest.mark.xdisplay(fresh=True)
        def test_desktop(xdisplay):
            record("desktop", fixture=xdisplay.display)
    """,
        ini="xdisplay = true",
    )
    done = run_pytest(project, "--no-xdisplay", env=inner_env(DISPLAY=":4242"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert records(project)["desktop"] == {
        "display": ":4242",
        "fixture": ":4242",
        "xauthority": None,
        "worker": None,
    }
    assert not (isolated / "xsupervise" / "sessions").exists() or not os.listdir(
        isolated / "xsupervise" / "sessions"
    )


def test_plugin_is_inactive_unless_asked(tmp_path: Path, isolated: Path) -> None:
    project = sample(
        tmp_path,
        """
        def test_plain():
            record("plain")
    """,
    )
    done = run_pytest(project, env=inner_env(DISPLAY=":4242"), autoload=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert records(project)["plain"]["display"] == ":4242"
    assert not (isolated / "xsupervise").exists()  # not even a runtime directory


def test_marker_gives_a_fresh_display_for_one_test(tmp_path: Path) -> None:
    project = sample(
        tmp_path,
        """
        import os, pytest

        def test_1_run(xdisplay):
            record("run", fixture=xdisplay.display)

        @pytest.mark.xdisplay(screen="640x480x24", fresh=True)
        def test_2_fresh(xdisplay, tmp_path):
            size = xdisplay.screenshot(tmp_path / "shot.png")
            record("fresh", fixture=xdisplay.display, size=size)

        def test_3_run_again(xdisplay):
            record("again", fixture=xdisplay.display)
    """,
    )
    done = run_pytest(project)  # without --xdisplay: the fixture starts the run's display
    assert done.returncode == 0, done.stdout + done.stderr
    seen = records(project)
    assert seen["run"]["display"] == seen["run"]["fixture"] == seen["again"]["display"]
    assert seen["fresh"]["display"] == seen["fresh"]["fixture"] != seen["run"]["display"]
    assert seen["fresh"]["xauthority"] != seen["run"]["xauthority"]
    assert seen["fresh"]["size"] == [640, 480]


def test_no_x_server_is_a_usage_error_with_the_flag_and_a_skip_without(tmp_path: Path) -> None:
    project = sample(
        tmp_path,
        """
        def test_needs_display(xdisplay):
            record("ran")
    """,
    )
    done = run_pytest(project, "--xdisplay", "--xdisplay-server", "/nonexistent/Xvfb")
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert re.search(r"ERROR: --xdisplay: .*'/nonexistent/Xvfb' does not exist", done.stderr)
    done = run_pytest(project, "-rs", env=inner_env(XSUPERVISE_SERVER="/nonexistent/Xvfb"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"SKIPPED .*no X display: .*'/nonexistent/Xvfb' does not exist", done.stdout)
    assert records(project) == {}


@requires_xvfb
def test_a_pool_lease_serves_the_run_and_dies_with_it(tmp_path: Path) -> None:
    from test_pool import PoolDaemon, gone_within

    daemon = PoolDaemon(tmp_path, {"ci": {"size": 1, "screen": "640x480x24"}})
    try:
        spare = daemon.until(lambda pool: pool["ready"] == 1, name="ci")
        project = sample(
            tmp_path,
            """
            import os, subprocess

            def test_display(xdisplay):
                shown = subprocess.run(["xdpyinfo"], check=True, capture_output=True, text=True)
                record("during", pid=xdisplay.server_pid, dimensions="640x480" in shown.stdout)
        """,
        )
        env = inner_env(XSUPERVISE_SOCKET=daemon.socket)
        done = run_pytest(project, "--xdisplay-pool", "ci", env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        during = records(project)["during"]
        assert during["dimensions"] is True and during["display"]
        assert gone_within(int(during["pid"]), 5)  # the lease ended with the run: destroyed
        daemon.until(lambda pool: pool["ready"] == 1 and pool["leased"] == 0, name="ci")
        assert spare["size"] == 1
        daemon.stop()
        # No daemon: an explicit --xdisplay-pool is never replaced by a private server.
        refused = run_pytest(project, "--xdisplay-pool", "ci", env=env)
        assert refused.returncode == pytest.ExitCode.USAGE_ERROR, refused.stdout + refused.stderr
        assert (
            "ERROR: --xdisplay-pool: no lease from pool 'ci': no xsupervise serve answers on"
            in refused.stderr
        )
    finally:
        daemon.stop()
