"""One display supervised in the foreground: what ``xsupervise start`` and ``run`` do.

States: starting -> ready -> (server died) backoff -> starting -> ready ... -> failed.
- Before every start the ledger is asked whether the restart budget allows it; if not, we
  wait (saying until when), or, for a FAILED session with ``no_wait``, give up at once.
- The first start is tried once: its failure is recorded and reported (exit 3/4). Once a
  display has been ready, a dead server is restarted on the *same* number, by the policy,
  until the start limit makes the session FAILED (exit 7).
- A stop signal stops everything (exit 0); with COMMAND it is forwarded to COMMAND, and we
  end when COMMAND does, with its status. The server is always stopped and reaped, and the
  session's files removed, before we return.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Sequence

from . import log, policy
from .config import Settings
from .errors import SessionFailed, StartError
from .launch import SessionFiles, XServer, launch_steps
from .ledger import Ledger
from .paths import RuntimeDir
from .process import (Child, Wait, describe_status, poll_ready, run_blocking, same_process,
                      shell_status, spawn)
from .records import own_identity
from .recovery import reclaim_abandoned
from .signals import Interrupted, SignalInbox

EXIT_COMMAND_NOT_FOUND = 127
EXIT_COMMAND_NOT_RUNNABLE = 126
_LEDGER_RECHECK = 1.0  # seconds


def _delivered_by_terminal(signum: int) -> bool:
    """Ctrl-C already reached COMMAND if it shares our foreground process group on a tty."""
    if signum != signal.SIGINT:
        return False
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def _clock(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


class _Stop(Exception):
    """Internal: the session is over; ``code`` is the exit code."""

    def __init__(self, code: int):
        self.code = code


class ForegroundSession:
    def __init__(self, settings: Settings, runtime: RuntimeDir, number: int | None, *,
                 name: str, command: Sequence[str] = (), no_wait: bool = False,
                 announce: Callable[[XServer], None] = lambda server: None,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self.policy = settings.policy()
        self.runtime = runtime
        self.number = number
        self.name = name
        self.command_argv = list(command)
        self.no_wait = no_wait
        self.announce = announce
        self.clock = clock
        self.ledger = Ledger(runtime, name)
        self.server: XServer | None = None
        self.command: Child | None = None
        self.restarts = 0

    # -- the session -------------------------------------------------------------------
    def run(self) -> int:
        """Supervise until done; return the exit code."""
        with SignalInbox() as self.inbox:
            files = SessionFiles(self.runtime, self.name, "cli")
            try:
                self._first_start(files)
                self.announce(self.server)
                self.number = self.server.number  # restarts ask for the same number
                if self.command_argv:
                    self._start_command()
                while True:
                    self._supervise()
                    self._restart(files)
            except _Stop as stop:
                return stop.code
            finally:
                self._stop_everything()
                files.remove()

    def _first_start(self, files: SessionFiles) -> None:
        """Tried once: a failure is recorded (it counts against the budget) and reported."""
        self._await_budget(files, first=True)
        try:
            self._launch(files)
        except StartError as error:
            self._record_failure(files, str(error))
            raise

    def _restart(self, files: SessionFiles) -> None:
        while True:
            self._await_budget(files, first=False)
            try:
                self._launch(files)
                self.restarts += 1
                files.save(restarts=self.restarts)
                log.get().warning("X server restarted on %s (pid %d, restart %d).",
                                  self.server.display, self.server.pid, self.restarts)
                return
            except StartError as error:
                self._record_failure(files, str(error))
                log.get().error("%s", error)

    # -- the budget ----------------------------------------------------------------------
    def _await_budget(self, files: SessionFiles, first: bool) -> None:
        """Return when the ledger allows a start (and has noted it as in flight)."""
        announced = None
        while True:
            now = self.clock()
            with self.ledger.update() as history:
                decision = policy.may_start(history, now, self.policy, same_process)
                if decision.go:
                    policy.begin_start(history, now, files.token, *own_identity())
                    return
            if decision.state == "failed" and (self.no_wait or not first):
                raise SessionFailed(self._failed_line(history, decision))
            if (decision.state, decision.until) != announced:
                if announced is None:
                    # A start that goes ahead reclaims what killed supervisors left, once its
                    # server is spawned; one that waits must do it now, or every supervisor
                    # a relauncher kills while it waits would leave its files.
                    reclaim_abandoned(self.runtime, self.settings.kill_grace)
                announced = (decision.state, decision.until)
                files.save(state=decision.state, next_retry_at=decision.until,
                           last_failure=decision.reason)
                what = "FAILED, cooling down" if decision.state == "failed" else "backing off"
                log.get().warning(
                    "session %s is %s: next start at %s (in %.2f s). Last failure: %s",
                    self.name, what, _clock(decision.until), decision.until - now,
                    decision.reason or "(none)")
            # Ask the ledger again at least every second: 'xsupervise reset' may have cleared it.
            self._wait_until(min(decision.until, now + _LEDGER_RECHECK))

    def _failed_line(self, history: policy.History, decision: policy.Decision) -> str:
        since = _clock(history.failed_at) if history.failed_at else "?"
        return (f"session {self.name} is FAILED: {len(history.failures)} failed starts in "
                f"{self.policy.start_limit_interval:g} s (limit {self.policy.start_limit_burst}), "
                f"FAILED since {since}; next try allowed at {_clock(decision.until)}. Last "
                f"failure: {decision.reason or '(unknown)'} Fix the cause, then run "
                f"'xsupervise reset {self.name}' to try at once.")

    def _record_failure(self, files: SessionFiles, reason: str) -> None:
        with self.ledger.update() as history:
            policy.record_failure(history, self.clock(), self.policy, reason, token=files.token)
        files.save(state="backoff", last_failure=reason)

    def _not_in_flight(self, files: SessionFiles) -> None:
        with self.ledger.update() as history:
            history.in_flight.pop(files.token, None)

    # -- starting and supervising ----------------------------------------------------------
    def _launch(self, files: SessionFiles) -> None:
        self.server = None
        try:
            server = run_blocking(
                launch_steps(self.settings, self.runtime, self.number, files=files, kind="cli"),
                wake_fd=self.inbox.read_fd, on_wake=self.inbox.raise_if_signalled)
        except StartError:
            raise  # the caller records it as the failure it is
        except Interrupted as stop:
            self._not_in_flight(files)  # a stop, not a failure of the server
            self._on_signal(stop.signum)
            raise _Stop(self._stop_code(stop.signum)) from None
        except BaseException:
            self._not_in_flight(files)  # e.g. the server binary is missing: not a crash
            raise
        self.server = server
        self.ready_at = time.monotonic()
        with self.ledger.update() as history:
            policy.record_ready(history, files.token)
        files.save(ready_at=self.clock(), next_retry_at=None)

    def _supervise(self) -> None:
        """Return when the server has died (after recording it); raise _Stop when done."""
        server = self.server
        stable_at = self.ready_at + self.policy.reset_after
        while True:
            fds = [self.inbox.read_fd, server.child.pidfd]
            if self.command is not None:
                fds.append(self.command.pidfd)
            ready = poll_ready(Wait(tuple(fds), stable_at))
            self._check_signals_and_command(ready)
            if server.child.pidfd in ready:
                break
            if stable_at is not None and time.monotonic() >= stable_at:
                with self.ledger.update() as history:
                    policy.record_stable(history)
                stable_at = None
        # Not reaped first: stop_steps still sees the group and SIGKILLs whatever the server
        # left in it, then reaps it and removes the socket file it may have left.
        status = run_blocking(server.stop_steps())
        uptime = time.monotonic() - self.ready_at
        reason = (f"X server {server.display} (pid {server.pid}) {describe_status(status)} after "
                  f"{uptime:.1f} s up. Its last output: {server.output_tail or '(nothing)'}")
        log.get().error("%s", reason)
        with self.ledger.update() as history:
            policy.record_death(history, self.clock(), self.policy, uptime, reason)
        server.files.save(state="backoff", last_failure=reason)
        self.server = None

    def _wait_until(self, until_wall: float) -> None:
        """Wait for the wall-clock time ``until_wall``, handling signals and COMMAND's exit."""
        deadline = time.monotonic() + max(0.0, until_wall - self.clock())
        while time.monotonic() < deadline:
            fds = [self.inbox.read_fd] + ([self.command.pidfd] if self.command else [])
            self._check_signals_and_command(poll_ready(Wait(tuple(fds), deadline)))

    def _check_signals_and_command(self, ready: set[int]) -> None:
        if self.inbox.read_fd in ready:
            for signum in self.inbox.drain():
                self._on_signal(signum)
                if self.command is None:
                    raise _Stop(0)
        if self.command is not None and self.command.pidfd in ready:
            raise _Stop(shell_status(self.command.reap()))

    def _on_signal(self, signum: int) -> None:
        if self.command is not None and not _delivered_by_terminal(signum):
            self.command.signal(signum)

    def _stop_code(self, signum: int) -> int:
        if self.command is not None:
            return shell_status(self._wait_for_command())
        return 128 + signum if self.command_argv else 0

    def _wait_for_command(self) -> int:
        """COMMAND got a stop signal during a restart: wait for it to end."""
        while True:
            ready = poll_ready(Wait((self.inbox.read_fd, self.command.pidfd), None))
            if self.inbox.read_fd in ready:
                for signum in self.inbox.drain():
                    self._on_signal(signum)
            if self.command.pidfd in ready:
                return self.command.reap()

    def _start_command(self) -> None:
        try:
            self.command = spawn(self.command_argv, env={**os.environ, **self.server.env},
                                 own_group=False)
        except FileNotFoundError:
            log.get().error("command %r was not found; nothing was run.", self.command_argv[0])
            raise _Stop(EXIT_COMMAND_NOT_FOUND) from None
        except PermissionError:
            log.get().error("command %r is not executable; nothing was run.", self.command_argv[0])
            raise _Stop(EXIT_COMMAND_NOT_RUNNABLE) from None

    def _stop_everything(self) -> None:
        if self.command is not None and self.command.returncode is None:
            run_blocking(self.command.stop_steps(self.settings.kill_grace))
        if self.server is not None:
            run_blocking(self.server.stop_steps())

