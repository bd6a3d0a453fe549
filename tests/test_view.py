"""``xsupervise view``: a real headless Chromium looks at a real display through noVNC.

Needs the test extras (tornado, selenium), Debian's novnc, tigervnc-scraping-server,
chromium and chromium-driver, and python3-tk (the README's test command installs them).
Browser tests are heavy: few, each checking a whole path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from browser import canvas_centre, chromium, colour_at, require_browser

from conftest import read_line, requires_xvfb, start_cli, wait_gone

pytest.importorskip("tornado", reason="needs the view extra: pip install -e '.[test]'")

TESTS = Path(__file__).parent
COLOUR = (0x12, 0xA4, 0xC8)
HEX = "#{:02x}{:02x}{:02x}".format(*COLOUR)


def start_session(*args: str) -> tuple[subprocess.Popen, dict[str, str]]:
    supervisor = start_cli("start", ":auto", "--json", *args)
    facts = json.loads(read_line(supervisor.stdout, timeout=20))
    return supervisor, facts


def start_view(*args: str) -> tuple[subprocess.Popen, str]:
    view = start_cli("view", *args)
    url = read_line(view.stdout, timeout=20).strip()
    assert url.startswith("http://127.0.0.1:"), url
    return view, url


def start_window(facts: dict[str, str]) -> subprocess.Popen:
    env = dict(os.environ, DISPLAY=facts["display"], XAUTHORITY=facts["xauthority"])
    window = subprocess.Popen(
        [sys.executable, str(TESTS / "tk_colour.py"), HEX],
        env=env,
        stdout=subprocess.PIPE,
        bufsize=0,
    )
    assert read_line(window.stdout) == "ready\n"
    return window


def status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {})) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        error.close()
        return error.code


def websocket_upgrade(url: str) -> int:
    """The status of a WebSocket upgrade request to ``url`` (101 if accepted)."""
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("GET", parts.path, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def listeners_beyond_loopback() -> list[str]:
    """LISTEN sockets on an address other than 127.0.0.1 / ::1, from /proc/net/tcp*."""
    loopback = {"0100007F", "00000000000000000000000001000000"}
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as stream:
            next(stream)
            for line in stream:
                fields = line.split()
                address = fields[1].rsplit(":", 1)[0]
                if fields[3] == "0A" and address not in loopback:
                    found.append(f"{table}: {fields[1]}")
    return found


def wait_for_colour(driver, colour: tuple[int, int, int], timeout: float = 20.0) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    def shows(_driver) -> bool:
        x, y = canvas_centre(driver)
        return x >= 0 and colour_at(driver, x, y) == colour

    WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        shows, f"noVNC's canvas never showed {HEX}"
    )


@requires_xvfb
def test_a_browser_sees_and_types_into_an_xvfb_display_through_an_attached_vnc_server(
    short_runtime: Path,
):
    require_browser()
    supervisor, facts = start_session("--name", "viewed")
    window = view = None
    try:
        window = start_window(facts)
        view, url = start_view("viewed")
        # The attached VNC server: TigerVNC's scraper, ours, on a unix socket only.
        scraper = [
            p for p in psutil.Process(view.pid).children(recursive=True) if "X0tigervnc" in p.name()
        ]
        assert len(scraper) == 1, scraper
        assert "-rfbunixpath" in scraper[0].cmdline() and "-1" in scraper[0].cmdline()
        assert listeners_beyond_loopback() == []

        # Without the token: 403 for the page, its files and the WebSocket.
        root = url.split("/", 3)
        token = root[3].split("/")[0]
        base = "/".join(root[:3])
        assert status(url) == 200
        for path in ("/vnc_lite.html", "/core/rfb.js", f"/{token[:-1]}x/vnc_lite.html", "/"):
            assert status(base + path) == 403, path
        assert websocket_upgrade(f"{base}/wrong/websockify") == 403
        assert websocket_upgrade(f"{base}/{token}/websockify") == 101

        with chromium() as driver:
            from selenium.webdriver.common.action_chains import ActionChains
            from selenium.webdriver.common.by import By

            driver.get(url)
            wait_for_colour(driver, COLOUR)
            canvas = driver.find_element(By.CSS_SELECTOR, "#screen canvas")
            ActionChains(driver).click(canvas).send_keys("q").perform()
            assert read_line(window.stdout, timeout=20) == "q\n"
        assert listeners_beyond_loopback() == []

        # The session ends: the view ends by itself, with its VNC server and its files.
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=20) == 0
        assert view.wait(timeout=20) == 0
        assert b"ended" in view.stderr.read()
        assert wait_gone(scraper[0].pid, timeout=5)
        assert [p.name for p in short_runtime.iterdir() if p.name.startswith("view-")] == []
    finally:
        for process in (view, window, supervisor):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
            if process is not None:
                for stream in (process.stdout, process.stderr):
                    if stream is not None:
                        stream.close()
