"""One display supervised in the foreground: what ``xsupervise start`` and ``run`` do.

The session itself (budget, launch, watch, restart) is ``session.session.Session``; this
adds what a foreground process owns: stop signals, an optional COMMAND, the announcement
of the display, and sd_notify (so that a ``Type=notify`` unit running ``start :N`` is right).

- A stop signal stops everything (exit 0); with COMMAND it is forwarded to COMMAND, and we
  end when COMMAND does, with its status. A second stop signal cuts the server's grace short.
- The server is always stopped and reaped, and the session's files removed, before we return.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence

from ..host import log
from ..host.errors import ExitCode, SessionFailed, XSuperviseError
from ..host.group import COMMAND_MARK
from ..host.notify import Notifier, child_environment
from ..host.paths import RuntimeDir
from ..host.pinned import reap_orphans
from ..host.signals import SignalInbox
from ..launch.process import (
    Child,
    Events,
    become_subreaper,
    describe_status,
    run_blocking,
    shell_status,
    signal_when_parent_dies,
    spawn,
)
from ..launch.settings import Settings
from .clock import SYSTEM_CLOCK, Clock, clock_time
from .session import Session
from .states import Event, Mode

TYPE_CHECKING = False  # typing costs the CLI milliseconds to import: only for the checker
if TYPE_CHECKING:
    from .clock import LaunchedServer
    from .leftovers import Lineage


def _delivered_by_terminal(signum: int) -> bool:
    """Ctrl-C already reached COMMAND if it shares our foreground process group on a tty."""
    if signum != signal.SIGINT:
        return False
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def fill_command(argv: Sequence[str], server: LaunchedServer) -> list[str]:
    """COMMAND with {display} (':5'), {display_number} ('5') and {xauthority} filled in, and
    '{{' / '}}' turned into single braces; any other {name} is left as it is."""
    values = {
        "display": server.display or "",
        "display_number": str(server.number),
        "xauthority": server.auth_path,
    }

    def fill(arg: str) -> str:
        out: list[str] = []
        i = 0
        while i < len(arg):
            if arg.startswith(("{{", "}}"), i):
                out.append(arg[i])
                i += 2
                continue
            if arg[i] == "{":
                end = arg.find("}", i)
                if end > 0 and arg[i + 1 : end] in values:
                    out.append(values[arg[i + 1 : end]])
                    i = end + 1
                    continue
            out.append(arg[i])
            i += 1
        return "".join(out)

    return [fill(arg) for arg in argv]


class _Stop(Exception):
    """Internal: the session is over; ``code`` is the exit code."""

    def __init__(self, code: int) -> None:
        self.code = code


class ForegroundSupervisor(Events):
    def __init__(
        self,
        settings: Settings,
        runtime: RuntimeDir,
        number: int | None,
        *,
        name: str,
        command: Sequence[str] = (),
        no_wait: bool = False,
        announce: Callable[[LaunchedServer], None] = lambda server: None,
        clock: Clock = SYSTEM_CLOCK,
        notifier: Notifier | None = None,
        substitute: bool = False,
        parent_pid: int | None = None,
        relaunched: bool = False,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.number = number
        self.name = name
        self.command_argv = list(command)
        self.substitute = substitute  # fill {display} etc. into COMMAND (see fill_command)
        self.no_wait = no_wait
        self.parent_pid = parent_pid  # if set: stop as on SIGTERM when that parent exits
        # Something restarts us whenever we exit non-zero: make those exits spend the budget.
        self.mode = Mode.RELAUNCHED if relaunched else Mode.CLI
        self.session: Session | None = None
        self.command_started_at = 0.0
        self.stop_requested = False  # a stop signal came while COMMAND ran
        self.command_kill_at: float | None = None  # SIGKILL COMMAND then if it is still running
        self.announce = announce
        self.clock = clock
        self.notifier = notifier or Notifier()
        self.command: Child | None = None
        self.exit_code: int | None = None  # set once we are stopping
        self.inbox: SignalInbox | None = None
        self.lineage: Lineage | None = None  # whose processes are whose (see session.leftovers)

    def run(self) -> int:
        """Supervise until done; return the exit code."""
        with SignalInbox(exit_with_parent=self.parent_pid is not None) as self.inbox:
            # Only now that SIGTERM lands in the inbox: our teardown runs, not the default action.
            if self.parent_pid is not None and not signal_when_parent_dies(
                self.parent_pid, signal.SIGTERM
            ):
                log.get().warning(
                    "parent pid %d exited before we started; nothing was started.", self.parent_pid
                )
                return 128 + signal.SIGTERM if self.command_argv else 0
            become_subreaper()  # orphans of COMMAND, and of a server (a setsid daemon), are ours
            from .leftovers import Lineage

            self.lineage = Lineage()
            self.lineage.without_command = not self.command_argv
            if os.getpid() == 1:
                # A container's init: the kernel hands us every orphan in it, and nobody else
                # reaps them. A Python handler makes SIGCHLD wake our poll loop (through the
                # inbox's wakeup fd); handle() then reaps them.
                signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
            session = self.session = Session(
                self.settings,
                self.runtime,
                self.number,
                name=self.name,
                mode=self.mode,
                no_wait=self.no_wait,
                on_event=self._on_event,
                clock=self.clock,
            )
            try:
                run_blocking(session.steps(), self)
            except _Stop as stop:
                return stop.code
            except XSuperviseError as error:  # reported by the CLI: with our journal fields
                log.attach_fields(error, session.log_fields())
                failed = isinstance(error, SessionFailed)
                self.notifier.stopping(f"{'FAILED' if failed else 'stopping'}: {error}")
                self.exit_code = error.exit_code
                raise
            finally:
                if self.exit_code is None:  # ending by an error, not by a stop
                    self.notifier.stopping()
                if self.command is not None and self.command.returncode is None:
                    run_blocking(self.command.stop_steps(self.settings.kill_grace))
                if self.lineage is not None:  # whose is each leftover: see session.leftovers
                    from .leftovers import stop_leftovers

                    stop_leftovers(self.settings.kill_grace, self.lineage)
        raise AssertionError("a session's steps end only by raising")

    # -- what the session tells us-----------------------------------------------------
    def _on_event(self, session: Session, event: Event) -> None:
        server = session.server  # set once verified
        if self.lineage is not None and server is not None:
            self.lineage.note_server(server, command_started=self.command is not None)
        if event == Event.VERIFIED and server is not None and session.restarts == 0:
            self.announce(server)
            if self.command_argv:
                self._start_command(server)
            self.notifier.ready(f"display {session.display} ready (X server pid {server.pid})")
        elif event == Event.VERIFIED and server is not None:
            self.notifier.status(
                f"display {session.display} ready (X server pid {server.pid}, "
                f"restart {session.restarts})"
            )
        elif event in (Event.BACKOFF, Event.COOL_DOWN):
            self.notifier.status(
                f"display {session.display or '(none yet)'} in {session.state} until "
                f"{clock_time(session.next_retry_at)}"
            )
        elif event == Event.DIED:
            self.notifier.status(f"display {session.display}: X server died; restarting")

    def _start_command(self, server: LaunchedServer) -> None:
        argv = fill_command(self.command_argv, server) if self.substitute else self.command_argv
        try:
            env = child_environment({**server.env, **_mark(self.session)})
            self.command = spawn(argv, env=env, own_group=False)
            self.command_started_at = self.clock.monotonic()
        except FileNotFoundError:
            log.get().error("command %r was not found; nothing was run.", self.command_argv[0])
            raise _Stop(ExitCode.COMMAND_NOT_FOUND) from None
        except PermissionError:
            log.get().error("command %r is not executable; nothing was run.", self.command_argv[0])
            raise _Stop(ExitCode.COMMAND_NOT_RUNNABLE) from None

    # -- what we watch besides the session's own fds (process.Events) ----------------------
    def _signals(self) -> SignalInbox:
        if self.inbox is None:
            raise RuntimeError("the supervisor is not running")
        return self.inbox

    def fds(self) -> tuple[int, ...]:
        if self.command is not None and self.command.returncode is None:
            return (self._signals().read_fd, self.command.pidfd)
        return (self._signals().read_fd,)

    def deadline(self) -> float | None:
        deadlines = [self.notifier.next_ping, self.command_kill_at]
        return min((d for d in deadlines if d is not None), default=None)

    def handle(self, ready: set[int]) -> None:
        if self.notifier.ping_due():
            self.notifier.ping()  # we are in our poll loop, so we are healthy
        inbox = self._signals()
        if inbox.read_fd in ready:
            if os.getpid() == 1:
                reap_orphans()
            for signum in inbox.drain():
                self._on_signal(signum)
        command = self.command
        if command is None or command.returncode is not None:
            return
        if self.command_kill_at is not None and self.clock.monotonic() >= self.command_kill_at:
            log.get().warning(
                "COMMAND %r (pid %d) was still running %g s after it was asked to "
                "stop; sending SIGKILL.",
                self.command_argv[0],
                command.pid,
                self.settings.kill_grace,
            )
            command.signal(signal.SIGKILL)
            self.command_kill_at = None
        if command.pidfd in ready:
            status = command.reap()
            code = shell_status(status)
            if (
                code != 0
                and self.mode.counts_app_failures
                and not self.stop_requested
                and self.session is not None
            ):
                ran = self.clock.monotonic() - self.command_started_at
                self.session.record_app_failure(
                    f"COMMAND {self.command_argv[0]!r} (pid {command.pid}) "
                    f"{describe_status(status)} after {ran:.1f} s on {self.session.display}."
                )
            self._stopping(code)

    def _on_signal(self, signum: int) -> None:
        if self.exit_code is not None:
            raise _Stop(self.exit_code)  # a second signal: the session escalates to SIGKILL
        if self.command is not None and self.command.returncode is None:
            self.stop_requested = True
            if _delivered_by_terminal(signum):
                return  # COMMAND has it too, and decides (an interactive shell ignores Ctrl-C)
            self.command.signal(signum)
            if self.command_kill_at is None:
                # Nobody may be left to send a second signal (--exit-with-parent): escalate.
                self.command_kill_at = self.clock.monotonic() + self.settings.kill_grace
            return  # we end when COMMAND does
        self._stopping(128 + signum if self.command_argv else 0)

    def _stopping(self, code: int) -> None:
        self.exit_code = code
        if self.lineage is not None:
            self.lineage.snapshot()  # the server's descendants, before it is stopped
        self.notifier.stopping()
        raise _Stop(code)


def _mark(session: Session | None) -> dict[str, str]:
    """COMMAND's mark: what it leaves behind a SIGKILLed supervisor is found by it (see
    launch.recovery._stop_commands)."""
    return {COMMAND_MARK: session.files.token} if session is not None else {}
