"""The lines a user sees when a start fails or a session leaves processes behind (issue 11,
items 4 and 5): the server's own reason, who serves a display instead, whose leftovers."""

from __future__ import annotations

import asyncio
import getpass
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

import xsupervise
from conftest import (
    FAKE_X,
    TESTS,
    XSUPERVISE,
    free_display_number,
    read_report,
    requires_xvfb,
    wait_gone,
)
from xsupervise.launch import containment as _containment
from xsupervise.launch.server import server_reason

SHAPES = str(TESTS / "fake_x_shapes.py")
RUN_IT_YOURSELF = re.escape(
    "Only an X server that runs in the foreground can be supervised: run the X server binary "
    "itself (Xvfb, Xtigervnc..., not a launcher such as vncserver), or a profile (--server "
    "xvfb, xvnc...)."
)
ELAPSED = r"\(\d+\.\d\d s after start\)"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*XSUPERVISE, *args], capture_output=True, text=True, timeout=30, env=env)


def test_the_fatal_error_and_the_ee_lines_are_quoted_not_the_last_lines(tmp_path: Path):
    report = tmp_path / "report"
    result = run_cli(
        "run",
        "--server",
        f"{SHAPES} fatal",
        "--",
        "true",
        env={**os.environ, "FAKE_X_REPORT": str(report), "XSUPERVISE_CONTAINMENT": "group"},
    )
    pid = read_report(report)["pid"]
    assert result.returncode == 3
    assert re.fullmatch(
        rf"xsupervise: fake_x_shapes\.py \(pid {pid}\) exited with status 1 before it wrote a "
        rf"display number {ELAPSED}; its process group was stopped and reaped\. Check the "
        r"--server and --screen settings\. fake_x_shapes\.py said: Fatal server error: fake: "
        r"no screens found \| fake: open /dev/dri/card0: No such file or directory\n",
        result.stderr,
    ), result.stderr


def test_ee_lines_alone_are_quoted():
    with pytest.raises(xsupervise.ServerExited) as failure:
        xsupervise.Display(server=f"{SHAPES} ee").start()
    assert failure.value.server_reason == "fake: could not connect to wayland server"
    assert failure.value.stderr_tail == "(EE) fake: could not connect to wayland server | bye"
    assert str(failure.value).endswith(
        "fake_x_shapes.py said: fake: could not connect to wayland server"
    )


def test_without_a_reason_the_last_lines_are_quoted():
    with pytest.raises(xsupervise.ServerExited) as failure:
        xsupervise.Display(server=f"{FAKE_X} exit").start()
    assert failure.value.server_reason == ""
    assert str(failure.value).endswith("Its last output: fake: cannot open virtual screen")


@requires_xvfb
def test_a_real_xvfb_with_a_bad_option_is_quoted():
    result = run_cli("run", "--server", "Xvfb -screen 0 bogus", "--", "true")
    assert result.returncode == 3
    assert re.fullmatch(
        rf"xsupervise: Xvfb \(pid \d+\) exited with status 1 before it wrote a display number "
        rf"{ELAPSED}; its process group was stopped and reaped\. Check the --server and "
        r"--screen settings\. Xvfb said: Fatal server error: Invalid screen configuration "
        r"bogus for -screen 0\n",
        result.stderr,
    ), result.stderr


def test_xorg_log_time_stamps_and_glued_markers_are_dropped():
    text = (
        "[    10.1] (EE) open /dev/dri/card0: No such file or directory\n(EE) \n"
        "Fatal server error:\n(EE) no screens found(EE) \n(EE) \n"
        '(EE) Please also check the log file at "/var/log/Xorg.0.log".\n(EE) \n'
        "(EE) Server terminated with error (1). Closing log file.\n"
    )
    assert server_reason(text) == (
        "Fatal server error: no screens found | open /dev/dri/card0: No such file or directory"
    )


def start_once(server: str, asynchronous: bool) -> None:
    """Start a display and stop it, through Display or (on an event loop) AsyncDisplay."""
    if not asynchronous:
        with xsupervise.Display(server=server, timeout=5):
            return

    async def main() -> None:
        async with xsupervise.AsyncDisplay(server=server, timeout=5):
            return

    asyncio.run(main())


@pytest.mark.parametrize("asynchronous", [False, True], ids=["Display", "AsyncDisplay"])
def test_a_server_that_daemonizes_is_named_with_its_daemon(
    tmp_path: Path, monkeypatch, asynchronous: bool
):
    report = tmp_path / "report"
    monkeypatch.setenv("FAKE_X_REPORT", str(report))
    # The fallback boundary, where the daemon outlives its server (see test_containment.py
    # for the others, where it does not).
    monkeypatch.setenv("XSUPERVISE_CONTAINMENT", "group")
    number = free_display_number(start=700)
    try:
        with pytest.raises(xsupervise.NotServing) as failure:
            start_once(f"{SHAPES} daemon={number}", asynchronous)
        facts = read_report(report)
        daemon = int(facts["daemon"])
        line = str(failure.value)
        assert re.fullmatch(
            rf"fake_x_shapes\.py \(pid {facts['pid']}\) wrote display number {number} but put "
            r"the X server that serves it in the background, out of its process group: "
            rf"pid {daemon} \(user {getpass.getuser()}: \S*python3? {re.escape(SHAPES)} "
            r"-displayfd \S+ -nolisten tcp [^)]*\) "
            rf"{ELAPSED}; its process group was stopped and reaped\. {RUN_IT_YOURSELF} Its last "
            r"output: \(nothing\)",
            line,
        ), line
    finally:
        facts = read_report(report)
        if "daemon" in facts:  # outside the server's group: ours to stop here
            os.kill(int(facts["daemon"]), signal.SIGTERM)
            assert wait_gone(int(facts["daemon"]), 5)


@requires_xvfb
@pytest.mark.parametrize("kind", ["group", "pidns"])
def test_leftovers_are_told_apart_the_servers_and_commands(tmp_path: Path, kind: str):
    """In the fallback the server's leftover reaches the supervisor and is named as the
    server's; in a PID namespace it never does (the namespace ends with the server)."""
    if kind == "pidns" and _containment._namespace_prefix() is None:
        pytest.skip("no PID namespace can be made here")
    report = tmp_path / "report"
    pids = tmp_path / "pids"
    result = run_cli(
        "run",
        "--server",
        f"{SHAPES} background",
        "--",
        "sh",
        "-c",
        f"sleep 100 & echo $! > {pids}; setsid sleep 101 & echo $! >> {pids}; exit 0",
        env={**os.environ, "FAKE_X_REPORT": str(report), "XSUPERVISE_CONTAINMENT": kind},
    )
    assert result.returncode == 0, result.stderr
    facts = read_report(report)
    server, helper = int(facts["pid"]), int(facts["helper"])
    background, detached = map(int, pids.read_text().split())
    for pid in (helper, background, detached):
        assert not psutil.pid_exists(pid)
    servers = [
        f"xsupervise: X server pid {server} left 1 process(es) running (pid {helper} sleep); "
        "stopped them."
    ]
    assert result.stderr.splitlines() == [
        *(servers if kind == "group" else []),
        f"xsupervise: COMMAND left 2 process(es) running (pid {background} sleep, pid "
        f"{detached} sleep); stopped them.",
    ], result.stderr


@requires_xvfb
@pytest.mark.root("it runs as uid 65534")
def test_a_holder_we_may_not_look_at_is_said_to_be_one(as_other_user):
    import shutil
    import tempfile

    prefix, staged = as_other_user
    runtime = tempfile.mkdtemp(prefix="xsupervise-other-")  # outside pytest's 0700 tree
    os.chown(runtime, 65534, 65534)
    try:
        with xsupervise.Display() as root_display:
            taken = root_display.display
            result = subprocess.run(
                [*prefix, "-m", "xsupervise", "start", taken],
                env={**staged, "XDG_RUNTIME_DIR": runtime, "HOME": runtime},
                capture_output=True,
                text=True,
                timeout=30,
            )
    finally:
        shutil.rmtree(runtime)
    assert result.returncode == 3, result.stderr
    assert (
        f"Display {taken} is already served by a process we may not look at "
        "(another user's; as root, `ss -xlp` names it); ask for another number or :auto. "
        "Xvfb said: Fatal server error: " in result.stderr
    ), result.stderr


@requires_xvfb
def test_a_helper_the_server_double_forked_is_the_servers_under_start(tmp_path: Path):
    # Orphaned before the display was ready, so before COMMAND ran: only the server can have
    # left it. `start -- COMMAND` reports as `run` does. (In the fallback boundary: in a PID
    # namespace the helper never reaches the supervisor.)
    report = tmp_path / "report"
    result = run_cli(
        "start",
        ":auto",
        "--server",
        f"{SHAPES} doublefork",
        "--",
        "true",
        env={**os.environ, "FAKE_X_REPORT": str(report), "XSUPERVISE_CONTAINMENT": "group"},
    )
    assert result.returncode == 0, result.stderr
    facts = read_report(report)
    server, helper = int(facts["pid"]), int(facts["helper"])
    assert not psutil.pid_exists(helper)
    assert result.stderr.splitlines() == [
        f"xsupervise: X server pid {server} left 1 process(es) running (pid {helper} sleep); "
        "stopped them."
    ], result.stderr


def test_a_leftover_nothing_places_is_of_unknown_origin_not_commands(tmp_path: Path):
    from xsupervise.cli.foreground import Lineage

    lineage = Lineage()
    lineage.add_root(os.getpid() + 10**6, "X server pid 1")  # a root none of these is under
    lineage.cookie_entry = os.fsencode(f"XAUTHORITY={tmp_path}/cookie")
    env = {key: value for key, value in os.environ.items() if key != "XAUTHORITY"}
    # Each in a session of its own (setsid), as a daemon of either side would be.
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True, env=env)
    commands = subprocess.Popen(
        ["sleep", "301"],
        start_new_session=True,
        env={**env, "XAUTHORITY": f"{tmp_path}/cookie"},
    )
    try:
        ours = subprocess.Popen(["sleep", "302"])  # in our session: COMMAND's
        try:
            lineage.note([stranger.pid, commands.pid, ours.pid])
        finally:
            ours.kill()
            ours.wait()
    finally:
        for process in (stranger, commands):
            process.kill()
            process.wait()
    first, second = sorted((commands.pid, ours.pid))  # listed by pid
    assert sorted(lineage.report()) == [
        f"COMMAND left 2 process(es) running (pid {first} sleep, pid {second} sleep); "
        "stopped them.",
        "Something of unknown origin (neither the X server's nor COMMAND's) left 1 process(es) "
        f"running (pid {stranger.pid} sleep); stopped them.",
    ]


def _kinds() -> list[str]:
    from xsupervise.launch import containment as _cgroup

    kinds = ["group"]
    if _containment._namespace_prefix() is not None:
        kinds.append("pidns")
    if _cgroup.cgroup_base() is not None:
        kinds.append("cgroup")
    return kinds


@requires_xvfb
@pytest.mark.parametrize("kind", _kinds())
@pytest.mark.parametrize("launcher", ["exit", "stay"])
def test_a_launcher_that_backgrounds_its_x_server_is_named_with_it(
    tmp_path: Path, monkeypatch, kind: str, launcher: str
):
    """Issue 19 (6): a launcher (vncserver's shape) starts a real Xvfb in the background,
    relays its number, then exits or stays. The line said `nothing answers`, or told to stop
    "another process": it names the X server it put in the background, and what to run."""
    report = tmp_path / "report"
    monkeypatch.setenv("FAKE_X_REPORT", str(report))
    monkeypatch.setenv("XSUPERVISE_CONTAINMENT", kind)
    try:
        with pytest.raises(xsupervise.NotServing) as failure:
            start_once(f"{SHAPES} launcher={launcher}", asynchronous=False)
        facts = read_report(report)
        line = str(failure.value)
        named = (
            rf"fake_x_shapes\.py \(pid {facts['pid']}\) wrote display number (\d+) but put the "
            r"X server that serves it in the background, out of its process group: "
            rf"pid {facts['server']} \(user {getpass.getuser()}: Xvfb -displayfd \d+ -nolisten "
            rf"tcp -auth [^)]+\) {ELAPSED}; its process group was stopped and reaped\. "
            rf"{RUN_IT_YOURSELF} Its last output: .*"
        )
        # In a PID namespace the launcher's exit ends the namespace, its X server with it:
        # by the time we look it may be gone, and the line says what is left to check.
        gone = (
            rf"fake_x_shapes\.py \(pid {facts['pid']}\) wrote display number (\d+) but nothing "
            r"answers on /tmp/\.X11-unix/X\1 \([^)]+\); it exited with status 0 "
            rf"{ELAPSED}; its process group was stopped and reaped\. An X server runs for as "
            r"long as it serves its display; a launcher that starts one in the background and "
            r"exits cannot be supervised: run the X server binary itself \(Xvfb, Xtigervnc\.\.\."
            r"\), or a profile \(--server xvfb, xvnc\.\.\.\)\. Its last output: .*"
        )
        patterns = [named, gone] if (kind, launcher) == ("pidns", "exit") else [named]
        assert any(re.fullmatch(pattern, line) for pattern in patterns), line
    finally:
        facts = read_report(report)
        if "server" in facts:  # gone with the failed start, also where it left our group
            gone = wait_gone(int(facts["server"]), 5)
            if not gone:  # by its pid, then fail
                os.kill(int(facts["server"]), signal.SIGKILL)
                wait_gone(int(facts["server"]), 10)
            assert gone, "the X server the launcher put in the background outlived the start"


@pytest.mark.skipif(
    not (shutil.which("vncserver") and shutil.which("Xtigervnc")),
    reason="TigerVNC's vncserver is not installed (tigervnc-standalone-server)",
)
def test_vncserver_is_named_with_the_xtigervnc_it_backgrounds(tmp_path: Path):
    """Issue 19 (6), with the real launcher: TigerVNC's vncserver (a Perl script) forks
    Xtigervnc into a session of its own and passes it our -displayfd."""
    env = {**os.environ, "HOME": str(tmp_path)}  # vncserver writes ~/.vnc
    done = run_cli("run", "--server", "vncserver -SecurityTypes None", "--", "true", env=env)
    if "Could not acquire fully qualified host name" in done.stderr:
        pytest.skip("vncserver refuses to run: this machine's host name does not resolve")
    found = re.search(
        r"in the background, out of its process group: pid (\d+) \(user ", done.stderr
    )
    try:
        assert (done.returncode, done.stderr.count("\n")) == (3, 1), done.stderr
        assert found, done.stderr
        assert re.search(r"pid \d+ \(user \S+: \S*Xtigervnc :\d+ ", done.stderr), done.stderr
        assert "Xtigervnc..., not a launcher such as vncserver), or a profile" in done.stderr
    finally:
        if found:  # in the fallback boundary it outlives the session: ours to stop
            try:
                os.kill(int(found[1]), signal.SIGTERM)
            except ProcessLookupError:
                pass
            assert wait_gone(int(found[1]), 10)
