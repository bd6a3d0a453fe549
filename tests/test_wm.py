"""The wm setting (issue 13): a window manager on the display, ready when it manages it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from conftest import XSUPERVISE, read_line, requires_xvfb, start_cli, wait_gone

needs_openbox = pytest.mark.skipif(
    shutil.which("openbox") is None or shutil.which("xdotool") is None,
    reason="openbox and xdotool are not installed (apt-get install openbox xdotool)",
)


def _focus_goes_to_a_new_window(env: dict[str, str]) -> None:
    """A window mapped right after the display is ready gets the focus (the WM gives it)."""
    window = subprocess.Popen(["xmessage", "focus me"], env=env)
    try:
        found = subprocess.run(
            ["xdotool", "search", "--sync", "--onlyvisible", "--class", "xmessage"],
            env=env,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        wanted = int(found.stdout.split()[0])
        deadline = time.monotonic() + 5
        while True:  # the WM focuses on its own schedule: no event reaches us for it
            focus = subprocess.run(
                ["xdotool", "getwindowfocus"], env=env, capture_output=True, text=True, timeout=10
            )
            if focus.returncode == 0 and int(focus.stdout) == wanted:
                return
            assert time.monotonic() < deadline, f"focus stayed on {focus.stdout!r}, not {wanted}"
            time.sleep(0.05)
    finally:
        window.terminate()
        window.wait(timeout=10)


def _window_manager_of(server_pid: int, supervisor_pid: int) -> psutil.Process:
    (wm,) = [p for p in psutil.Process(supervisor_pid).children() if p.name() == "openbox"]
    assert wm.pid != server_pid
    return wm


@requires_xvfb
@needs_openbox
def test_openbox_gives_focus_and_goes_with_the_display() -> None:
    import xsupervise

    with xsupervise.Display(":auto", wm="openbox") as display:
        env = {**os.environ, **display.env}
        _focus_goes_to_a_new_window(env)
        wm = _window_manager_of(display.server_pid, os.getpid())
    assert wait_gone(wm.pid, 5)


@requires_xvfb
@needs_openbox
def test_the_wm_is_restarted_with_its_display_and_stopped_with_it(runtime_dir: Path) -> None:
    with start_cli("start", "--json", "--wm", "openbox", "--backoff-initial", "0.1") as process:
        facts = json.loads(read_line(process.stdout))
        first = _window_manager_of(facts["server_pid"], process.pid)
        os.kill(facts["server_pid"], 9)
        assert wait_gone(first.pid, 10)  # stopped with its display...
        deadline = time.monotonic() + 15
        while True:  # ...and a new one comes with the restarted server
            status = subprocess.run(
                [*XSUPERVISE, "status", "--json"], capture_output=True, text=True, check=True
            )
            (entry,) = json.loads(status.stdout)
            if entry["state"] == "ready" and entry["server_pid"] != facts["server_pid"]:
                break
            assert time.monotonic() < deadline, entry
            time.sleep(0.05)
        second = _window_manager_of(entry["server_pid"], process.pid)
        _focus_goes_to_a_new_window(
            {**os.environ, "DISPLAY": facts["display"], "XAUTHORITY": facts["xauthority"]}
        )
        process.terminate()
        assert process.wait(timeout=30) == 0
        assert wait_gone(second.pid, 5)


@requires_xvfb
def test_a_missing_or_failing_wm_is_one_line_and_leaves_nothing() -> None:
    missing = subprocess.run(
        [*XSUPERVISE, "run", "--wm", "no-such-wm", "--", "true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 5
    assert missing.stderr.count("\n") == 1 and "window manager 'no-such-wm'" in missing.stderr
    failing = subprocess.run(
        [*XSUPERVISE, "run", "--wm", "sh -c 'echo cannot manage >&2; exit 3'", "--", "true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failing.returncode == 3, failing.stderr
    line = failing.stderr
    assert line.count("\n") == 1 and "window manager sh" in line
    assert "ended before it managed the display (exited with status 3)" in line
    assert "cannot manage" in line


@requires_xvfb
@needs_openbox
def test_a_wm_that_dies_takes_its_display_into_a_restart(runtime_dir: Path) -> None:
    with start_cli("start", "--json", "--wm", "openbox", "--backoff-initial", "0.1") as process:
        facts = json.loads(read_line(process.stdout))
        first = _window_manager_of(facts["server_pid"], process.pid)
        first.kill()
        assert wait_gone(facts["server_pid"], 10)  # the display went with it: no zombie wm
        assert not psutil.pid_exists(first.pid)
        deadline = time.monotonic() + 15
        while True:
            status = subprocess.run(
                [*XSUPERVISE, "status", "--json"], capture_output=True, text=True, check=True
            )
            (entry,) = json.loads(status.stdout)
            if entry["state"] == "ready" and entry["server_pid"] != facts["server_pid"]:
                break
            assert time.monotonic() < deadline, entry
            time.sleep(0.05)
        assert "window manager openbox" in (entry["last_failure"] or "")
        assert _window_manager_of(entry["server_pid"], process.pid).pid != first.pid
        process.terminate()
        assert process.wait(timeout=30) == 0
