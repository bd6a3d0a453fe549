"""Real headless Chromium for the view tests (Selenium and Debian's chromium-driver).

A fresh profile per browser, no background network or updates; ``colour_at`` reads a pixel of
a screenshot of the page, as a person would see it.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1100",
)


def require_browser() -> None:
    pytest.importorskip("selenium", reason="needs the test extras: pip install -e '.[test]'")
    if not shutil.which(CHROMEDRIVER):
        pytest.skip("needs chromium and chromium-driver (Debian: apt-get install chromium-driver)")


@contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium driven by chromedriver; both end (and are reaped) with the block."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-")
    options = webdriver.ChromeOptions()
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def colour_at(driver, x: int, y: int) -> tuple[int, int, int]:
    """The colour of the page's pixel (x, y) in a screenshot of the window."""
    from PIL import Image

    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    return image.getpixel((x, y))


def canvas_centre(driver) -> tuple[int, int]:
    """Where the middle of noVNC's canvas is on the page (CSS pixels = screenshot pixels)."""
    box = driver.execute_script(
        "const c = document.querySelector('#screen canvas') || document.querySelector('canvas');"
        "if (!c) return null; const r = c.getBoundingClientRect();"
        "return [r.left + r.width / 2, r.top + r.height / 2, r.width];"
    )
    if not box or box[2] == 0:
        return (-1, -1)
    return int(box[0]), int(box[1])
