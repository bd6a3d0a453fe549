"""One named display session, supervised: the restart policy applied to the launch path.

Its states and the one table that moves between them are in session/states.py (starting -> ready ->
backoff -> starting ... -> failed); who runs it (the CLI, a relauncher, the daemon) is its
``Mode`` there.
- Before every start the ledger is asked whether the restart budget allows it; if not, we
  wait (saying until when). A FAILED session either gives up (``Mode.gives_up_when_failed``)
  or waits for its cool-down.
- The first start is tried once unless ``Mode.retries_first_start`` (the daemon's configured
  sessions, which must come up by themselves): a failure is recorded and raised.
- Once a display has been ready, a dead server is restarted on the *same* number, with the
  same cookie, so that its clients can reconnect.

``Session.steps()`` is written as generator steps (see launch/process.py): ``xsupervise start``
drives it with poll(2), ``xsupervise serve`` runs many at once on an asyncio loop, tests run
it against a fake clock and launcher (tests/fakes.py). It never returns; it ends by raising:
StartError (first start), SessionFailed, or whatever its driver threw into it (a stop);
except a leased display's (``Mode.ends_with_its_server``), which returns when its server dies.
Before it ends, the server is stopped and reaped and the session's files are removed.

A session's restart budget: wait until the ledger allows a start, record a failed one.

Functions of a ``Session`` (``session/session.py``), kept apart so that the state machine's class
stays readable: they read and write its ledger, files and state (through ``transition``).
"""

from __future__ import annotations

from collections.abc import Callable

from ..host import log
from ..host.errors import EnvironmentProblem, SessionFailed, StartError
from ..host.paths import RuntimeDir
from ..launch.launcher import SessionFiles, launch_steps
from ..launch.process import Offload, Wait, describe_status, same_process
from ..launch.records import own_identity
from ..launch.settings import Settings
from . import policy
from .clock import SYSTEM_CLOCK, Clock, clock_time
from .ledger import Ledger
from .states import Event, Mode, State, transition

__all__ = ["Mode", "Session", "State", "clock_time"]

TYPE_CHECKING = False  # typing costs the CLI milliseconds to import: only for the checker
if TYPE_CHECKING:
    from ..launch.recording import Recording
    from .clock import LaunchedServer, Launcher, Steps


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
                    record_failure(self, str(error))
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
            policy.record_death(history, self.clock.wall(), self.policy, uptime, reason)
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
            policy.record_ready(history, self.files.token)
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
        from ..launch.server_output import quote  # for this line only: not on the start path

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
            policy.record_death(history, self.clock.wall(), self.policy, uptime, reason)
        self.files.save(last_failure=reason)
        self.on_event(self, Event.DIED)


def _recorder_ended(session: Session, recording: Recording) -> Steps[None]:
    """A recorder ended while its display lives: one line, never a restart (launch.recording)."""
    status = yield from recording.child.reap_steps(session.settings.kill_grace)
    if status != 0:  # (0: the display went away, and the server's end follows)
        session._log("error", "%s", recording.death_line(status))


def _record_stable(session: Session) -> None:
    """Up for ``reset_after``: the restart history forgets its failures (see session.policy)."""
    with session.ledger.update() as history:
        policy.record_stable(history)


_LEDGER_RECHECK = 1.0  # seconds: 'xsupervise reset' is noticed this fast by a waiting session


def await_budget(session: Session) -> Steps[None]:
    """Return when the ledger allows a start (and has noted it as in flight)."""
    announced = None
    give_up = session.mode.gives_up_when_failed(session.no_wait, session.ready_once)
    while True:
        now = session.clock.wall()
        with session.ledger.update() as history:
            decision = policy.may_start(history, now, session.policy, same_process)
            if decision.go:
                daemon = session.mode.kind == "daemon"
                policy.begin_start(history, now, session.files.token, *own_identity(), daemon)
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
                from ..launch.recovery import reclaim_abandoned

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


def record_failure(session: Session, reason: str) -> None:
    with session.ledger.update() as history:
        policy.record_failure(
            history, session.clock.wall(), session.policy, reason, token=session.files.token
        )
    session._go(Event.START_FAILED, last_failure=reason)
    session.last_failure = reason


def _failed_line(session: Session, history: policy.History, decision: policy.Decision) -> str:
    rules = session.policy
    return (
        f"session {session.name} is FAILED: {len(history.failures)} failed starts in "
        f"{rules.start_limit_interval:g} s (limit {rules.start_limit_burst}), FAILED since "
        f"{clock_time(history.failed_at)}; next try allowed at {clock_time(decision.until)}. "
        f"Last failure: {decision.reason or '(unknown)'} Fix the cause, then run "
        f"'xsupervise reset {session.name}' to try at once."
    )
