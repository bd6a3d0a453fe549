"""``xsupervise view``: a real headless Chromium looks at a real display through noVNC.

Needs the test extras (tornado, selenium), Debian's novnc, tigervnc-scraping-server,
chromium and chromium-driver, and python3-tk (the README's test command installs them).
Browser tests are heavy: few, each checking a whole path.
"""

from __future__ import annotations

import json
import os
import shutil
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
    if not url.startswith("http://127.0.0.1:"):
        view.wait(timeout=10)
        with view.stdout, view.stderr:
            raise AssertionError(f"view printed {url!r} and {view.stderr.read()!r}")
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
    """LISTEN sockets of ours (this test's processes: the machine may run services of its
    own) on an address other than 127.0.0.1 / ::1, from /proc/net/tcp* and /proc/PID/fd."""
    loopback = {"0100007F", "00000000000000000000000001000000"}
    ours = set()
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            ours |= {
                os.readlink(f"/proc/{process.pid}/fd/{fd}")
                for fd in os.listdir(f"/proc/{process.pid}/fd")
            }
        except OSError:
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as stream:
            next(stream)
            for line in stream:
                fields = line.split()
                address = fields[1].rsplit(":", 1)[0]
                if (
                    fields[3] == "0A"
                    and address not in loopback
                    and f"socket:[{fields[9]}]" in ours
                ):
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
        # A token one character off (never the same character: tokens are random).
        wrong = token[:-1] + ("x" if token[-1] != "x" else "y")
        for path in ("/vnc_lite.html", "/core/rfb.js", f"/{wrong}/vnc_lite.html", "/"):
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
        # Stopped, not killed: a SIGKILLed supervisor leaves its files for `clean` by design,
        # which would bury this test's own failure under leak reports.
        for process in (view, window, supervisor):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=20)
            if process is not None:
                for stream in (process.stdout, process.stderr):
                    if stream is not None:
                        stream.close()


async def rfb_key_then_update(url: str, keysym: int) -> None:
    """Through the view's WebSocket, as noVNC would: the RFB 3.8 handshake (security None),
    a key press and release of ``keysym``, then a framebuffer update request, and wait for the
    update: the server handles a client's messages in order, so the key has been handled."""
    import struct

    from tornado.websocket import websocket_connect

    ws_url = url.replace("http://", "ws://").split("?")[0].rsplit("/", 1)[0] + "/websockify"
    connection = await websocket_connect(ws_url, subprotocols=["binary"])
    buffer = bytearray()

    async def read(size: int) -> bytes:
        while len(buffer) < size:
            message = await connection.read_message()
            assert message is not None, "the bridge closed the connection"
            buffer.extend(message)
        data = bytes(buffer[:size])
        del buffer[:size]
        return data

    def send(data: bytes) -> None:
        connection.write_message(data, binary=True)

    try:
        assert (await read(12)).startswith(b"RFB 003.")
        send(b"RFB 003.008\n")
        assert 1 in await read((await read(1))[0])  # security type None is offered
        send(b"\x01")
        assert await read(4) == b"\0\0\0\0"  # security result: OK
        send(b"\x01")  # ClientInit: shared
        (name_length,) = struct.unpack(">I", (await read(24))[20:])
        await read(name_length)
        for down in (1, 0):
            send(struct.pack(">BBxxI", 4, down, keysym))  # KeyEvent
        send(struct.pack(">BBHHHH", 3, 0, 0, 0, 1, 1))  # FramebufferUpdateRequest
        assert await read(1) == b"\0"  # FramebufferUpdate
    finally:
        connection.close()
        # close() only starts the closing handshake; its socket closes when the bridge answers,
        # and the loop must not end before that (the socket would outlive the test).
        while await connection.read_message() is not None:
            pass


def rfb(url: str, keysym: int) -> None:
    import asyncio

    asyncio.run(asyncio.wait_for(rfb_key_then_update(url, keysym), 20))


def scrapers_of(view: subprocess.Popen) -> list[psutil.Process]:
    family = psutil.Process(view.pid).children(recursive=True)
    return [process for process in family if "X0tigervnc" in process.name()]


@pytest.mark.skipif(shutil.which("Xvnc") is None, reason="needs tigervnc-standalone-server")
def test_xvnc_is_viewed_on_its_own_socket_and_view_only_input_is_refused_by_the_vnc_server(
    short_runtime: Path,
):
    supervisor, facts = start_session("--server", "xvnc", "--name", "desk")
    views: list[subprocess.Popen] = []
    window = None
    try:
        window = start_window(facts)
        # --view-only: a VNC server attached in view-only mode, even to Xvnc. A key sent
        # through it is dropped by that server; one typed into X afterwards arrives first.
        view_only, url = start_view("desk", "--view-only")
        views.append(view_only)
        [scraper] = scrapers_of(view_only)
        assert {"-AcceptKeyEvents=0", "-AcceptPointerEvents=0"} <= set(scraper.cmdline())
        assert "view_only=true" in url
        rfb(url, ord("b"))
        env = dict(os.environ, DISPLAY=facts["display"], XAUTHORITY=facts["xauthority"])
        subprocess.run(["xdotool", "key", "z"], env=env, check=True)
        assert read_line(window.stdout) == "z\n"

        # SIGKILLed, the view takes its VNC server with it; the next view clears its files.
        view_only.kill()
        view_only.wait()
        assert wait_gone(scraper.pid, timeout=1.0)
        view, url = start_view(facts["display"])
        views.append(view)
        killed = f"view-{view_only.pid}-"
        assert [p.name for p in short_runtime.iterdir() if p.name.startswith(killed)] == []
        # The session's own VNC socket: no VNC server attached; keys reach the display.
        assert scrapers_of(view) == []
        rfb(url, ord("a"))
        assert read_line(window.stdout) == "a\n"
        view.send_signal(signal.SIGINT)
        assert view.wait(timeout=10) == 0
    finally:
        for process in (*views, window, supervisor):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=20)
            if process is not None:
                for stream in (process.stdout, process.stderr):
                    if stream is not None:
                        stream.close()
