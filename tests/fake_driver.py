"""A session in simulated time: a driver for its steps, and a World to make sessions in.

    world = worlds([READY, dies(0.5)])      # the fixture: a World on a tmpfs runtime directory
    run = world.run(world.session("name", Mode.CLI))
    run.advance(until=60.0)        # simulated seconds; returns True once the steps ended

The driver answers the ``Wait``s a session yields by moving the fake clock: to the Wait's
deadline, or to the moment a watched fake server is scripted to die (its "pidfd" is a number
only this driver knows). An ``Offload`` is called inline, as ``run_blocking`` does. The
ledger, the records and the session's files are the real ones, in a real runtime directory:
they are cheap, and what the tests check.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from fakes import READY, Behaviour, FakeClock, FakeLauncher

from xsupervise.host.paths import RuntimeDir
from xsupervise.launch.process import Offload, Wait
from xsupervise.launch.settings import load_settings
from xsupervise.session.session import Event, Ledger, Mode, Session


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
                # Only a leased display's steps return (when its server died): issue 20.
                assert self.session.mode.ends_with_its_server, "steps end only by raising"
                self.ended, self.pending = True, None
                return True
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
        """Drive until the steps end (they must, by themselves); what they raised."""
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

    def __init__(
        self,
        runtime: RuntimeDir,
        script: Sequence[Behaviour] | Callable[[int], Behaviour] = (READY,),
        **settings: Any,
    ) -> None:
        self.runtime = runtime
        self.clock = FakeClock()
        self.settings = load_settings(settings)
        self.launcher = FakeLauncher(self.clock, self.settings, script)
        self.runs: list[Run] = []

    def session(
        self,
        name: str,
        mode: Mode,
        *,
        no_wait: bool = False,
        on_event: Callable[[Session, Event], None] | None = None,
        number: int | None = None,
    ) -> Session:
        return Session(
            self.settings,
            self.runtime,
            number,
            name=name,
            mode=mode,
            no_wait=no_wait,
            clock=self.clock,
            launcher=self.launcher,
            **({"on_event": on_event} if on_event else {}),
        )

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


@pytest.fixture(name="worlds")
def worlds_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., World]]:
    """Make Worlds on a tmpfs runtime directory when there is one (XDG_RUNTIME_DIR is one on
    a real system; disk renames would cost most of a test's time); check no file is left."""
    base = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    monkeypatch.setenv("XDG_RUNTIME_DIR", base)
    made: list[World] = []

    def make(script: Any = (READY,), **settings: Any) -> World:
        made.append(World(RuntimeDir.discover(), script, **settings))
        return made[-1]

    try:
        yield make
        for world in made:
            world.close()
        sessions = os.path.join(base, "xsupervise", "sessions")
        assert not os.path.exists(sessions) or os.listdir(sessions) == []
    finally:
        for world in made:
            world.close()
        shutil.rmtree(base)
