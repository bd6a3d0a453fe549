"""``--xdisplay-video`` (issue 23): a suite with one failing test keeps one video, named in
the report and in the JUnit XML; passing tests leave no file. And ``xsupervise record``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from tests.conftest import XSUPERVISE, read_line, requires_xvfb, start_cli

pytestmark = [
    requires_xvfb,
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed"),
]

SUITE = """
import subprocess

def test_passes(xdisplay):
    subprocess.run(["xsetroot", "-solid", "blue"], check=True)

def test_paints_red_then_fails(xdisplay):
    subprocess.run(["xsetroot", "-solid", "red"], check=True)
    assert False, "the window was red"

def test_passes_too(xdisplay):
    pass
"""


def test_only_the_failing_tests_video_is_kept_and_named(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(textwrap.dedent(SUITE))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISPLAY", "XAUTHORITY"))}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "xsupervise.pytest_plugin",
            "--xdisplay",
            "--xdisplay-screen",
            "320x240x24",
            "--xdisplay-video=failed",
            "--junitxml=junit.xml",
            "-rA",
        ],
        cwd=tmp_path,
        env={**env, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    video = tmp_path / ".xdisplay" / "test_sample.py_test_paints_red_then_fails.mp4"
    assert sorted(
        p.name
        for p in (tmp_path / ".xdisplay").iterdir()
        if p.suffix == ".mp4" or p.name.startswith(".")
    ) == [video.name]
    assert str(video) in done.stdout
    properties = {
        (case.get("name"), prop.get("name")): prop.get("value")
        for case in ElementTree.parse(tmp_path / "junit.xml").iter("testcase")
        for prop in case.iter("property")
    }
    # The failing test's video, beside its screenshot (issue 19); the passing test has none.
    videos = {key: value for key, value in properties.items() if key[1] == "xdisplay_video"}
    assert videos == {("test_paints_red_then_fails", "xdisplay_video"): str(video)}
    assert {name for name, _ in properties} == {"test_paints_red_then_fails"}
    shown = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "stream=width,height",
            "-of",
            "json",
            str(video),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert json.loads(shown.stdout)["streams"][0]["width"] == 320


def test_record_command_records_a_session_for_a_duration(tmp_path: Path) -> None:
    video = tmp_path / "cli.mp4"
    with start_cli("start", "--json", "--screen", "320x240x24") as session:
        facts = json.loads(read_line(session.stdout))
        done = subprocess.run(
            [*XSUPERVISE, "record", facts["display"], "-o", str(video), "--duration", "1.0"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert f"{video}:" in done.stdout
        session.terminate()
        assert session.wait(timeout=30) == 0
    shown = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", str(video)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert abs(float(json.loads(shown.stdout)["format"]["duration"]) - 1.0) < 0.3


def test_a_lessee_names_the_file_the_daemon_records_its_display_to(tmp_path: Path) -> None:
    from tests.test_pool import PoolDaemon, ready
    from xsupervise import Display

    daemon = PoolDaemon(tmp_path, {"default": {"size": 1, "screen": "320x240x24"}})
    try:
        daemon.until(ready(1))
        video = tmp_path / "leased.mp4"
        with Display(pool="default", socket=daemon.socket, record=video) as display:
            env = {**os.environ, **display.env}
            subprocess.run(["xsetroot", "-solid", "red"], env=env, check=True, timeout=10)
            assert video.exists()  # recording from the lease's reply on
        # The daemon destroys a released display in the background (the file is finished
        # first): once it has stopped, everything is done.
        assert daemon.stop() == 0, daemon.log.read_text()
        shown = subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "stream=width", "-of", "json", str(video)],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        assert json.loads(shown.stdout)["streams"][0]["width"] == 320
    finally:
        assert daemon.stop() == 0, daemon.log.read_text()


def wait_written(path: Path, timeout: float = 30.0) -> None:
    """Until ``path`` exists and holds something: inotify on its directory (no polling)."""
    import select

    from xsupervise.host.processes import IN_CREATE, IN_MODIFY, inotify_watch

    watch = inotify_watch(str(path.parent), IN_CREATE | IN_MODIFY)
    try:
        deadline = time.monotonic() + timeout
        while not (path.exists() and path.stat().st_size > 0):
            left = deadline - time.monotonic()
            assert left > 0 and select.select([watch], [], [], left)[0], f"{path} stays empty"
            os.read(watch, 4096)
    finally:
        os.close(watch)


def test_a_restarted_server_records_to_a_file_of_its_own(tmp_path: Path) -> None:
    import psutil

    video = tmp_path / "session.mp4"
    args = ["start", "--json", "--screen", "320x240x24", "--record", str(video)]
    with start_cli(*args, "--backoff-initial", "0.1") as session:
        try:
            facts = json.loads(read_line(session.stdout))
            wait_written(video)  # the first server's recording has begun
            psutil.Process(facts["server_pid"]).kill()  # ours: the session restarts it
            lines = [read_line(session.stderr, 30)]  # died, backing off, restarted
            while "restarted" not in lines[-1] and len(lines) < 5:
                lines.append(read_line(session.stderr, 30))
            assert "restarted" in lines[-1], lines
        finally:
            session.terminate()
            assert session.wait(timeout=30) == 0
    assert video.stat().st_size > 0
    assert (tmp_path / "session.restart-1.mp4").stat().st_size > 0


def test_a_lease_whose_recording_cannot_start_is_refused_in_one_line(tmp_path: Path) -> None:
    # The file cannot be made (the path is a directory): the lessee is told, and nothing is
    # leased, rather than a lease that silently records nothing (review of issue 23).
    from tests.test_pool import PoolDaemon, ready
    from xsupervise import Display, XSuperviseError

    daemon = PoolDaemon(tmp_path, {"default": {"size": 1, "screen": "320x240x24"}})
    try:
        daemon.until(ready(1))
        taken = tmp_path / "a-directory"
        taken.mkdir()
        with pytest.raises(XSuperviseError) as refused:
            Display(pool="default", socket=daemon.socket, record=taken).start()
        assert str(taken) in str(refused.value) and "\n" not in str(refused.value)
        daemon.until(lambda pool: pool["leased"] == 0)
    finally:
        assert daemon.stop() == 0, daemon.log.read_text()
