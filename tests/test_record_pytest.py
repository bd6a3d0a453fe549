"""``--xdisplay-video`` (issue 23): a suite with one failing test keeps one video, named in
the report and in the JUnit XML; passing tests leave no file. And ``xsupervise record``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
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
    assert properties == {("test_paints_red_then_fails", "xdisplay_video"): str(video)}
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
            [*XSUPERVISE, "record", facts["display"], "-o", str(video), "--duration", "1.5"],
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
    assert abs(float(json.loads(shown.stdout)["format"]["duration"]) - 1.5) < 0.3
