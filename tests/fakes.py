"""A fake clock, and a launcher of scripted X servers (see session.session.Launcher): no processes,
no time passing unless a driver moves it (tests/fake_driver.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

from xsupervise.host import errors
from xsupervise.host.paths import RuntimeDir
from xsupervise.launch.launcher import SessionFiles
from xsupervise.launch.process import Wait
from xsupervise.launch.settings import Settings
from xsupervise.session.session import Clock

FAKE_PIDS = 5_000_000  # above any pid_max: no signal can reach a real process by mistake
FAKE_FDS = 1_000_000  # "pidfds" no real fd has


class FakeClock(Clock):
    """Time that moves only when the driver moves it. Wall time starts at a real-looking
    moment (records and logs show it), monotonic time at 0."""

    def __init__(self) -> None:
        self.now = 0.0
        self.epoch = float(int(time.time()))

    def __repr__(self) -> str:
        return f"<fake clock at {self.now:.3f} s>"

    def wall(self) -> float:
        return self.epoch + self.now

    def monotonic(self) -> float:
        return self.now


class Behaviour:
    """What one scripted X server does once spawned.

    ``ready_after``: writes its display number and answers this long after the spawn (None:
    never; the launch then times out at the displayfd deadline, or ``exits_after``).
    ``lives``: once ready, dies (killed by SIGKILL) this long after (None: runs until stopped).
    ``missing``: there is no such server binary (ServerNotFound, nothing spawned).
    """

    def __init__(
        self,
        ready_after: float | None = 0.05,
        lives: float | None = None,
        exits_after: float | None = None,
        missing: bool = False,
    ) -> None:
        self.ready_after, self.lives = ready_after, lives
        self.exits_after, self.missing = exits_after, missing


READY = Behaviour()  # ready at once, runs until stopped
NEVER = Behaviour(ready_after=None)  # never writes a display number
EXITS = Behaviour(ready_after=None, exits_after=0.01)  # exits 1 at once
MISSING = Behaviour(missing=True)


def dies(after: float) -> Behaviour:
    """Ready at once, then dies ``after`` seconds later."""
    return Behaviour(lives=after)


class FakeChild:
    def __init__(self, pidfd: int) -> None:
        self.pidfd = pidfd  # a number only the driver knows


class FakeServer:
    """What a launcher returns (see session.session.LaunchedServer): no process, only a script."""

    def __init__(self, launcher: FakeLauncher, pid: int, files: SessionFiles) -> None:
        self.launcher = launcher
        self.pid = pid
        self.child = FakeChild(FAKE_FDS + pid - FAKE_PIDS)
        self.files = files
        self.number: int | None = None
        self.facts = None
        self.output_tail = ""
        self.output_reason = ""
        self.dies_at: float | None = None  # monotonic time of its death, if scripted
        self.status = -9  # how it dies: SIGKILLed (or exit 1 before ready, see launcher)
        self.exit_status: int | None = None  # once stopped and "reaped"

    def __repr__(self) -> str:
        return f"<FakeServer {self.display or '(no display yet)'} pid {self.pid}>"

    @property
    def display(self) -> str | None:
        return None if self.number is None else f":{self.number}"

    @property
    def env(self) -> dict[str, str]:
        return {"DISPLAY": f":{self.number}", "XAUTHORITY": self.files.auth_path}

    @property
    def auth_path(self) -> str:
        return self.files.auth_path

    def dead_by(self, now: float) -> bool:
        return self.dies_at is not None and self.dies_at <= now

    def stop_steps(self) -> Generator[Wait, Any, int]:
        if self.exit_status is None:
            clock = self.launcher.clock
            if not self.dead_by(clock.now):  # SIGTERM: a fake server obeys at once
                self.dies_at, self.status = clock.now, -15
            yield Wait((self.child.pidfd,), clock.now + self.launcher.settings.kill_grace)
            self.exit_status = self.status
            self.output_tail = f"fake server pid {self.pid} output"
        return self.exit_status

    def kill_now(self) -> None:
        if self.exit_status is None:
            self.dies_at, self.exit_status = self.launcher.clock.now, -9


class FakeLauncher:
    """A launcher (see session.session.Launcher) whose servers follow ``script``: one Behaviour per
    spawn, the last one repeated (or a callable of the spawn's index)."""

    def __init__(
        self,
        clock: FakeClock,
        settings: Settings,
        script: Sequence[Behaviour] | Callable[[int], Behaviour],
    ) -> None:
        self.clock, self.settings, self.script = clock, settings, script
        self.spawned: list[FakeServer] = []  # every server spawned, in order
        self.servers: dict[int, FakeServer] = {}  # by pidfd
        self.missing = 0  # launches that found no server binary
        self.next_number = 100

    def behaviour(self, index: int) -> Behaviour:
        if callable(self.script):
            return self.script(index)
        return self.script[min(index, len(self.script) - 1)]

    def __call__(
        self,
        settings: Settings,
        runtime: RuntimeDir,
        number: int | None,
        *,
        files: SessionFiles | None = None,
        kind: str = "api",
        reclaim: bool = True,
    ) -> Generator[Wait, Any, FakeServer]:
        assert files is not None, "sessions always pass their files"
        files.create()  # as the real launcher does, just before the spawn
        behaviour = self.behaviour(len(self.spawned) + self.missing)
        if behaviour.missing:
            self.missing += 1
            raise errors.ServerNotFound(
                "X server '/nonexistent/Xfake' does not exist; install "
                "it (Debian: apt-get install xvfb) or name another."
            )
        server = FakeServer(self, FAKE_PIDS + len(self.spawned), files)
        self.spawned.append(server)
        self.servers[server.child.pidfd] = server
        spawned_at = self.clock.now
        files.save(server_pid=server.pid, server_ticks=None, display=None)
        deadline = spawned_at + settings.displayfd_timeout
        ends = [t for t in (behaviour.ready_after, behaviour.exits_after) if t is not None]
        try:
            yield Wait((), min([spawned_at + t for t in ends] + [deadline]))
        except GeneratorExit:
            server.kill_now()
            raise
        except BaseException:
            yield from server.stop_steps()
            raise
        now = self.clock.now
        if behaviour.ready_after is not None and now >= spawned_at + behaviour.ready_after:
            server.number = number if number is not None else self._new_number()
            if behaviour.lives is not None:
                server.dies_at = now + behaviour.lives
            files.save(display=server.display)  # (the state is the session's to write)
            return server
        facts: dict[str, Any] = {
            "server": "Xfake",
            "pid": server.pid,
            "elapsed": now - spawned_at,
            "stderr_tail": "fake: no",
        }
        if behaviour.exits_after is not None and now >= spawned_at + behaviour.exits_after:
            server.dies_at, server.status = now, 1
            yield from server.stop_steps()
            raise errors.ServerExited(
                "exited with status 1 before it wrote a display number", **facts
            )
        yield from server.stop_steps()
        raise errors.ReadyTimeout(
            f"was not ready within the {settings.displayfd_timeout:g} s deadline", **facts
        )

    def _new_number(self) -> int:
        self.next_number += 1
        return self.next_number
