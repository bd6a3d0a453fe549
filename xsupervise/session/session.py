"""One named display session, supervised: the restart policy applied to the launch path.

Its states and the one table that moves between them are below (starting -> ready ->
backoff -> starting ... -> failed); who runs it (the CLI, a relauncher, the daemon) is its
``Mode``.
- Before every start the ledger is asked whether the restart budget allows it; if not, we
  wait (saying until when). A FAILED session either gives up (``Mode.gives_up_when_failed``)
  or waits for its cool-down.
- The first start is tried once unless ``Mode.retries_first_start`` (the daemon's configured
  sessions, which must come up by themselves): a failure is recorded and raised.
- Once a display has been ready, a dead server is restarted on the *same* number, with the
  same cookie, so that its clients can reconnect.

``Session.steps()`` is written as generator steps (see host/processes.py): ``xsupervise start``
drives it with poll(2), ``xsupervise serve`` runs many at once on an asyncio loop, tests run
it against a fake clock and launcher (tests/fakes.py). It never returns; it ends by raising:
StartError (first start), SessionFailed, or whatever its driver threw into it (a stop);
except a leased display's (``Mode.ends_with_its_server``), which returns when its server dies.
Before it ends, the server is stopped and reaped and the session's files are removed.

In order: the states and the one transition table; the seams (clock, launcher) that tests
replace; ``Session``; its restart budget (wait until the ledger allows a start, record a
failed one); the restart policy (pure functions of the history); the ledger that keeps the
history on disk.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import time
from collections.abc import Callable, Iterator

from ..host import log
from ..host.errors import EnvironmentProblem, SessionFailed, StartError
from ..host.paths import (
    RuntimeDir,
    ensure_private_dir,
    lock_file,
    remove_file,
    write_private_file,
)
from ..launch.launcher import launch_steps
from ..launch.process import Offload, Wait, describe_status, same_process
from ..launch.server import SessionFiles, own_identity
from ..launch.settings import RestartPolicy, Settings

TYPE_CHECKING = False  # typing costs the CLI milliseconds to import: only for the checker
if TYPE_CHECKING:
    from typing import Any, ClassVar, NotRequired, TypedDict

    class InFlight(TypedDict):
        pid: int
        ticks: int | None
        at: float
        daemon: NotRequired[bool]  # started by xsupervise serve (see may_start)

    from collections.abc import Generator
    from typing import Protocol, TypeVar

    from ..host.paths import RuntimeDir
    from ..launch.process import Offload, Wait
    from ..launch.server import SessionFiles
    from ..launch.settings import Settings
    from ..launch.x11 import ServerFacts

    T = TypeVar("T")
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

    from ..launch.recording import Recording


# --- states --------------------------------------------------------------------------------------
# A session's states, the events that move it, the one transition table, and its modes.
#
# ``Session`` runs the steps; this table says what they may do. ``State`` is a
# ``StrEnum``, so that records on disk, JSON replies and log fields keep the plain strings
# ("ready", "backoff"...) and ``State.READY == "ready"``.


class State(enum.StrEnum):
    STARTING = "starting"  # launching an X server (or about to ask the budget for the first)
    READY = "ready"  # a verified server runs; watching it
    BACKOFF = "backoff"  # a start failed or the server died: waiting for the next start
    FAILED = "failed"  # the start limit was reached: cooling down, or giving up
    STOPPING = "stopping"  # stopping the server, then the session ends
    # Never a live session's: a record's, once its supervisor has died (list/status show it,
    # the next start clears it; see session.local_ops).
    ABANDONED = "abandoned"


class Event(enum.Enum):
    START = "start"  # the budget allows a start: launch
    BACKOFF = "backoff"  # the budget says wait (backoff) before the next start
    COOL_DOWN = "cool-down"  # the budget says FAILED: wait for the cool-down
    GIVE_UP = "give-up"  # the budget says FAILED and this session does not wait: it ends
    VERIFIED = "verified"  # the server was launched and verified ready
    START_FAILED = "start-failed"  # the launch failed (and was counted against the budget)
    DIED = "died"  # the ready server died
    STOP = "stop"  # a stop (or an error) while a server runs: stop it, then end
    ENDED = "ended"  # the session's steps are over, however they ended (told, not a transition)


_S, _R, _B, _F = State.STARTING, State.READY, State.BACKOFF, State.FAILED
# The table of ``transition``'s docstring (a test checks that the two agree).
_NEXT: dict[State, dict[Event, State]] = {
    State.STARTING: {
        Event.START: _S,
        Event.BACKOFF: _B,
        Event.COOL_DOWN: _F,
        Event.GIVE_UP: _F,
        Event.VERIFIED: _R,
        Event.START_FAILED: _B,
    },
    State.BACKOFF: {Event.START: _S, Event.BACKOFF: _B, Event.COOL_DOWN: _F, Event.GIVE_UP: _F},
    State.FAILED: {Event.START: _S, Event.BACKOFF: _B, Event.COOL_DOWN: _F, Event.GIVE_UP: _F},
    State.READY: {Event.DIED: _B, Event.STOP: State.STOPPING},
    State.STOPPING: {},
    State.ABANDONED: {},
}


class ImpossibleTransition(RuntimeError):
    """A bug: the session did something its table does not allow."""


def transition(state: State, event: Event) -> State:
    """The state after ``event`` in ``state``; an impossible pair raises ImpossibleTransition.

    ::

        state/event START    BACKOFF COOL_DOWN GIVE_UP VERIFIED START_FAILED DIED    STOP     ENDED
        starting    starting backoff failed    failed  ready    backoff      -       -        -
        ready       -        -       -         -       -        -            backoff stopping -
        backoff     starting backoff failed    failed  -        -            -       -        -
        failed      starting backoff failed    failed  -        -            -       -        -
        stopping    -        -       -         -       -        -            -       -        -
        abandoned   -        -       -         -       -        -            -       -        -

    - A session is born ``starting`` and asks the budget (ledger + policy) before each start:
      START launches; BACKOFF / COOL_DOWN wait (asked again at least every second, so a
      ``reset`` is seen); GIVE_UP ends the session with SessionFailed.
    - From ``ready`` only the server's death (DIED) or a stop leaves: a death goes through
      ``backoff`` even when the policy lets it restart at once (it proved itself).
    - ENDED is told (``on_event``) when the steps are over, however they ended; it moves
      no state.
    - A stop while no server runs (starting, backoff, failed) is no transition: the launch
      path cleans up after itself, and the steps end in the state they were in. ``stopping``
      is final: the steps end once the server is reaped.
    """
    try:
        return _NEXT[state][event]
    except KeyError:
        raise ImpossibleTransition(
            f"a session cannot go from {state.value} on {event.name}; this is a bug in xsupervise."
        ) from None


class PoolState(enum.StrEnum):
    """A warm pool's state, derived from its spares' (see daemon.pool.Pool.state)."""

    READY = "ready"  # every spare is ready
    REFILLING = "refilling"  # some spare is starting
    FAILED = "failed"  # a spare's budget is spent: the pool is cooling down
    STOPPED = "stopped"  # the daemon is stopping it


class Mode(enum.Enum):
    """Who runs a session, which decides how it treats failures.

    Separate from ``--no-wait`` (``Session(no_wait=True)``): a session that must not wait
    out a FAILED budget, in any mode.
    """

    CLI = "cli"  # xsupervise start / run, in the foreground
    RELAUNCHED = "relaunched"  # start / run --relaunched: a relauncher restarts us on every exit
    DAEMON_CONFIGURED = "daemon-configured"  # a [session.NAME] in the daemon's config
    DAEMON_REQUESTED = "daemon-requested"  # a `start` op sent to the daemon
    DAEMON_POOL = "daemon-pool"  # a spare display of a [pool.NAME]
    DAEMON_LEASED = "daemon-leased"  # a pool's display handed to a lessee: theirs now

    @property
    def kind(self) -> str:
        """What the session's record says started it: "cli" or "daemon"."""
        return "cli" if self in (Mode.CLI, Mode.RELAUNCHED) else "daemon"

    @property
    def ends_with_its_server(self) -> bool:
        """Its server's death ends the session, counted in no budget: a leased display
        belongs to its lessee, and what the lessee does to it (a GUI test that crashes its
        X server) says nothing about whether the pool can make spares. The lessee is told."""
        return self is Mode.DAEMON_LEASED

    @property
    def restarts_on_its_number(self) -> bool:
        """A dead server is restarted on the same display number, so that its clients can
        reconnect. Not a pool's spare: no client knows its number yet, and the number its
        death freed may be taken by another spare meanwhile (a restart on it would then fail
        again and again, spending the pool's budget until the pool is FAILED)."""
        return self is not Mode.DAEMON_POOL

    @property
    def retries_first_start(self) -> bool:
        """A failed first start is retried by the policy, not raised; and once ready, a FAILED
        budget is waited out rather than ending the session. A configured session must come
        up by itself (a mount or package may not be there yet at boot); so must a pool's
        spares, which are refilled under the pool name's budget."""
        return self in (Mode.DAEMON_CONFIGURED, Mode.DAEMON_POOL)

    @property
    def reclaims(self) -> bool:
        """Clears what killed supervisors left, itself (blocking for up to twice the kill
        grace); the daemon does that in a thread of its own instead."""
        return self in (Mode.CLI, Mode.RELAUNCHED)

    @property
    def counts_environment_problems(self) -> bool:
        """E.g. a missing server binary spends the budget even though it ends the session:
        something restarts us whenever we exit, so every exit must count."""
        return self is Mode.RELAUNCHED

    @property
    def counts_app_failures(self) -> bool:
        """A COMMAND that fails on the display spends the budget like a death of the server:
        the relauncher would otherwise restart it, with a fresh X server, at once."""
        return self is Mode.RELAUNCHED

    def counts_failed_start(self, crashed: bool) -> bool:
        """Whether a failed start spends the budget: a server that did not become ready
        (StartError) always; an EnvironmentProblem (e.g. no such server binary) only where it
        is retried, or where every exit of ours is followed by a relaunch."""
        return crashed or self.retries_first_start or self.counts_environment_problems

    def retries_failed_start(self, crashed: bool, first: bool) -> bool:
        """Whether a failed start is retried by the policy, rather than ending the session with
        its error: a restart's (a display was ready), and every one of a configured daemon
        session, which retries by the policy, and says so, rather than giving up because a
        mount or package was not there yet at boot. The CLI reports an EnvironmentProblem
        (exit 5) and a failed first start (exit 3 or 4) at once."""
        return self.retries_first_start or (crashed and not first)

    def gives_up_when_failed(self, no_wait: bool, ready_once: bool) -> bool:
        """Whether a FAILED budget ends the session (SessionFailed) rather than waiting out the
        cool-down: with --no-wait; or, except for a configured daemon session, once its display
        has been ready (restarts that reach the start limit end a CLI session with exit 7).
        A session not yet ready waits (unless --no-wait)."""
        return no_wait or (ready_once and not self.retries_first_start)


# --- the seams: clock and launcher ---------------------------------------------------------------
# The seams of a session: its clock and its launcher, so that tests can pass fake ones.
#
# - ``Clock.wall()``: seconds since the epoch (time.time()). The ledger and the records keep
#   wall times, since they outlive the process that wrote them.
# - ``Clock.monotonic()``: seconds on a clock that never jumps (time.monotonic()). Uptimes and
#   the deadlines of the ``Wait``s a session yields; the real drivers (``run_blocking``,
#   ``host.processes.run_steps``) wait on time.monotonic(), so a fake clock needs a fake driver too
#   (tests/fakes.py).
# - ``Launcher``: what spawns and verifies a server (``launch.launcher.launch_steps``), returning a
#   ``LaunchedServer`` (``launch.server.XServer``). These two are interfaces for the type checker
#   only (importing typing costs the CLI milliseconds).


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


def _ignore(_session: Session, _event: Event) -> None:
    pass


class Session:
    """The state of one session and the steps that run it.

    ``on_event(session, event)`` is called as things happen, with the ``Event`` that moved
    it: VERIFIED (ready; ``restarts`` says whether for the first time), BACKOFF or COOL_DOWN
    (waiting, see ``next_retry_at``), DIED, START_FAILED. It may raise to end the session
    (the server is stopped first).
    ``no_wait``: a FAILED budget ends the session rather than waiting, whatever the mode."""

    def __init__(
        self,
        settings: Settings,
        runtime: RuntimeDir,
        number: int | None,
        *,
        name: str,
        mode: Mode,
        no_wait: bool = False,
        on_event: Callable[[Session, Event], None] = _ignore,
        clock: Clock = SYSTEM_CLOCK,
        launcher: Launcher = launch_steps,
    ) -> None:
        self.settings = settings
        self.policy = settings.policy()
        self.runtime = runtime
        self.number = number
        self.name = name
        self.mode = mode
        self.no_wait = no_wait
        self.on_event = on_event
        self.clock = clock
        self.launcher = launcher
        self.ledger = Ledger(runtime, name)
        self.files = SessionFiles(runtime, name, mode.kind)
        self.server: LaunchedServer | None = None
        self.state = State.STARTING
        self.restarts = 0
        self.ready_once = False
        self.next_retry_at: float | None = None
        self.last_failure: str | None = None
        self.ready_at = 0.0  # clock.monotonic() of the last ready

    def __repr__(self) -> str:
        return f"<Session {self.name} {self.display or '-'} {self.state}>"

    @property
    def display(self) -> str | None:
        return f":{self.number}" if self.number is not None else None

    def log_fields(self) -> dict[str, object]:
        """Structured fields for the journal (see host/log.py)."""
        return {
            "SESSION": self.name,
            "DISPLAY": self.display or "",
            "SERVER_PID": self.server.pid if self.server else "",
            "STATE": str(self.state),
        }

    def _log(self, level: str, message: str, *args: object) -> None:
        getattr(log.get(), level)(message, *args, extra=self.log_fields())

    def _go(self, event: Event, **record: object) -> None:
        """The one way a session's state changes: by the table; its record says so at once
        (with ``record``'s other fields, in one write). The state changes first: a write that
        fails (a full disk) raises with the session already where the table put it."""
        self.state = transition(self.state, event)
        self.files.save(state=self.state, **record)

    # -- the session -------------------------------------------------------------------
    def steps(self) -> Steps[None]:
        try:
            server = yield from self._start(first=True)
            while True:
                yield from self._watch(server)
                if self.mode.ends_with_its_server:  # a leased display: over (see Mode)
                    return
                if not self.mode.restarts_on_its_number:  # a spare: any free number
                    self.number = None
                server = yield from self._start(first=False)
        except GeneratorExit:
            if self.server is not None:  # closed by a driver that can no longer wait
                self.server.kill_now()
            raise
        except BaseException:
            if self.server is not None:
                try:
                    self._go(Event.STOP)
                finally:  # even if the record cannot be written: the server must not outlive us
                    yield from self.server.stop_steps()
            raise
        finally:
            self.server = None
            self.files.remove()
            self.ledger.prune()  # a clean history leaves no files behind (issue 15)

    def _start(self, first: bool) -> Steps[LaunchedServer]:
        while True:
            yield from await_budget(self)
            try:
                server = yield from self._launch()
            except (StartError, EnvironmentProblem) as error:
                crashed = isinstance(error, StartError)  # else e.g. no such server binary
                if self.mode.counts_failed_start(crashed):
                    _record_failed_start(self, str(error))
                if not self.mode.retries_failed_start(crashed, first):
                    raise
                self._log("warning", "%s", error)  # a failed start: retried
                self.on_event(self, Event.START_FAILED)
                continue
            if self.ready_once:
                self.restarts += 1
                self.files.save(restarts=self.restarts)
                self._log(
                    "warning",
                    "X server restarted on %s (pid %d, restart %d).",
                    server.display,
                    server.pid,
                    self.restarts,
                )
                self.on_event(self, Event.VERIFIED)  # again: see self.restarts
            else:
                self.ready_once = True
                self._log(
                    "info", "display %s is ready (X server pid %d).", server.display, server.pid
                )
                self.on_event(self, Event.VERIFIED)
            return server

    def record_app_failure(self, reason: str) -> None:
        """What runs on the display failed: count it like a death of the server (a failure
        before ``reset_after`` s of uptime, a fresh start after), so the next start waits."""
        uptime = self.clock.monotonic() - self.ready_at
        with self.ledger.update() as history:
            record_death(history, self.clock.wall(), self.policy, uptime, reason)
        self.last_failure = reason

    # -- starting and watching ---------------------------------------------------------
    def _launch(self) -> Steps[LaunchedServer]:
        self.server = None
        self._go(Event.START)
        try:
            server = yield from self.launcher(
                self.settings,
                self.runtime,
                self.number,
                files=self.files,
                kind=self.mode.kind,
                reclaim=self.mode.reclaims,
            )
        except StartError:
            raise  # the caller records it as the failure it is
        except BaseException:
            # A stop, or e.g. a missing server binary: not a crash of the server.
            with self.ledger.update() as history:
                history.in_flight.pop(self.files.token, None)
            raise
        self.server = server
        self.number = server.number  # restarts ask for the same number
        self._go(Event.VERIFIED, ready_at=self.clock.wall(), next_retry_at=None)
        self.ready_at = self.clock.monotonic()
        with self.ledger.update() as history:
            record_ready(history, self.files.token)
        return server

    def _watch(self, server: LaunchedServer) -> Steps[None]:
        """Return when the server has died (after recording it)."""
        stable_at: float | None = self.ready_at + self.policy.reset_after
        wm = getattr(server, "wm", None)  # the wm setting's window manager goes with its display
        watched = (server.child.pidfd,) if wm is None else (server.child.pidfd, wm.pidfd)
        recording = getattr(server, "recording", None)  # its end is reported, not restarted
        while True:
            extra = (recording.pidfd,) if recording is not None else ()
            ready = yield Wait(watched + extra, stable_at)
            if recording is not None and ready == set(extra):
                yield from _recorder_ended(self, recording)
                recording = None
                continue
            if ready:
                break
            if stable_at is not None and self.clock.monotonic() >= stable_at:
                _record_stable(self)
                stable_at = None
        # Not reaped first: stop_steps still sees the group and SIGKILLs whatever the server
        # left in it, then reaps it and removes the socket file it may have left.
        status = yield from server.stop_steps()
        uptime = self.clock.monotonic() - self.ready_at
        from ..launch.server import quote  # for this line only: not on the start path

        reason = (
            f"X server {server.display} (pid {server.pid}) {describe_status(status)} after "
            f"{uptime:.1f} s up. {quote('It', server.output_reason, server.output_tail)}"
        )
        if wm is not None and server.child.pidfd not in ready:  # the wm ended: restart both
            reason = (
                f"window manager {wm.argv[0]} (pid {wm.pid}) {describe_status(wm.returncode)} "
                f"on {server.display} after {uptime:.1f} s; its display is restarted with it."
            )
        self.server = None  # stopped and reaped: nothing is left to stop if the write fails
        self.last_failure = reason
        self._go(Event.DIED)
        if self.mode.ends_with_its_server:
            self._log("warning", "%s (a leased display: its lessee is told)", reason)
            return
        self._log("error", "%s", reason)
        with self.ledger.update() as history:
            record_death(history, self.clock.wall(), self.policy, uptime, reason)
        self.files.save(last_failure=reason)
        self.on_event(self, Event.DIED)


def _recorder_ended(session: Session, recording: Recording) -> Steps[None]:
    """A recorder ended while its display lives: one line, never a restart (launch.recording)."""
    status = yield from recording.child.reap_steps(session.settings.kill_grace)
    if status != 0:  # (0: the display went away, and the server's end follows)
        session._log("error", "%s", recording.death_line(status))


def _record_stable(session: Session) -> None:
    """Up for ``reset_after``: the restart history forgets its failures (see record_stable)."""
    with session.ledger.update() as history:
        record_stable(history)


# --- the restart budget: a Session's starts, asked of and written to its ledger ------------------
_LEDGER_RECHECK = 1.0  # seconds: 'xsupervise reset' is noticed this fast by a waiting session


def await_budget(session: Session) -> Steps[None]:
    """Return when the ledger allows a start (and has noted it as in flight)."""
    announced = None
    give_up = session.mode.gives_up_when_failed(session.no_wait, session.ready_once)
    while True:
        now = session.clock.wall()
        with session.ledger.update() as history:
            decision = may_start(history, now, session.policy, same_process)
            if decision.go:
                daemon = session.mode.kind == "daemon"
                begin_start(history, now, session.files.token, *own_identity(), daemon)
                session.next_retry_at = None
                return
        if decision.state == State.FAILED and give_up:
            session._go(Event.GIVE_UP)
            raise SessionFailed(_failed_line(session, history, decision))
        if (decision.state, decision.until) != announced:
            if announced is None and session.mode.reclaims:
                # A start that goes ahead reclaims what killed supervisors left, once its
                # server is spawned; one that waits must do it now, or every supervisor
                # a relauncher kills while it waits would leave its files.
                from ..launch.server import reclaim_abandoned

                yield Offload(reclaim_abandoned, session.runtime, session.settings.kill_grace)
            announced = (decision.state, decision.until)
            waiting = Event.COOL_DOWN if decision.state == State.FAILED else Event.BACKOFF
            session._go(waiting, next_retry_at=decision.until, last_failure=decision.reason)
            session.next_retry_at = decision.until
            session.last_failure = decision.reason or session.last_failure
            what = "FAILED, cooling down" if session.state == State.FAILED else "backing off"
            session._log(
                "warning",
                "session %s is %s: next start at %s (in %.2f s). Last failure: %s",
                session.name,
                what,
                clock_time(decision.until),
                decision.until - now,
                decision.reason or "(none)",
            )
            session.on_event(session, waiting)
        # Ask the ledger again at least every second: 'xsupervise reset' may have cleared it.
        wake_at = min(decision.until, now + _LEDGER_RECHECK)
        yield Wait((), session.clock.monotonic() + max(0.0, wake_at - session.clock.wall()))


def _record_failed_start(session: Session, reason: str) -> None:
    with session.ledger.update() as history:
        record_failure(
            history, session.clock.wall(), session.policy, reason, token=session.files.token
        )
    session._go(Event.START_FAILED, last_failure=reason)
    session.last_failure = reason


def _failed_line(session: Session, history: History, decision: Decision) -> str:
    rules = session.policy
    return (
        f"session {session.name} is FAILED: {len(history.failures)} failed starts in "
        f"{rules.start_limit_interval:g} s (limit {rules.start_limit_burst}), FAILED since "
        f"{clock_time(history.failed_at)}; next try allowed at {clock_time(decision.until)}. "
        f"Last failure: {decision.reason or '(unknown)'} Fix the cause, then run "
        f"'xsupervise reset {session.name}' to try at once."
    )


# --- the restart policy --------------------------------------------------------------------------
# Restart policy: pure functions of the restart history and the clock. No processes here.
#
# - Backoff: the n-th consecutive failure makes the next start wait ``initial * 2**(n-1)``,
#   capped at ``max_delay``, times a jitter factor in [0.5, 1] (so that many sessions failing
#   together do not retry in lock-step). A server that was up ``reset_after`` seconds has
#   proven itself: the count starts again and its restart is immediate.
# - Start limit: more than ``burst`` failed starts within ``interval`` seconds puts the session
#   in FAILED. A FAILED session gets one new try after ``cooldown``; if that fails, it is
#   FAILED again at once.
#
# Every start is counted as a failure *before* it is made, and cleared only when it succeeds:
# so a supervisor killed in the middle of a start (by a relauncher's timeout) still spends
# its budget, and nothing that restarts xsupervise can turn into a storm.


class History:
    """The restart history of one session name, as kept in the ledger (plain, JSON-ready data).

    Several sessions may share a name (parallel `xsupervise run`s share the default one): they
    share its budget, and each start in flight is listed under its session's token.
    """

    FIELDS: ClassVar[dict[str, Any]] = {
        "failures": [],  # wall times of failed starts, newest last, pruned to the window
        "in_a_row": 0,  # consecutive failed starts since a server last proved itself
        "next_start_at": 0.0,  # no start before this wall time
        "failed_at": None,  # FAILED since this wall time, or None
        "on_probation": False,  # the one try after a cool-down: a failure is FAILED at once
        "last_failure": None,  # one line: what went wrong last
        "in_flight": {},  # token -> {"pid", "ticks", "at"}: starts not known to succeed yet
        "starts": 0,  # every start made under this name since the last reset
        "name": None,  # the session name (the file name may have been sanitised)
    }
    __slots__ = tuple(FIELDS)
    failures: list[float]
    in_a_row: int
    next_start_at: float
    failed_at: float | None
    on_probation: bool
    last_failure: str | None
    in_flight: dict[str, InFlight]
    starts: int
    name: str | None

    def __init__(self, **values: Any) -> None:
        for name, default in self.FIELDS.items():
            value = values.get(name, default)
            copied = type(default)(value) if isinstance(default, list | dict) else value
            setattr(self, name, copied)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}

    def failed_until(self, policy: RestartPolicy) -> float | None:
        return None if self.failed_at is None else self.failed_at + policy.failed_cooldown


class Decision:
    """What ``may_start`` answers: go now, or not before ``until`` (and why)."""

    __slots__ = ("go", "until", "state", "reason")

    def __init__(
        self, go: bool, until: float = 0.0, state: State | None = None, reason: str = ""
    ) -> None:
        self.go, self.until, self.state, self.reason = go, until, state, reason

    def __repr__(self) -> str:
        return "Decision(go)" if self.go else f"Decision({self.state} until {self.until:.1f})"


def record_failure(
    history: History,
    now: float,
    policy: RestartPolicy,
    reason: str,
    *,
    token: str | None = None,
    at: float | None = None,
    jitter: Callable[[], float] | None = None,
) -> None:
    """A start failed, or a server died before it proved itself."""
    if token is not None:
        history.in_flight.pop(token, None)
    history.in_a_row += 1
    history.failures.append(now if at is None else at)
    history.failures = [t for t in history.failures if t > now - policy.start_limit_interval]
    history.last_failure = reason
    history.next_start_at = max(history.next_start_at, now + policy.delay(history.in_a_row, jitter))
    if history.on_probation or len(history.failures) > policy.start_limit_burst:
        history.failed_at = now
        history.on_probation = False


def may_start(
    history: History,
    now: float,
    policy: RestartPolicy,
    supervisor_alive: Callable[[int, int | None], bool],
    jitter: Callable[[], float] | None = None,
) -> Decision:
    """Whether a start may happen now.

    A start left in flight by a supervisor that is gone (killed by a relauncher's timeout,
    say) counts as the failure it was: that is what keeps relaunchers from storming. Except
    a daemon's: the daemon bounds every start by its own timeout and records how it went,
    so a start it left in flight was cut short by the daemon's death (systemd's restart of
    it, an OOM kill), not failed by its X server; it counts as nothing.
    """
    for token, start in list(history.in_flight.items()):
        if supervisor_alive(start["pid"], start["ticks"]):
            continue
        if start.get("daemon"):
            history.in_flight.pop(token)
        else:
            record_failure(
                history,
                now,
                policy,
                f"supervisor pid {start['pid']} was killed while starting its X server",
                token=token,
                at=start["at"],
                jitter=jitter,
            )
    if history.failed_at is not None:
        until = history.failed_at + policy.failed_cooldown
        if now < until:
            return Decision(False, until, State.FAILED, history.last_failure or "")
        # The cool-down is over: one new try, on probation. Everyone else sharing the name
        # waits (another cool-down at most) until that try is ready or has failed.
        history.failed_at = None
        history.on_probation = True
        history.failures = []
        history.next_start_at = now + policy.failed_cooldown
        return Decision(True)
    if now < history.next_start_at:
        return Decision(False, history.next_start_at, State.BACKOFF, history.last_failure or "")
    return Decision(True)


def begin_start(
    history: History, now: float, token: str, pid: int, ticks: int | None, daemon: bool = False
) -> None:
    history.in_flight[token] = {"pid": pid, "ticks": ticks, "at": now}
    if daemon:
        history.in_flight[token]["daemon"] = True
    history.starts += 1


def record_handed_over(history: History) -> None:
    """A pool's spare was handed to a lessee: spares can be made, and live until used. The
    consecutive count (the backoff) starts again; the start limit still counts the failures
    in its window, so spares that die soon after every start still make the pool FAILED."""
    if history.failed_at is None and not history.on_probation:
        history.in_a_row = 0
        history.next_start_at = 0.0


def record_ready(history: History, token: str) -> None:
    history.in_flight.pop(token, None)
    if history.on_probation:  # the try after a cool-down worked: others may start again
        history.on_probation = False
        history.next_start_at = 0.0


def record_stable(history: History) -> None:
    """A server stayed up ``reset_after``: it has proven itself; forget the failures."""
    history.in_a_row = 0
    history.failures = []
    history.on_probation = False
    history.failed_at = None
    history.next_start_at = 0.0


def record_death(
    history: History,
    now: float,
    policy: RestartPolicy,
    uptime: float,
    reason: str,
    jitter: Callable[[], float] | None = None,
) -> None:
    """A ready server died. After a stable run it restarts at once; before, it is a failure."""
    if uptime >= policy.reset_after:
        record_stable(history)
        history.last_failure = reason
    else:
        record_failure(history, now, policy, reason, jitter=jitter)


# --- the ledger ----------------------------------------------------------------------------------
# The restart ledger: each session name's history on disk, read and written under a lock.
#
# One file per name in ``<runtime>/ledger/``; a separate ``.lock`` file is held with flock(2)
# for each read-modify-write, so concurrent supervisors (and relaunched ones) see one history.
# flock is released by the kernel when a holder dies, so a SIGKILL cannot wedge it.
#
# A name's files outlive its sessions only while its history holds something: a start in
# flight, failures, a backoff, FAILED, probation. A session's end (``prune``) removes both files
# otherwise (under the lock), so any number of clean sessions leaves O(1) files (the ``starts``
# count then begins again). Whoever locked the removed lock file's inode notices (it is no
# longer the file at that path) and locks afresh.

_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:@+")


def file_name(name: str) -> str:
    """A session name as a file name: unsafe characters become '_', never a path; a name that
    had to be changed gets a checksum of the original, so that two names never share a file."""
    cleaned = ("".join(char if char in _SAFE else "_" for char in name)[:100]).lstrip(".")
    if cleaned == name:
        return cleaned
    import zlib

    return f"{cleaned or '_'}-{zlib.crc32(name.encode()) & 0xFFFFFFFF:08x}"


class Ledger:
    def __init__(self, runtime: RuntimeDir, name: str):
        self.name = name
        self.directory = os.path.join(runtime.path, "ledger")
        base = os.path.join(self.directory, file_name(name))
        self.path = base + ".json"
        self.lock_path = base + ".lock"

    def __repr__(self) -> str:
        return f"<Ledger {self.name!r} at {self.path}>"

    @contextlib.contextmanager
    def update(self) -> Iterator[History]:
        """Hold the lock, yield the history, write it back if the block ends normally."""
        fd = self._lock()
        try:
            history = self._read()
            history.name = self.name
            yield history
            write_private_file(self.path, json.dumps(history.as_dict()).encode())
        finally:
            os.close(fd)  # releases the lock

    def prune(self) -> None:
        """At a session's end: remove the name's files if its history holds nothing (no
        failure history, nothing in flight). Never raises: it runs in a teardown."""
        if not os.path.exists(self.lock_path):
            return
        try:
            fd = self._lock()
            try:
                if holds_nothing(self._read()):
                    self._remove_locked()
            finally:
                os.close(fd)
        except OSError:
            pass

    def _lock(self) -> int:
        """Open and flock the lock file; returns its fd. Retries when the file we locked was
        removed (or replaced) meanwhile by a holder that found the history empty."""
        ensure_private_dir(self.directory)
        return lock_file(self.lock_path)

    def _remove_locked(self) -> None:
        """Remove the history and then the lock file, holding the lock."""
        remove_file(self.path)
        remove_file(self.lock_path)

    def read(self) -> History:
        """A snapshot, without the lock (for `status`)."""
        return self._read()

    def _read(self) -> History:
        return read_history(self.path)

    def reset(self) -> bool:
        """Forget the history; True if there was one."""
        fd = self._lock()
        try:
            existed = os.path.exists(self.path)
            self._remove_locked()
        finally:
            os.close(fd)
        return existed


def holds_nothing(history: History) -> bool:
    """No failure history, nothing in flight: nothing a later start would need to know."""
    return not (
        history.in_flight
        or history.failures
        or history.in_a_row
        or history.failed_at is not None
        or history.on_probation
        or history.next_start_at
    )


def read_history(path: str) -> History:
    """The history in a ledger file; a missing, torn or foreign file reads as a fresh one."""
    try:
        with open(path, "rb") as stream:
            data = json.load(stream)
        return History(**{key: value for key, value in data.items() if key in History.FIELDS})
    except (OSError, ValueError, TypeError):
        return History()


def all_ledgers(runtime: RuntimeDir) -> list[str]:
    """Paths of every ledger file (for `status`)."""
    directory = os.path.join(runtime.path, "ledger")
    try:
        return sorted(
            os.path.join(directory, name)
            for name in os.listdir(directory)
            if name.endswith(".json")
        )
    except FileNotFoundError:
        return []
