"""pytest plugin: a verified X display for a test run, screenshots of failing tests.

Loaded in every pytest run once xsupervise is installed (the ``pytest11`` entry point), and
inactive until asked: ``--xdisplay`` (or ini ``xdisplay = true``), the ``xdisplay`` fixture
or the ``xdisplay`` marker. Only the standard library and pytest are imported here; the
rest of xsupervise is imported when a display is first needed.

    pytest --xdisplay --xdisplay-screen 1920x1080x24 -n 4   # one display per xdist worker

    def test_window(xdisplay):                   # the run's display (started on first use)
        subprocess.run(["xmessage", "hi"], env={**os.environ, **xdisplay.env}, timeout=1)

    @pytest.mark.xdisplay(screen="800x600x24", fresh=True)  # a private display for one test
    def test_small(xdisplay): ...

Each display runs under an ``xsupervise start --exit-with-parent`` child (see
api/child_display.py): if pytest is SIGKILLed, the child still stops the server and removes
every file of the session.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .api.child_display import Shown
    from .api.pytest_run import XDisplayRun

__all__ = ["XDisplay", "xdisplay"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("xdisplay", "headless X display (xsupervise)")
    group.addoption(
        "--xdisplay",
        action="store_true",
        default=None,
        help="run the whole session on one verified headless X display (one per "
        "xdist worker); DISPLAY and XAUTHORITY are set for the run",
    )
    group.addoption(
        "--no-xdisplay",
        action="store_true",
        default=False,
        help="no display of ours at all: DISPLAY is left as it is (a run on a "
        "real desktop), the xdisplay fixture and marker use it",
    )
    group.addoption(
        "--xdisplay-screen",
        metavar="WxHxD",
        help="screen geometry of the run's display (default: xsupervise's, 1280x1024x24)",
    )
    group.addoption(
        "--xdisplay-server",
        metavar="CMD",
        help="X server command, e.g. 'Xvfb' or 'Xephyr' (default: xsupervise's, Xvfb)",
    )
    group.addoption(
        "--xdisplay-pool",
        metavar="NAME",
        help="lease the display from pool NAME of a running 'xsupervise serve'",
    )
    group.addoption(
        "--xdisplay-screenshots",
        metavar="DIR",
        help="where the PNG of a failing test's display goes (default: .xdisplay)",
    )
    group.addoption(
        "--xdisplay-video",
        choices=("off", "failed", "all"),
        help="record each test's display: keep the videos of failing tests (failed), of all "
        "(all), or record none (off, the default); they go beside the screenshots",
    )
    parser.addini("xdisplay", "like --xdisplay", type="bool", default=False)
    parser.addini("xdisplay_video", "like --xdisplay-video", default="off")
    parser.addini("xdisplay_screen", "like --xdisplay-screen")
    parser.addini("xdisplay_server", "like --xdisplay-server")
    parser.addini("xdisplay_screenshots", "like --xdisplay-screenshots", default=".xdisplay")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "xdisplay(screen=None, server=None, fresh=False): the test needs an X display; with "
        "fresh=True, a screen or a server it gets a private one for itself (xsupervise)",
    )
    from .api.pytest_run import XDisplayRun

    config.stash[_RUN] = run = XDisplayRun(config)
    config.pluginmanager.register(run, "xsupervise-xdisplay")
    video = config.getoption("xdisplay_video") or config.getini("xdisplay_video")
    if video != "off":  # see api/pytest_video.py
        from .api.pytest_video import VideoRecorder

        config.pluginmanager.register(VideoRecorder(run, video), "xsupervise-xdisplay-video")


_RUN = pytest.StashKey["XDisplayRun"]()


class XDisplay:
    """The display of the test that is running: its private one (marker with ``fresh``,
    ``screen`` or ``server``), else the run's; the desktop's with ``--no-xdisplay``."""

    def __init__(self, run: XDisplayRun) -> None:
        self._run = run

    def __repr__(self) -> str:
        return f"<XDisplay {self._current().display}>"

    def _current(self) -> Shown:
        return self._run.current()

    @property
    def display(self) -> str:
        """The DISPLAY value, e.g. ':5'."""
        return self._current().display

    @property
    def xauthority(self) -> str:
        """The cookie file (XAUTHORITY) that lets a client connect."""
        return self._current().xauthority

    @property
    def env(self) -> dict[str, str]:
        """DISPLAY and XAUTHORITY, to merge into a child's environment."""
        return {"DISPLAY": self.display, "XAUTHORITY": self.xauthority}

    @property
    def server_pid(self) -> int | None:
        """The X server's pid (None for the desktop's display, or a leased one)."""
        return getattr(self._current(), "server_pid", None)

    def screenshot(
        self, path: str | os.PathLike[str], window: int | None = None
    ) -> tuple[int, int]:
        """Write a PNG of the display (or of window ``window``) to ``path``; its (w, h)."""
        from .media.screenshot import capture

        return capture(self.display, self.xauthority, path, window)


@pytest.fixture(scope="session")
def xdisplay(request: pytest.FixtureRequest) -> XDisplay:
    """The test's X display (see ``XDisplay``); skips with the reason when none can be had."""
    run = request.config.stash[_RUN]
    reason = run.unavailable()
    if reason:
        pytest.skip(reason)
    return XDisplay(run)
