"""A session in simulated time: a fake clock, a launcher of scripted X servers, and a driver.

    world = World(tmp_runtime)
    session = world.session("name", Mode.CLI, launcher_script=[READY, dies(0.5)])
    run = world.run(session)
    run.advance(until=60.0)        # simulated seconds; returns True once the steps ended

The driver answers the ``Wait``s a session yields by moving the fake clock: to the Wait's
deadline, or to the moment a watched fake server is scripted to die (its "pidfd" is a number
only this driver knows). An ``Offload`` is called inline, as ``run_blocking`` does. The
ledger, the records and the session's files are the real ones, in a real runtime directory:
they are cheap, and what the tests check.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

from xsupervise import _errors as errors
from xsupervise._clock import Clock
from xsupervise._launcher import SessionFiles
from xsupervise._ledger import Ledger
from xsupervise._paths import RuntimeDir
from xsupervise._process import Offload, Wait
from xsupervise._session import Session
from xsupervise._settings import Settings, load_settings
from xsupervise._states import Mode

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

    def __init__(self, ready_after: float | None = 0.05, lives: float | None = None,
                 exits_after: float | None = None, missing: bool = False) -> None:
        self.ready_after, self.lives = ready_after, lives
        self.exits_after, self.missing = exits_after, missing

    def __repr__(self) -> str:
        return (f"Behaviour(ready_after={self.ready_after}, lives={self.lives}, "
                f"exits_after={self.exits_after}, missing={self.missing})")


READY = Behaviour()  # ready at once, runs until stopped
NEVER = Behaviour(ready_after=None)  # never writes a display number
EXITS = Behaviour(ready_after=None, exits_after=0.01)  # exits 1 at once
MISSING = Behaviour(missing=True)


def dies(after: float) -> Behaviour:
    """Ready at once, then dies ``after`` seconds later."""
    return Behaviour(lives=after)


class FakeChild:
    def __init__(self, pidfd: int) -> None:
        self.pidfd = pidfd


class FakeServer:
    """What a launcher returns (see _clock.LaunchedServer): no process, only a script."""

    def __init__(self, launcher: FakeLauncher, pid: int, files: SessionFiles) -> None:
        self.launcher = launcher
        self.pid = pid
        self.child = FakeChild(FAKE_FDS + pid - FAKE_PIDS)
        self.files = files
        self.number: int | None = None
        self.facts = None
        self.output_tail = ""
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
    """A launcher (see _clock.Launcher) whose servers follow ``script``: one Behaviour per
    spawn, the last one repeated (or a callable of the spawn's index)."""

    def __init__(self, clock: FakeClock, settings: Settings,
                 script: Sequence[Behaviour] | Callable[[int], Behaviour]) -> None:
        self.clock, self.settings, self.script = clock, settings, script
        self.spawned: list[FakeServer] = []  # every server spawned, in order
        self.servers: dict[int, FakeServer] = {}  # by pidfd
        self.missing = 0  # launches that found no server binary
        self.next_number = 100

    def behaviour(self, index: int) -> Behaviour:
        if callable(self.script):
            return self.script(index)
        return self.script[min(index, len(self.script) - 1)]

    def __call__(self, settings: Settings, runtime: RuntimeDir, number: int | None, *,
                 files: SessionFiles | None = None, kind: str = "api",
                 reclaim: bool = True) -> Generator[Wait, Any, FakeServer]:
        assert files is not None, "sessions always pass their files"
        behaviour = self.behaviour(len(self.spawned) + self.missing)
        if behaviour.missing:
            self.missing += 1
            raise errors.ServerNotFound("X server '/nonexistent/Xfake' does not exist; install "
                                        "it (Debian: apt-get install xvfb) or name another.")
        server = FakeServer(self, FAKE_PIDS + len(self.spawned), files)
        self.spawned.append(server)
        self.servers[server.child.pidfd] = server
        spawned_at = self.clock.now
        files.save(state="starting", server_pid=server.pid, server_ticks=None, display=None)
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
            files.save(state="ready", display=server.display)
            return server
        facts: dict[str, Any] = {"server": "Xfake", "pid": server.pid,
                                 "elapsed": now - spawned_at, "stderr_tail": "fake: no"}
        if behaviour.exits_after is not None and now >= spawned_at + behaviour.exits_after:
            server.dies_at, server.status = now, 1
            yield from server.stop_steps()
            raise errors.ServerExited("exited with status 1 before it wrote a display number",
                                      **facts)
        yield from server.stop_steps()
        raise errors.ReadyTimeout(f"was not ready within the {settings.displayfd_timeout:g} s "
                                  "deadline", **facts)

    def _new_number(self) -> int:
        self.next_number += 1
        return self.next_number


class Stop(Exception):
    """What a driver throws into the steps to stop a session (as a signal or a cancel does)."""


class Run:
    """One session's steps, driven in simulated time."""

    def __init__(self, session: Session, clock: FakeClock, launcher: FakeLauncher) -> None:
        self.session, self.clock, self.launcher = session, clock, launcher
        self.steps = session.steps()
        self.pending: Wait | None = None  # the Wait the steps are suspended on
        self.sent: Any = None  # what to send them next
        self.ended = False
        self.error: BaseException | None = None  # what the steps ended with
        self.killed = False

    def __repr__(self) -> str:
        return f"<Run {self.session!r} at {self.clock.now:.3f} s>"

    def _next_event(self, wait: Wait) -> tuple[float, set[int]]:
        times = [wait.deadline] if wait.deadline is not None else []
        for fd in wait.fds:
            server = self.launcher.servers.get(fd)
            assert server is not None, f"the steps wait on fd {fd}, unknown to the fake world"
            if server.dies_at is not None:
                times.append(server.dies_at)
        when = max(min(times, default=math.inf), self.clock.now)
        return when, {fd for fd in wait.fds if self.launcher.servers[fd].dead_by(when)}

    def advance(self, until: float = math.inf, error: BaseException | None = None) -> bool:
        """Drive the steps until they end (True) or wait for something after ``until``
        (False; the clock is then at ``until``, if that is finite). ``error`` is thrown in
        first, as a driver does with a stop."""
        assert not self.ended and not self.killed, self
        while True:
            if self.pending is not None and error is None:
                when, ready = self._next_event(self.pending)
                if when > until:
                    if until != math.inf:
                        self.clock.now = max(self.clock.now, until)
                    return False
                self.clock.now, self.sent = when, ready
            try:
                if error is not None:
                    item, error = self.steps.throw(error), None
                else:
                    item = self.steps.send(self.sent)
            except StopIteration:
                raise AssertionError("a session's steps end only by raising") from None
            except BaseException as exc:  # noqa: BLE001 - how the steps end: kept for the test
                self.ended, self.error, self.pending = True, exc, None
                return True
            self.pending = None
            if isinstance(item, Offload):
                try:
                    self.sent = item.call()
                except BaseException as exc:  # noqa: BLE001 - handed to the steps
                    error = exc
                continue
            assert isinstance(item, Wait), item
            self.pending = item

    def finish(self) -> BaseException | None:
        """Drive until the steps end (they must, without outside help); what they raised."""
        assert self.advance(), f"{self} waits forever"
        return self.error

    def stop(self) -> BaseException | None:
        """Stop the session as a SIGTERM or a cancel does; what the steps raised."""
        assert self.advance(error=Stop()), f"{self} did not end when stopped"
        return self.error

    def kill(self) -> None:
        """SIGKILL the supervisor: nothing of its cleanup runs. Its start in flight, if any,
        stays in the ledger, and its record in the runtime directory, under a pid that is no
        longer it (as a dead supervisor's do)."""
        self.killed = True
        token = self.session.files.token
        with self.session.ledger.update() as history:
            if token in history.in_flight:
                history.in_flight[token]["ticks"] = -1  # not the process that started then
        record = self.session.files.record
        if record is not None:  # its files are left for crash recovery to find
            record.supervisor_ticks = -1
            record.save(self.session.runtime)
        for server in self.launcher.spawned:  # PR_SET_PDEATHSIG: its server dies with it
            if server.files is self.session.files and not server.dead_by(self.clock.now):
                server.dies_at = self.clock.now


class World:
    """A fake clock and launcher, and every session run against them."""

    def __init__(self, runtime: RuntimeDir, script: Sequence[Behaviour] | Callable[[int], Behaviour]
                 = (READY,), **settings: Any) -> None:
        self.runtime = runtime
        self.clock = FakeClock()
        self.settings = load_settings(settings)
        self.launcher = FakeLauncher(self.clock, self.settings, script)
        self.runs: list[Run] = []

    def session(self, name: str, mode: Mode, *, no_wait: bool = False,
                on_event: Callable[[Session, str], None] | None = None,
                number: int | None = None) -> Session:
        return Session(self.settings, self.runtime, number, name=name, mode=mode,
                       no_wait=no_wait, clock=self.clock, launcher=self.launcher,
                       **({"on_event": on_event} if on_event else {}))

    def run(self, session: Session) -> Run:
        run = Run(session, self.clock, self.launcher)
        self.runs.append(run)
        return run

    def ledger(self, name: str) -> Ledger:
        return Ledger(self.runtime, name)

    def close(self) -> None:
        """End every run that has not ended (closing a killed one's steps removes its files,
        as crash recovery would)."""
        for run in self.runs:
            if not run.ended:
                run.steps.close()
