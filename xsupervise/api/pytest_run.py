"""The pytest plugin's state for one pytest process, and its hooks (see pytest_plugin.py).

Imported in every pytest run that has xsupervise installed: it imports nothing of xsupervise
at module level, only when a display is first needed.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Generator, Mapping
from pathlib import Path
from typing import Any

import pytest

from .child_display import (
    ChildDisplay,
    Desktop,
    Leased,
    OwnedDisplay,
    Shown,
    platform_problem,
    server_problem,
)

_MARKER_ARGS = {"screen", "server", "fresh"}
_CONTROLLER_PID = "xsupervise_controller_pid"  # in an xdist worker's workerinput


class XDisplayRun:
    """One pytest process: the run's display, the running test's private one, the hooks."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.off = bool(config.getoption("no_xdisplay"))
        self.pool: str | None = config.getoption("xdisplay_pool")
        flag = config.getoption("xdisplay")
        wanted = config.getini("xdisplay") if flag is None else flag
        self.wanted = not self.off and bool(wanted or self.pool)
        self.screen = config.getoption("xdisplay_screen") or config.getini("xdisplay_screen")
        self.server = config.getoption("xdisplay_server") or config.getini("xdisplay_server")
        self.display: OwnedDisplay | None = None  # the run's: a ChildDisplay or a lease
        self.private: ChildDisplay | None = None  # the running test's own
        self.failure: str | None = None  # why the run's display cannot be had
        self._run_env: dict[str, str | None] = {}
        self._test_env: dict[str, str | None] = {}
        if self.wanted:
            problem = platform_problem()
            if problem:
                raise pytest.UsageError(f"--xdisplay: {problem}")

    # -- displays ---------------------------------------------------------------------------

    def current(self) -> Shown:
        """The display the running test uses (see pytest_plugin.XDisplay)."""
        if self.private is not None:
            return self.private
        if self.display is not None:
            return self.display
        if self.off and os.environ.get("DISPLAY"):
            return Desktop()
        raise RuntimeError(
            "no X display is running: request the xdisplay fixture (or the "
            "xdisplay marker) in the test that uses it"
        )

    def unavailable(self) -> str | None:
        """Why the xdisplay fixture cannot give a display (a skip reason), or None."""
        if self.off:
            return (
                None
                if os.environ.get("DISPLAY")
                else "--no-xdisplay is given and DISPLAY is not set: no display to use"
            )
        if self.private is not None:
            return None
        self.ensure_run_display()
        return self.failure

    def ensure_run_display(self) -> None:
        """Start the run's display unless it runs or cannot run (then ``failure`` says why).
        A server that fails to start raises XSuperviseError (not cached: it may recover)."""
        if self.display is not None or self.failure is not None:
            return
        from ..host.errors import EnvironmentProblem, UsageError

        self.failure = platform_problem()
        if self.failure:
            return
        try:
            self.display = self._lease() if self.pool else self._start(self.screen, self.server)
        except (EnvironmentProblem, UsageError) as exc:
            # An explicit pool is never replaced by a private server: say which pool failed.
            self.failure = (
                f"no lease from pool {self.pool!r}: {exc}" if self.pool else f"no X display: {exc}"
            )
            return
        self._run_env = set_display_env(self.display.env)

    def _start(self, screen: str | None, server: str | None) -> ChildDisplay:
        die_with_the_controller(self.config)
        return ChildDisplay(screen=screen or None, server=server or None).start()

    def _lease(self) -> Leased:
        from ..client import Client

        die_with_the_controller(self.config)

        # Held for as long as the connection that took it stays open: if this process dies,
        # the daemon destroys the display.
        assert self.pool is not None
        client = Client().connect()
        try:
            return Leased(client, client.lease(self.pool))
        except BaseException:
            client.close()
            raise

    # -- hooks ------------------------------------------------------------------------------

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if not self.wanted:
            return
        if self.config.pluginmanager.has_plugin("dsession"):
            # The xdist controller runs no tests and starts no display; it checks what it
            # can, so that a missing server is one usage error, not every worker crashing.
            problem = None if self.pool else server_problem(self.server)  # a pool's are its own
            if problem:
                raise pytest.UsageError(f"--xdisplay: {problem}")
            return
        from ..host.errors import XSuperviseError

        try:
            self.ensure_run_display()
        except XSuperviseError as exc:
            pytest.exit(f"xdisplay: {exc}", returncode=pytest.ExitCode.INTERNAL_ERROR)
        if self.failure:
            flag = "--xdisplay-pool" if self.pool else "--xdisplay"
            raise pytest.UsageError(f"{flag}: {self.failure}")

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """xdist's controller, for each worker: our pid, if the worker is our own child."""
        if getattr(node.gateway.spec, "popen", False):
            node.workerinput[_CONTROLLER_PID] = os.getpid()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if self.off:
            return
        marker = item.get_closest_marker("xdisplay")
        if marker is not None and _wants_private(marker):
            self._start_private(marker)
        elif marker is not None or "xdisplay" in getattr(item, "fixturenames", ()):
            from ..host.errors import XSuperviseError

            try:
                self.ensure_run_display()
            except XSuperviseError as exc:
                pytest.fail(f"xdisplay: {exc}", pytrace=False)
            if self.failure:
                pytest.skip(self.failure)

    def _start_private(self, marker: pytest.Mark) -> None:
        from ..host.errors import EnvironmentProblem, XSuperviseError

        problem = platform_problem()
        if problem:
            pytest.skip(problem)
        try:
            self.private = self._start(
                marker.kwargs.get("screen") or self.screen,
                marker.kwargs.get("server") or self.server,
            )
        except EnvironmentProblem as exc:
            pytest.skip(f"no X display: {exc}")
        except XSuperviseError as exc:
            pytest.fail(f"xdisplay: {exc}", pytrace=False)
        self._test_env = set_display_env(self.private.env)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        yield  # the test's fixtures are torn down first: they may still use its display
        if self.private is not None:
            set_display_env(self._test_env)
            self.private.stop()
            self.private = None

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item) -> Generator[None, Any, None]:
        outcome = yield
        report: pytest.TestReport = outcome.get_result()
        target = self.private or self.display
        if report.failed and report.when in ("setup", "call") and target is not None:
            from ..host.errors import XSuperviseError
            from ..media.screenshot import capture

            path = screenshots_dir(self.config) / screenshot_name(item.nodeid)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                capture(target.display, target.xauthority, path)
                note = str(path)
                # JUnit XML takes the properties of the teardown's report only, which pytest
                # copies from the item's: on the item, so that every later report has it.
                item.user_properties.append(("xdisplay_screenshot", note))
                report.user_properties.append(("xdisplay_screenshot", note))
            except (OSError, XSuperviseError) as exc:
                note = f"none: {exc}"
            report.sections.append((f"xdisplay screenshot {report.when}", note))

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self.private is not None:
            set_display_env(self._test_env)
            self.private.stop()
        if self.display is not None:
            set_display_env(self._run_env)
            self.display.stop()
            self.display = None


def _wants_private(marker: pytest.Mark) -> bool:
    unknown = set(marker.kwargs) - _MARKER_ARGS
    if unknown or marker.args:
        pytest.fail(
            f"@pytest.mark.xdisplay takes only the keywords screen, server and fresh "
            f"(got {', '.join(sorted(unknown)) or marker.args})",
            pytrace=False,
        )
    return bool(
        marker.kwargs.get("fresh") or marker.kwargs.get("screen") or marker.kwargs.get("server")
    )


def die_with_the_controller(config: pytest.Config) -> None:
    """In an xdist worker (a child of the controller, which runs no tests): be SIGKILLed by
    the kernel when the controller dies, so that our displays go with it at once. Their
    supervisors stop when we do (--exit-with-parent); a worker would otherwise live on
    until its running test ends, and the displays with it. Idempotent."""
    controller = getattr(config, "workerinput", {}).get(_CONTROLLER_PID)
    if controller is None or os.getppid() != controller:
        return  # not an xdist worker, a remote one, or one whose controller is already gone
    import signal

    from ..host.processes import signal_when_parent_dies

    if not signal_when_parent_dies(controller, signal.SIGKILL):
        os.kill(os.getpid(), signal.SIGKILL)  # it died before the kernel could tell us


def screenshot_name(nodeid: str) -> str:
    """A file name for a test id: safe characters only, short, still unique."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", nodeid).strip("._-") or "test"
    if len(name) > 120:
        digest = hashlib.sha1(nodeid.encode()).hexdigest()[:8]
        name = f"{name[:110]}-{digest}"
    return f"{name}.png"


def screenshots_dir(config: pytest.Config) -> Path:
    chosen = config.getoption("xdisplay_screenshots") or config.getini("xdisplay_screenshots")
    return config.invocation_params.dir / str(chosen)


def set_display_env(values: Mapping[str, str | None]) -> dict[str, str | None]:
    """Set (or, for None, remove) variables; return what they were, for restoring."""
    saved = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return saved
