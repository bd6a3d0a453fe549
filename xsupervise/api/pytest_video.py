"""The pytest plugin's videos (``--xdisplay-video=failed|all``): each test's display recorded.

Each test that runs with a display of the plugin's (the run's, or its private one) is
recorded (launch/recording.py) from the end of its setup to the end of its teardown, to a hidden
file beside the screenshots. Then the video of a test that failed (in its setup or call:
a failure of the teardown alone comes after the decision), or of every test with ``all``, is
kept as ``<test id>.mp4``; the others are
deleted, so that passing tests leave no file. A kept video is named in the teardown report:
a section, and the ``xdisplay_video`` user property, which pytest's JUnit XML writes (it
writes only the teardown report's properties). Under xdist each worker records its own.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..launch.recording import Recording
    from .pytest_run import XDisplayRun

_FAILED = pytest.StashKey[bool]()
_KEPT = pytest.StashKey[str]()  # the kept video's path, or "none: why"


class VideoRecorder:
    def __init__(self, run: XDisplayRun, mode: str) -> None:
        self.run = run
        self.keep_all = mode == "all"
        self.recording: Recording | None = None
        from ..launch.settings import load_settings

        self.fps = load_settings().record_fps  # XSUPERVISE_RECORD_FPS, record_fps in the config

    @pytest.hookimpl(trylast=True)  # after the display (the run's or a private one) is up
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        from ..host.errors import XSuperviseError
        from ..host.paths import new_token
        from ..host.processes import run_blocking
        from ..launch.recording import READY_WAIT, start_recording
        from .pytest_run import screenshot_name, screenshots_dir

        shown = self.run.private or self.run.display
        if shown is None:
            return
        directory = screenshots_dir(item.config)
        path = directory / ("." + screenshot_name(item.nodeid).removesuffix(".png") + ".mp4")
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self.recording = start_recording(
                int(shown.display.removeprefix(":")),
                shown.xauthority,
                str(path),
                self.fps,
                f"{new_token()}-rec",
            )
            run_blocking(self.recording.ready_steps(READY_WAIT))
        except (OSError, XSuperviseError) as exc:
            item.stash[_KEPT] = f"none: {exc}"

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, Any, None]:
        outcome = yield
        report: pytest.TestReport = outcome.get_result()
        if report.failed and self.recording is not None and not item.stash.get(_FAILED, False):
            # Shown with the failure, as the screenshot is: where its video will be kept.
            report.sections.append(("xdisplay video", str(_final_path(item))))
        if report.failed:
            item.stash[_FAILED] = True
        if report.when == "teardown" and _KEPT in item.stash:
            note = item.stash[_KEPT]
            if not note.startswith("none: "):  # JUnit XML: the teardown report's properties
                report.user_properties.append(("xdisplay_video", note))
            elif item.stash.get(_FAILED, False):
                report.sections.append(("xdisplay video", note))

    @pytest.hookimpl(hookwrapper=True, trylast=True)  # inner: before a private display stops
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        yield
        recording, self.recording = self.recording, None
        if recording is None:
            return
        from ..host.processes import run_blocking
        from ..launch.recording import finish_steps

        status = run_blocking(finish_steps(recording, 2.0))
        if not (self.keep_all or item.stash.get(_FAILED, False)):
            _remove(recording.path)  # a passing test leaves no file
            return
        if status != 0:
            item.stash[_KEPT] = f"none: {recording.death_line(status)}"
            return
        final = _final_path(item)
        os.replace(recording.path, final)
        item.stash[_KEPT] = str(final)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self.recording is not None:  # interrupted mid-test
            self.recording.kill_now(1.0)
            _remove(self.recording.path)


def _final_path(item: pytest.Item) -> Path:
    from .pytest_run import screenshot_name, screenshots_dir

    return screenshots_dir(item.config) / screenshot_name(item.nodeid).replace(".png", ".mp4")


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
