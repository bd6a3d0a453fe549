"""Recording (issue 23): real Xvfb, real ffmpeg. What a video shows (colours in order, size,
duration), what a SIGKILLed supervisor leaves (a playable file, no ffmpeg, nothing else),
ffmpeg missing (exit 5), a recorder that dies (one line; the display goes on)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import XSUPERVISE, read_line, requires_xvfb, start_cli, wait_gone

pytestmark = [
    requires_xvfb,
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed"),
    pytest.mark.skipif(shutil.which("xsetroot") is None, reason="xsetroot is not installed"),
]
SCREEN = "320x240x24"
COLOURS = {"red": (255, 0, 0), "lime": (0, 255, 0), "blue": (0, 0, 255)}


def probe(path: Path) -> dict[str, object]:
    shown = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "format=duration:stream=width,height",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    data = json.loads(shown.stdout)
    stream = data["streams"][0]
    return {
        "duration": float(data["format"]["duration"]),
        "size": (stream["width"], stream["height"]),
    }


def colours_over_time(path: Path, rate: int = 4) -> list[str]:
    """The name of the colour nearest to each frame, ``rate`` frames a second of the video."""
    pixels = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(path),
            "-vf",
            f"fps={rate},scale=1:1",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    names = []
    for i in range(0, len(pixels) - 2, 3):
        rgb = pixels[i : i + 3]
        names.append(
            min(
                COLOURS,
                key=lambda n: sum((a - b) ** 2 for a, b in zip(rgb, COLOURS[n], strict=True)),
            )
        )
    return names


def in_order(names: list[str]) -> list[str]:
    """The colours as they follow each other (repeats folded)."""
    return [name for i, name in enumerate(names) if i == 0 or names[i - 1] != name]


def test_a_recording_shows_the_colours_in_order_at_the_displays_size(tmp_path: Path):
    from xsupervise import Display

    video = tmp_path / "colours.mp4"
    with Display(screen=SCREEN, record=video) as display:
        ready = time.monotonic()
        env = {**os.environ, **display.env}
        for colour in COLOURS:
            subprocess.run(["xsetroot", "-solid", colour], env=env, check=True, timeout=10)
            time.sleep(0.6)  # each colour shows for 0.6 s of the video (its frames: 4-5 at 8/s)
        wall = time.monotonic() - ready
    facts = probe(video)
    assert facts["size"] == (320, 240)
    assert abs(float(facts["duration"]) - wall) <= 0.1 * wall  # honest: ffprobe reads the wall time
    seen = colours_over_time(video, rate=8)
    assert in_order(seen)[-3:] == ["red", "lime", "blue"], seen
    assert seen.count("red") >= 3 and seen.count("lime") >= 3  # 0.6 s each, at 8 a second


def test_display_record_keeps_one_block(tmp_path: Path):
    from xsupervise import Display

    with Display(screen=SCREEN) as display:
        env = {**os.environ, **display.env}
        subprocess.run(["xsetroot", "-solid", "blue"], env=env, check=True, timeout=10)
        with display.record(tmp_path / "block.mp4") as path:
            subprocess.run(["xsetroot", "-solid", "red"], env=env, check=True, timeout=10)
            time.sleep(0.5)
        assert Path(path).stat().st_size > 0
    assert in_order(colours_over_time(tmp_path / "block.mp4", 10))[-1] == "red"


@contextlib.contextmanager
def _supervising(*args: str) -> Iterator[subprocess.Popen]:
    """start_cli's supervisor, SIGKILLed if the block fails: Popen's own exit would wait for
    it forever (seen: a failed assertion hung the suite)."""
    with start_cli(*args) as process:
        try:
            yield process
        except BaseException:
            process.kill()
            raise


def _ffmpeg_of(supervisor: int) -> psutil.Process:
    """The recorder's ffmpeg: the recorder starts it a moment after the display is ready
    (under load, after the supervisor has said so)."""
    deadline = time.monotonic() + 10
    while True:
        found = [
            p for p in psutil.Process(supervisor).children(recursive=True) if p.name() == "ffmpeg"
        ]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.02)


def test_a_sigkilled_supervisor_leaves_a_playable_file_and_no_ffmpeg(
    tmp_path: Path, runtime_dir: Path
):
    videos = tmp_path / "videos"
    videos.mkdir()
    video = videos / "killed.mp4"
    args = ["start", "--json", "--screen", SCREEN, "--record", str(video)]
    with _supervising(*args) as process:
        facts = json.loads(read_line(process.stdout))
        env = {**os.environ, "DISPLAY": facts["display"], "XAUTHORITY": facts["xauthority"]}
        ffmpeg = [_ffmpeg_of(process.pid)]
        # A second each: 3 s of recording, of which a SIGKILL may cost only the end (at most
        # its last half second: launch/ffmpeg.py; 1.5 s allowed, as when this was 5 s).
        for colour in ("red", "lime", "blue"):
            subprocess.run(["xsetroot", "-solid", colour], env=env, check=True, timeout=10)
            time.sleep(1.0)
        process.kill()
        process.wait()
        killed_at = time.monotonic()
        assert wait_gone(ffmpeg[0].pid, 1.0), "ffmpeg outlived its supervisor"
        assert time.monotonic() - killed_at <= 1.0
    assert float(probe(video)["duration"]) >= 3.0 - 1.5
    assert sorted(path.name for path in videos.iterdir()) == ["killed.mp4"]
    subprocess.run([*XSUPERVISE, "clean"], check=True, timeout=60, capture_output=True)
    assert list((runtime_dir / "sessions").iterdir()) == []


def test_ffmpeg_missing_is_exit_5_with_the_install_hint(tmp_path: Path, runtime_dir: Path):
    bare = tmp_path / "bin"  # Xvfb and friends, but no ffmpeg
    bare.mkdir()
    for program in ("Xvfb", "xkbcomp", "unshare", "setpriv", "sh", "true"):
        found = shutil.which(program)
        if found:
            (bare / program).symlink_to(found)
    done = subprocess.run(
        [*XSUPERVISE, "run", "--record", str(tmp_path / "x.mp4"), "--", "true"],
        env={**os.environ, "PATH": str(bare)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 5, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "apt-get install ffmpeg" in lines[0], lines
    assert not (tmp_path / "x.mp4").exists()


def test_a_recorder_that_crashes_is_one_line_and_the_display_goes_on(tmp_path: Path):
    video = tmp_path / "crash.mp4"
    with _supervising("start", "--json", "--screen", SCREEN, "--record", str(video)) as process:
        facts = json.loads(read_line(process.stdout))
        env = {**os.environ, "DISPLAY": facts["display"], "XAUTHORITY": facts["xauthority"]}
        ffmpeg = [_ffmpeg_of(process.pid)]
        ffmpeg[0].send_signal(signal.SIGKILL)  # ours, by its pid: the recorder's encoder dies
        line = read_line(process.stderr, 30)
        assert "recorder of" in line and "ffmpeg" in line and "goes on" in line, line
        subprocess.run(["xsetroot", "-solid", "red"], env=env, check=True, timeout=10)  # still up
        assert not [
            p for p in psutil.Process(process.pid).children(recursive=True) if p.name() == "ffmpeg"
        ]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert process.stderr.read().decode().strip() == ""  # one line, not restarted
