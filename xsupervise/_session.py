"""One named display session, supervised: the restart policy applied to the launch path.

States: starting -> ready -> (server died) backoff -> starting -> ready ... -> failed.
- Before every start the ledger is asked whether the restart budget allows it; if not, we
  wait (saying until when). A FAILED session either gives up (``give_up_when_failed``: the
  CLI's restarts, or ``--no-wait``) or waits for its cool-down (the daemon).
- The first start is tried once unless ``retry_first_start`` (the daemon's configured
  sessions, which must come up by themselves): a failure is recorded and raised.
- Once a display has been ready, a dead server is restarted on the *same* number, with the
  same cookie, so that its clients can reconnect.

``Session.steps()`` is written as generator steps (see _process.py): ``xsupervise start``
drives it with poll(2), ``xsupervise serve`` runs many at once on an asyncio loop. It never
returns; it ends by raising: StartError (first start), SessionFailed, or whatever its driver
threw into it (a stop). Before it ends, the server is stopped and reaped and the session's
files are removed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from . import _log as log, _policy as policy
from ._settings import Settings
from ._errors import EnvironmentProblem, SessionFailed, StartError
from ._launcher import SessionFiles, XServer, launch_steps
from ._ledger import Ledger
from ._paths import RuntimeDir
from ._process import Offload, Steps, Wait, describe_status, same_process
from ._records import own_identity
from ._recovery import reclaim_abandoned

_LEDGER_RECHECK = 1.0  # seconds: 'xsupervise reset' is noticed this fast by a waiting session


def clock_time(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


class Session:
    """The state of one session and the steps that run it.

    ``on_event(core, event)`` is called as things happen: "ready" (the first time), "restarted",
    "waiting" (backoff or FAILED, see ``state`` and ``next_retry_at``), "died", "start-failed".
    It may raise to end the session (the server is stopped first).
    """

    def __init__(self, settings: Settings, runtime: RuntimeDir, number: int | None, *,
                 name: str, kind: str, retry_first_start: bool = False,
                 give_up_when_failed: bool = False, reclaim: bool = True,
                 count_environment_problems: bool = False,
                 on_event: Callable[[Session, str], None] = lambda core, event: None,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self.policy = settings.policy()
        self.runtime = runtime
        self.number = number
        self.name = name
        self.kind = kind
        self.retry_first_start = retry_first_start
        # Record e.g. a missing server binary against the budget even when it ends the session:
        # for supervisors that a relauncher restarts whenever they exit (``start --relaunched``).
        self.count_environment_problems = count_environment_problems
        self.give_up_when_failed = give_up_when_failed
        self.reclaim = reclaim  # see launch_steps
        self.on_event = on_event
        self.clock = clock
        self.ledger = Ledger(runtime, name)
        self.files = SessionFiles(runtime, name, kind)
        self.server: XServer | None = None
        self.state = "starting"
        self.restarts = 0
        self.ready_once = False
        self.next_retry_at: float | None = None
        self.last_failure: str | None = None
        self.ready_at = 0.0  # time.monotonic() of the last ready

    def __repr__(self) -> str:
        return f"<Session {self.name} {self.display or '-'} {self.state}>"

    @property
    def display(self) -> str | None:
        return f":{self.number}" if self.number is not None else None

    @property
    def env(self) -> dict[str, str]:
        if self.server is None:
            raise RuntimeError(f"session {self.name} has no running display")
        return self.server.env

    def log_fields(self) -> dict[str, object]:
        """Structured fields for the journal (see _log.py)."""
        return {"SESSION": self.name, "DISPLAY": self.display or "",
                "SERVER_PID": self.server.pid if self.server else "", "STATE": self.state}

    def _log(self, level: str, message: str, *args) -> None:
        getattr(log.get(), level)(message, *args, extra=self.log_fields())

    # -- the session -------------------------------------------------------------------
    def steps(self) -> Steps:
        try:
            yield from self._start(first=True)
            while True:
                yield from self._watch()
                yield from self._start(first=False)
        except GeneratorExit:
            if self.server is not None:  # closed by a driver that can no longer wait
                self.server.kill_now()
            raise
        except BaseException:
            if self.server is not None:
                self.state = "stopping"
                yield from self.server.stop_steps()
            raise
        finally:
            self.server = None
            self.files.remove()

    def _start(self, first: bool) -> Steps:
        while True:
            yield from self._await_budget()
            try:
                yield from self._launch()
            except StartError as error:
                self._record_failure(str(error))
                if first and not self.retry_first_start:
                    raise
                self._log("error", "%s", error)
                self.on_event(self, "start-failed")
                continue
            except EnvironmentProblem as error:
                # E.g. the server binary is missing. The CLI reports it (exit 5); a daemon's
                # configured session retries by the policy, and says so, rather than giving up
                # because a mount or package was not there yet at boot.
                if self.retry_first_start or self.count_environment_problems:
                    self._record_failure(str(error))
                if not self.retry_first_start:
                    raise
                self._log("error", "%s", error)
                self.on_event(self, "start-failed")
                continue
            if self.ready_once:
                self.restarts += 1
                self.files.save(restarts=self.restarts)
                self._log("warning", "X server restarted on %s (pid %d, restart %d).",
                          self.server.display, self.server.pid, self.restarts)
                self.on_event(self, "restarted")
            else:
                self.ready_once = True
                self._log("info", "display %s is ready (X server pid %d).", self.server.display,
                          self.server.pid)
                self.on_event(self, "ready")
            return

    # -- the budget ----------------------------------------------------------------------
    def _await_budget(self) -> Steps:
        """Return when the ledger allows a start (and has noted it as in flight)."""
        announced = None
        give_up = self.give_up_when_failed or (self.ready_once and not self.retry_first_start)
        while True:
            now = self.clock()
            with self.ledger.update() as history:
                decision = policy.may_start(history, now, self.policy, same_process)
                if decision.go:
                    policy.begin_start(history, now, self.files.token, *own_identity())
                    self.next_retry_at = None
                    return
            if decision.state == "failed" and give_up:
                self.state = "failed"
                raise SessionFailed(self._failed_line(history, decision))
            if (decision.state, decision.until) != announced:
                if announced is None and self.reclaim:
                    # A start that goes ahead reclaims what killed supervisors left, once its
                    # server is spawned; one that waits must do it now, or every supervisor
                    # a relauncher kills while it waits would leave its files.
                    yield Offload(reclaim_abandoned, self.runtime, self.settings.kill_grace)
                announced = (decision.state, decision.until)
                self.state, self.next_retry_at = decision.state, decision.until
                self.last_failure = decision.reason or self.last_failure
                self.files.save(state=decision.state, next_retry_at=decision.until,
                                last_failure=decision.reason)
                what = "FAILED, cooling down" if decision.state == "failed" else "backing off"
                self._log("warning", "session %s is %s: next start at %s (in %.2f s). "
                          "Last failure: %s", self.name, what, clock_time(decision.until),
                          decision.until - now, decision.reason or "(none)")
                self.on_event(self, "waiting")
            # Ask the ledger again at least every second: 'xsupervise reset' may have cleared it.
            wake_at = min(decision.until, now + _LEDGER_RECHECK)
            yield Wait((), time.monotonic() + max(0.0, wake_at - self.clock()))

    def _failed_line(self, history: policy.History, decision: policy.Decision) -> str:
        since = clock_time(history.failed_at) if history.failed_at else "?"
        return (f"session {self.name} is FAILED: {len(history.failures)} failed starts in "
                f"{self.policy.start_limit_interval:g} s (limit {self.policy.start_limit_burst}), "
                f"FAILED since {since}; next try allowed at {clock_time(decision.until)}. Last "
                f"failure: {decision.reason or '(unknown)'} Fix the cause, then run "
                f"'xsupervise reset {self.name}' to try at once.")

    def _record_failure(self, reason: str) -> None:
        with self.ledger.update() as history:
            policy.record_failure(history, self.clock(), self.policy, reason,
                                  token=self.files.token)
        self.state, self.last_failure = "backoff", reason
        self.files.save(state="backoff", last_failure=reason)

    def record_app_failure(self, reason: str) -> None:
        """What runs on the display failed: count it like a death of the server (a failure
        before ``reset_after`` s of uptime, a fresh start after), so the next start waits."""
        uptime = time.monotonic() - self.ready_at
        with self.ledger.update() as history:
            policy.record_death(history, self.clock(), self.policy, uptime, reason)
        self.last_failure = reason

    def _not_in_flight(self) -> None:
        with self.ledger.update() as history:
            history.in_flight.pop(self.files.token, None)

    # -- starting and watching ---------------------------------------------------------
    def _launch(self) -> Steps:
        self.server = None
        self.state = "starting"
        try:
            server = yield from launch_steps(self.settings, self.runtime, self.number,
                                             files=self.files, kind=self.kind,
                                             reclaim=self.reclaim)
        except StartError:
            raise  # the caller records it as the failure it is
        except BaseException:
            # A stop, or e.g. a missing server binary: not a crash of the server.
            self._not_in_flight()
            raise
        self.server = server
        self.number = server.number  # restarts ask for the same number
        self.state = "ready"
        self.ready_at = time.monotonic()
        with self.ledger.update() as history:
            policy.record_ready(history, self.files.token)
        self.files.save(ready_at=self.clock(), next_retry_at=None)

    def _watch(self) -> Steps:
        """Return when the server has died (after recording it)."""
        server = self.server
        stable_at: float | None = self.ready_at + self.policy.reset_after
        while True:
            ready = yield Wait((server.child.pidfd,), stable_at)
            if server.child.pidfd in ready:
                break
            if stable_at is not None and time.monotonic() >= stable_at:
                with self.ledger.update() as history:
                    policy.record_stable(history)
                stable_at = None
        # Not reaped first: stop_steps still sees the group and SIGKILLs whatever the server
        # left in it, then reaps it and removes the socket file it may have left.
        status = yield from server.stop_steps()
        uptime = time.monotonic() - self.ready_at
        reason = (f"X server {server.display} (pid {server.pid}) {describe_status(status)} after "
                  f"{uptime:.1f} s up. Its last output: {server.output_tail or '(nothing)'}")
        self.state, self.last_failure = "backoff", reason
        self._log("error", "%s", reason)
        self.server = None
        with self.ledger.update() as history:
            policy.record_death(history, self.clock(), self.policy, uptime, reason)
        self.files.save(state="backoff", last_failure=reason)
        self.on_event(self, "died")
