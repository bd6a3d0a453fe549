"""The seams of a session: its clock and its launcher, so that tests can pass fake ones.

- ``Clock.wall()``: seconds since the epoch (time.time()). The ledger and the records keep
  wall times, since they outlive the process that wrote them.
- ``Clock.monotonic()``: seconds on a clock that never jumps (time.monotonic()). Uptimes and
  the deadlines of the ``Wait``s a session yields; the real drivers (``run_blocking``,
  ``host.steps.run_steps``) wait on time.monotonic(), so a fake clock needs a fake driver too
  (tests/fakes.py).
- ``Launcher``: what spawns and verifies a server (``launch.launcher.launch_steps``), returning a
  ``LaunchedServer`` (``launch.launcher.XServer``). These two are interfaces for the type checker
  only (importing typing costs the CLI milliseconds).
"""

from __future__ import annotations

import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Generator
    from typing import Any, Protocol, TypeVar

    from ..host.paths import RuntimeDir
    from ..launch.launcher import SessionFiles
    from ..launch.process import Offload, Wait
    from ..launch.settings import Settings
    from ..launch.x11 import ServerFacts

    T = TypeVar("T")
    # Steps that yield Waits (or Offloads) to their driver and return a T (see launch/process.py).
    Steps = Generator[Wait | Offload, Any, T]

    class Watched(Protocol):
        @property
        def pidfd(self) -> int: ...  # readable once the server has exited

    class LaunchedServer(Protocol):
        """A verified, running X server."""

        @property
        def child(self) -> Watched: ...
        @property
        def pid(self) -> int: ...
        @property
        def number(self) -> int | None: ...
        @property
        def display(self) -> str | None: ...
        @property
        def env(self) -> dict[str, str]: ...
        @property
        def auth_path(self) -> str: ...
        @property
        def output_tail(self) -> str: ...  # its last output, once it has been stopped
        @property
        def output_reason(self) -> str: ...  # its own reason for failing, if it gave one
        @property
        def facts(self) -> ServerFacts | None: ...
        def stop_steps(self) -> Steps[int]: ...  # TERM, grace, KILL, reap: its exit status
        def kill_now(self) -> None: ...  # SIGKILL and reap, for when no waiting is possible

    class Launcher(Protocol):
        """Spawn a server and verify it; a failure raises StartError (a failed start, counted
        against the budget) or EnvironmentProblem (e.g. no such server binary)."""

        def __call__(
            self,
            settings: Settings,
            runtime: RuntimeDir,
            number: int | None,
            *,
            files: SessionFiles | None = ...,
            kind: str = ...,
            reclaim: bool = ...,
        ) -> Steps[LaunchedServer]: ...


class Clock:
    """The system's clocks."""

    def __repr__(self) -> str:
        return "<system clock>"

    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK = Clock()


def clock_time(wall: float | None) -> str:
    """A wall time as the log lines show it: '12:03:41' ('?' for none)."""
    return "?" if wall is None else time.strftime("%H:%M:%S", time.localtime(wall))
