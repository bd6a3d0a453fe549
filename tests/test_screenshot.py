"""media.screenshot.capture: a PNG of a display or of one window, over a cookie-authenticated
connection; one clear line for each way it can fail."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import free_display_number, requires_xvfb
from xsupervise.media.screenshot import ScreenshotError, capture

PIL = pytest.importorskip("PIL.Image")

pytestmark = requires_xvfb
needs_xsetroot = pytest.mark.skipif(
    shutil.which("xsetroot") is None, reason="xsetroot is not installed (x11-xserver-utils)"
)


@pytest.fixture
def display() -> Iterator[object]:
    import xsupervise

    with xsupervise.Display(":auto", screen="800x600x24") as shown:
        yield shown


def _colours(path: Path) -> set[tuple[int, ...]]:
    with PIL.open(path) as image:
        return {colour for _, colour in image.convert("RGB").getcolors(1 << 24)}


@needs_xsetroot
def test_red_root_window_is_red_and_screen_sized(display, tmp_path: Path) -> None:
    subprocess.run(["xsetroot", "-solid", "red"], env={**os.environ, **display.env}, check=True)
    shot = tmp_path / "root.png"
    assert capture(display.display, display.xauthority, shot) == (800, 600)
    with PIL.open(shot) as image:
        assert (image.format, image.size) == ("PNG", (800, 600))
    assert _colours(shot) == {(255, 0, 0)}


def test_environment_is_left_as_it_was(
    display, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cookie reaches libxcb through XAUTHORITY: it must be put back after the connect.
    monkeypatch.setenv("XAUTHORITY", "/nonexistent/ours")
    capture(display.display, display.xauthority, tmp_path / "shot.png")
    assert os.environ["XAUTHORITY"] == "/nonexistent/ours"
    monkeypatch.delenv("XAUTHORITY")
    capture(display.display, display.xauthority, tmp_path / "shot.png")
    assert "XAUTHORITY" not in os.environ


@pytest.mark.skipif(
    not (shutil.which("xmessage") and shutil.which("xdotool")),
    reason="a window test needs xmessage and xdotool",
)
def test_one_window_is_captured_at_its_size(display, tmp_path: Path) -> None:
    env = {**os.environ, **display.env}
    window = subprocess.Popen(["xmessage", "-name", "shotme", "-geometry", "+10+20", "hi"], env=env)
    try:
        # --sync waits until the window exists (xdotool polls the server for it).
        found = subprocess.run(
            ["xdotool", "search", "--sync", "--onlyvisible", "--classname", "shotme"],
            env=env,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        wid = int(found.stdout.split()[0])
        facts = subprocess.run(
            ["xwininfo", "-id", str(wid)], env=env, capture_output=True, text=True, check=True
        ).stdout
        width = int(facts.split("Width:")[1].split()[0])
        height = int(facts.split("Height:")[1].split()[0])
        assert capture(display.display, display.xauthority, tmp_path / "w.png", wid) == (
            width,
            height,
        )
        assert (width, height) != (800, 600)
    finally:
        window.kill()
        window.wait()


def test_no_such_window_is_one_line(display, tmp_path: Path) -> None:
    with pytest.raises(ScreenshotError, match=r"^no window 0x1fffff on display :\d+$"):
        capture(display.display, display.xauthority, tmp_path / "w.png", window=0x1FFFFF)
    with pytest.raises(ScreenshotError, match="is not an X window id"):
        capture(display.display, display.xauthority, tmp_path / "w.png", window=-1)
    assert not (tmp_path / "w.png").exists()


def test_a_silent_display_is_named(tmp_path: Path) -> None:
    cookie = tmp_path / "cookie"
    cookie.write_bytes(b"")
    number = free_display_number()
    with pytest.raises(
        ScreenshotError, match=rf"^display :{number} is not answering: no X server listens"
    ):
        capture(f":{number}", str(cookie), tmp_path / "shot.png")


def test_a_refused_cookie_is_named(display, tmp_path: Path) -> None:
    from xsupervise.launch.x11 import xauthority_entry

    wrong = tmp_path / "wrong.xauth"
    wrong.write_bytes(xauthority_entry(os.urandom(16)))  # a cookie, not this display's
    with pytest.raises(
        ScreenshotError,
        match=rf"^display {display.display} refused our connection with the cookie in "
        rf"{wrong}: Invalid MIT-MAGIC-COOKIE-1 key",
    ):
        capture(display.display, str(wrong), tmp_path / "shot.png")
    garbage = tmp_path / "garbage.xauth"
    garbage.write_bytes(b"\x01\x00\x00\x00")
    with pytest.raises(ScreenshotError, match=f"the cookie file {garbage} is not an Xauthority"):
        capture(display.display, str(garbage), tmp_path / "shot.png")
    with pytest.raises(ScreenshotError, match="cannot read the cookie file /nonexistent"):
        capture(display.display, "/nonexistent/cookie", tmp_path / "shot.png")


def test_a_screen_mss_cannot_read_is_named_with_mss_s_own_words(tmp_path: Path) -> None:
    """Issue 19 (1): a display that accepts our cookie but whose image mss cannot take (here
    16 bits per pixel) is not said to refuse the cookie: the line gives mss's errors."""
    import xsupervise

    with xsupervise.Display(":auto", screen="320x200x16") as shallow:
        name = shallow.display
        with pytest.raises(ScreenshotError) as failure:  # and no socket left open (conftest)
            capture(shallow.display, shallow.xauthority, tmp_path / "shot.png")
    assert str(failure.value).startswith(
        f"display {name} accepts our cookie but mss could not capture it (mss's "
        "default backend: Only screens of color depth 24 or 32 are supported, not 16; mss's "
        "xlib backend: "
    ), failure.value
    assert "\n" not in str(failure.value)


def test_an_unwritable_path_is_named(display, tmp_path: Path) -> None:
    with pytest.raises(ScreenshotError, match=r"cannot write the screenshot to .*missing"):
        capture(display.display, display.xauthority, tmp_path / "missing" / "shot.png")


@needs_xsetroot
def test_the_cli_and_the_api_give_the_same_red_png(tmp_path: Path) -> None:
    """`xsupervise screenshot NAME`, `Display.screenshot` and `AsyncDisplay.screenshot`."""
    import asyncio
    import json

    from conftest import XSUPERVISE, read_line, start_cli

    with start_cli("start", "--json", "--name", "shot", "--screen", "640x480x24") as process:
        facts = json.loads(read_line(process.stdout))
        env = {**os.environ, "DISPLAY": facts["display"], "XAUTHORITY": facts["xauthority"]}
        subprocess.run(["xsetroot", "-solid", "red"], env=env, check=True)
        out = tmp_path / "cli.png"
        done = subprocess.run(
            [*XSUPERVISE, "screenshot", "shot", "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"{out}: 640x480 PNG of {facts['display']}\n"
        assert _colours(out) == {(255, 0, 0)}
        missing = subprocess.run(
            [*XSUPERVISE, "screenshot", "no-such-name", "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (missing.returncode, missing.stderr.count("\n")) == (6, 1), missing.stderr
        process.terminate()
        assert process.wait(timeout=30) == 0

    import xsupervise

    with xsupervise.Display(":auto", screen="320x200x24") as shown:
        subprocess.run(["xsetroot", "-solid", "red"], env={**os.environ, **shown.env}, check=True)
        assert shown.screenshot(tmp_path / "api.png") == (320, 200)
    assert _colours(tmp_path / "api.png") == {(255, 0, 0)}

    async def shoot() -> tuple[int, int]:
        async with xsupervise.AsyncDisplay(":auto", screen="200x100x24") as shown:
            return await shown.screenshot(tmp_path / "async.png")

    assert asyncio.run(shoot()) == (200, 100)
