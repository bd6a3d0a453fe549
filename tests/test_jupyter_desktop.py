"""The "Desktop" launcher (xsupervise.jupyter.setup_desktop) under a real Jupyter server.

jupyter-server-proxy runs the xvnc session and bridges its VNC socket (raw_socket_proxy);
our server extension serves noVNC behind Jupyter's login; a real headless Chromium looks.
Needs the test extras and the packages of the README's test command (see test_view.py).
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from browser import chromium, require_browser
from test_view import COLOUR, HEX, wait_for_colour, websocket_upgrade

from conftest import XSUPERVISE, wait_gone

pytest.importorskip(
    "jupyter_server_proxy", reason="needs the test extras: pip install -e '.[test]'"
)
from test_jupyter_launcher import BASE_URL, TOKEN, JupyterServer

TESTS = Path(__file__).parent
EXTENSION_CONFIG = TESTS.parent / "jupyter-config" / "jupyter_server_config.d" / "xsupervise.json"
SESSION_NAME = f"jupyter-{getpass.getuser()}-xsupervise-desktop"


def jupyter_with_the_extension(tmp_path: Path, keys: Path) -> JupyterServer:
    # What `pip install xsupervise` puts in <prefix>/etc/jupyter (an editable install does
    # not install data files): the very file, in this server's own config directory.
    config = tmp_path / "jupyter-config" / "jupyter_server_config.d"
    config.mkdir(parents=True)
    shutil.copy(EXTENSION_CONFIG, config)
    xstartup = f"{sys.executable} {TESTS / 'tk_colour.py'} {HEX} {keys}"
    return JupyterServer(tmp_path, {"XSUPERVISE_DESKTOP_XSTARTUP": xstartup})


def wait_for_line(path: Path, line: str, timeout: float) -> None:
    # The app's output goes to a file (the proxy owns its stdout): polled, bounded.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and line in path.read_text().splitlines():
            return
        time.sleep(0.05)
    raise AssertionError(
        f"{line!r} never reached {path}: {path.read_text() if path.exists() else ''}"
    )


@pytest.mark.skipif(shutil.which("Xvnc") is None, reason="needs tigervnc-standalone-server")
def test_the_desktop_shows_in_chromium_behind_jupyters_login_and_a_sigkill_leaves_nothing(
    tmp_path: Path, short_runtime: Path
):
    require_browser()
    keys = tmp_path / "keys"
    jupyter = jupyter_with_the_extension(tmp_path, keys)
    try:
        page = f"{jupyter.url}{BASE_URL}xsupervise-desktop-page/"
        # Without Jupyter's token: the page and the proxy's WebSocket are refused.
        assert jupyter.get("xsupervise-desktop-page/", timeout=30)[0] == 200  # with it
        status, _ = _get_without_token(page)
        assert status in (302, 403), status  # to the login page, or refused
        assert websocket_upgrade(f"{jupyter.url}{BASE_URL}xsupervise-desktop/") in (302, 403)

        with chromium() as driver:
            from selenium.webdriver.common.action_chains import ActionChains
            from selenium.webdriver.common.by import By

            driver.get(f"{page}?token={TOKEN}")
            wait_for_colour(driver, COLOUR, timeout=60)
            wait_for_line(keys, "ready", timeout=10)
            canvas = driver.find_element(By.CSS_SELECTOR, "#screen canvas")
            ActionChains(driver).click(canvas).send_keys("q").perform()
            wait_for_line(keys, "q", timeout=20)

        # The launcher (jupyter-server-proxy's child: our supervisor) SIGKILLed: nothing of it
        # is left within 1 s (the server, the xstartup app, the window manager).
        [launcher] = [p for p in jupyter.descendants() if p.cmdline()[1:3] == ["-m", "xsupervise"]]
        family = launcher.children(recursive=True)
        assert any("Xvnc" in p.name() or "Xtigervnc" in p.name() for p in family), family
        launcher.send_signal(signal.SIGKILL)
        left = [p.pid for p in [launcher, *family] if not wait_gone(p.pid, timeout=1.0)]
        assert left == [], f"left after the launcher's SIGKILL: {left}"
        # The proxy relaunches it at once, and the new supervisor clears what the killed one
        # left. (Stopped before its display is ready, it would leave that to the next start.)
        assert wait_for_relaunch(launcher.pid, timeout=30)
    finally:
        for process in jupyter.stop(signal.SIGTERM):
            assert wait_gone(process.pid, timeout=15), f"{process.pid} outlived Jupyter"


def wait_for_relaunch(killed: int, timeout: float) -> bool:
    """Until `list` shows one session: ready, of another supervisor than ``killed`` (there is
    no event to wait for from here: polled, bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run([*XSUPERVISE, "list", "--json"], capture_output=True, text=True)
        records = json.loads(done.stdout or "[]")
        if [(r["state"], r["supervisor_pid"] != killed) for r in records] == [("ready", True)]:
            return True
        time.sleep(0.1)
    return False


def _get_without_token(url: str) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(url, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, b""


def test_the_desktop_entry_is_a_budgeted_launcher_with_a_raw_socket_proxy():
    from xsupervise import jupyter

    spec = jupyter.setup_desktop()
    command = spec["command"]
    cut = command.index("--")
    assert {"--relaunched", "--exit-with-parent", "--substitute"} <= set(command[:cut])
    assert command[command.index("--name") + 1] == SESSION_NAME
    assert command[command.index("--server") + 1] == "xvnc"
    assert command[cut + 1 :][1:4] == ["-m", "xsupervise.media.jupyter_desktop", "{unix_socket}"]
    assert spec["unix_socket"] is True and spec["raw_socket_proxy"] is True
    assert spec["launcher_entry"] == {
        "enabled": True,
        "title": "Desktop",
        "path_info": "xsupervise-desktop-page/",
    }


@pytest.mark.realtime
@pytest.mark.skipif(shutil.which("Xvnc") is None, reason="needs tigervnc-standalone-server")
def test_a_desktop_whose_session_fails_at_once_cannot_storm(
    tmp_path: Path, short_runtime: Path, monkeypatch: pytest.MonkeyPatch
):
    """The desktop's xstartup command exits 1 at once, and jupyter-server-proxy's relauncher
    (simpervisor) starts the entry again each time, for 2 s: the budget spaces the starts
    (0.17 s backoff, doubling), as for test_jupyter_launcher's app that crashes."""
    from test_jupyter_launcher import RELAUNCH_BACKOFF, RELAUNCH_SECONDS, relaunch_for

    from xsupervise import jupyter

    runs = tmp_path / "runs"
    monkeypatch.setenv("XSUPERVISE_DESKTOP_XSTARTUP", f"sh -c 'echo run >> {runs}; exit 1'")
    monkeypatch.setenv("XSUPERVISE_BACKOFF_INITIAL", RELAUNCH_BACKOFF)
    spec = jupyter.setup_desktop()
    socket_dir = tempfile.mkdtemp(prefix="jsp-", dir="/tmp")  # as the proxy makes it
    try:
        path = os.path.join(socket_dir, "socket")
        relaunch_for(
            [[arg.format(port=0, unix_socket=path, base_url="/") for arg in spec["command"]]],
            RELAUNCH_SECONDS,
        )
    finally:
        shutil.rmtree(socket_dir)
    count = len(runs.read_text().splitlines())  # one line per Xvnc that became ready
    print(f"{count} desktops started in {RELAUNCH_SECONDS:g} s")
    assert 2 <= count <= 5, f"{count} desktops started in {RELAUNCH_SECONDS:g} s"
