"""One display supervised in the foreground: what ``xsupervise start`` and ``run`` do.

The session itself (budget, launch, watch, restart) is ``session.session.Session``; this
adds what a foreground process owns: stop signals, an optional COMMAND, the announcement
of the display, and sd_notify (so that a ``Type=notify`` unit running ``start :N`` is right).

- A stop signal stops everything (exit 0); with COMMAND it is forwarded to COMMAND, and we
  end when COMMAND does, with its status. A second stop signal cuts the server's grace short.
- The server is always stopped and reaped, and the session's files removed, before we return.

In order: ``ForegroundSupervisor``; what it finds still running at its end (``Lineage``); the
two commands' handlers (`start`, `run`), which cli.main dispatches to.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence

from ..host import log
from ..host.errors import ExitCode, SessionFailed, UsageError, XSuperviseError
from ..host.log import Notifier, child_environment
from ..host.paths import RuntimeDir
from ..host.processes import (
    COMMAND_MARK,
    UNREAPED_CHILDREN,
    SignalInbox,
    _children_of_ours,
    proc_stat,
    reap_orphans,
    stop_adopted,
)
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
from ..session.session import SYSTEM_CLOCK, Clock, Event, Mode, Session, clock_time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    import argparse

    from ..session.session import LaunchedServer


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
        self.lineage: Lineage | None = None  # whose processes are whose (see Lineage)

    def run(self) -> int:
        """Supervise until done; return the exit code."""
        # As a subreaper (and as a container's init) we are handed orphans, and nobody else
        # reaps them: those that end must not stay zombies for the session's life (a window
        # manager's helper, killed with its group at a restart, is one per restart). SIGCHLD
        # wakes our poll loop; handle() then reaps them. Live ones are left for the end.
        inbox = SignalInbox(exit_with_parent=self.parent_pid is not None, wake_on_child_exit=True)
        with inbox as self.inbox:
            # Only now that SIGTERM lands in the inbox: our teardown runs, not the default action.
            if self.parent_pid is not None and not signal_when_parent_dies(
                self.parent_pid, signal.SIGTERM
            ):
                log.get().warning(
                    "parent pid %d exited before we started; nothing was started.", self.parent_pid
                )
                return 128 + signal.SIGTERM if self.command_argv else 0
            become_subreaper()  # orphans of COMMAND, and of a server (a setsid daemon), are ours

            self.lineage = Lineage()
            self.lineage.without_command = not self.command_argv
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
                if self.lineage is not None:  # whose is each leftover: see Lineage
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
    launch.server._stop_commands)."""
    return {COMMAND_MARK: session.files.token} if session is not None else {}


# --- leftovers -----------------------------------------------------------------------------------
# What ``run``/``start -- COMMAND`` finds still running at its end, and whose it is.
#
# The supervisor of a COMMAND is a subreaper: whatever COMMAND or the X server leaves running
# (a background job, a compositor's helper, a daemon) becomes its child, and it stops them all
# (``stop_adopted``). By then their parents are gone, so each is attributed by what the kernel
# kept, best first, and never by a guess:
#
# 1. ancestry seen while their parents ran: the X server's descendants (pid and start time) are
#    noted when it becomes ready and when the session begins to stop (``Lineage.snapshot``),
#    and so are the orphans we adopted before COMMAND started (only the server ran then);
# 2. session and process group: the X server runs in a session of its own (and the wm in
#    another), COMMAND in ours; a process can leave a session only for a new one (setsid);
# 3. environment: COMMAND got ``XAUTHORITY`` naming this session's cookie, the server did not;
# 4. the leader of its (new) session, if that was a descendant seen in 1.
#
# What none of these places is reported as such ("of unknown origin"), not blamed on COMMAND.

COMMAND = "COMMAND"


def _descendants(pid: int) -> list[int]:
    """``pid``'s living descendants, from /proc/PID/task/TID/children (a few reads)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as listing:
                    children = [int(child) for child in listing.read().split()]
            except OSError:
                continue
            found += children
            pending += children
    return found


def _command_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as stream:
            return stream.read().strip() or "?"
    except OSError:
        return "?"


def _environment_has(pid: int, entry: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as stream:
            return entry in stream.read().split(b"\0")
    except OSError:  # gone, or not ours to read (a setuid program)
        return False


class Lineage:
    """What tells the X server's processes from COMMAND's, gathered while they run."""

    def __init__(self) -> None:
        self.roots: dict[int, str] = {}  # a session/group leader we spawned -> its side's name
        self.seen: dict[tuple[int, int], str] = {}  # (pid, start ticks) of a descendant -> side
        self.seen_pids: dict[int, str] = {}
        self.cookie_entry = b""
        self.found: dict[int, tuple[str, str]] = {}  # leftover pid -> (side, command name)
        self.without_command = False  # `start` with no COMMAND: every orphan is a server's

    def add_root(self, pid: int, side: str) -> None:
        """``pid`` (a process we spawned in a session of its own) and its descendants are
        ``side``'s ("X server pid N", "window manager pid N")."""
        self.roots[pid] = side

    def note_server(self, server: LaunchedServer, command_started: bool) -> None:
        """A server of the session is ready: note it, its wm, its cookie and descendants.
        Before COMMAND has started, every orphan we adopted came from the server (a helper
        that double-forked while it started): it is the server's too."""
        side = f"X server pid {server.pid}"
        self.add_root(server.pid, side)
        if not command_started:
            for pid in _children_of_ours() - UNREAPED_CHILDREN:
                self._see(pid, side)
        wm = getattr(server, "wm", None)  # the wm setting's window manager (see launch/wm.py)
        if wm is not None:
            self.add_root(wm.pid, f"window manager pid {wm.pid}")
        self.cookie_entry = os.fsencode(f"XAUTHORITY={server.auth_path}")
        self.snapshot()

    def snapshot(self) -> None:
        """Note the living descendants of every root, for once they are orphaned."""
        for root, side in self.roots.items():
            for pid in _descendants(root):
                self._see(pid, side)

    def _see(self, pid: int, side: str) -> None:
        stat = proc_stat(pid)
        if stat is not None:
            self.seen[(pid, int(stat[19]))] = side
            self.seen_pids[pid] = side

    def side_of(self, pid: int) -> str:
        """Whose ``pid`` is: a root's side, COMMAND, or "" (unknown)."""
        stat = proc_stat(pid)
        if stat is None:
            return ""
        group, session = int(stat[2]), int(stat[3])
        side = self.seen.get((pid, int(stat[19])))
        if side is None:
            side = self.roots.get(session) or self.roots.get(group)
        if side is None and (session == os.getsid(0) or group == os.getpgid(0)):
            side = COMMAND  # our session: only COMMAND was started in it
        if side is None and self.cookie_entry and _environment_has(pid, self.cookie_entry):
            side = COMMAND
        if side is None:
            side = self.seen_pids.get(session, "")  # its session's leader was seen in 1.
        if not side and self.without_command:
            side = "The X server"  # a server that was never ready, or left no trace
        return side

    def note(self, pids: list[int]) -> None:
        """For stop_adopted: attribute each leftover before it is signalled."""
        for pid in pids:
            if pid not in self.found:
                self.found[pid] = (self.side_of(pid), _command_name(pid))

    def report(self) -> list[str]:
        """One line per side: what it left running (pids and command names)."""
        sides: dict[str, list[str]] = {}
        for pid, (side, name) in sorted(self.found.items()):
            sides.setdefault(side, []).append(f"pid {pid} {name}")
        lines = []
        for side, processes in sides.items():
            who = side or "Something of unknown origin (neither the X server's nor COMMAND's)"
            lines.append(
                f"{who} left {len(processes)} process(es) running ({', '.join(processes)}); "
                "stopped them."
            )
        return lines


def stop_leftovers(grace: float, lineage: Lineage) -> None:
    """Stop every orphan we adopted (see stop_adopted) and say whose each one was."""
    stop_adopted(grace, lineage.note)
    for line in lineage.report():
        log.get().warning("%s", line)


# --- the `start` and `run` commands --------------------------------------------------------------


def start(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`start`: a foreground supervisor of one display, or (--detach) one in the daemon."""
    if args.detach:
        return _start_detached(args)
    return supervise(args)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`run`: `start :auto -- COMMAND` that prints nothing of its own (--pool: leased)."""
    pool = args.pool or os.environ.get("XSUPERVISE_POOL")
    if pool:
        from .lease import run_leased

        return run_leased(args, parser, pool)
    return supervise(args)


def supervise(args: argparse.Namespace) -> int:
    """`start` in the foreground, or `run` without a pool: supervise one display."""
    from ..launch.settings import FIELDS, default_session_name, load_settings, parse_display

    is_run = args.command == "run"
    command = args.cmd
    number = None if is_run else parse_display(args.display)
    settings = load_settings({field: getattr(args, field) for field in FIELDS})
    displayfd = None if is_run else args.displayfd
    if displayfd is not None:
        try:
            os.fstat(displayfd)
        except OSError:
            raise UsageError(f"--displayfd {displayfd} is not an open file descriptor.") from None

    def announce(server: LaunchedServer) -> None:
        if is_run:
            return
        facts = server.facts
        assert facts is not None  # announced once verified
        _print_display(
            {
                "display": server.display,
                "number": server.number,
                "xauthority": server.auth_path,
                "server_pid": server.pid,
                "supervisor_pid": os.getpid(),
                "name": name,
                "vendor": facts.vendor,
                "screen": f"{facts.width}x{facts.height}x{facts.depth}",
                "vnc": vnc.to_json() if (vnc := getattr(server, "vnc", None)) else None,  # xvnc
            },
            args.json,
        )
        if displayfd is not None:
            os.write(displayfd, f"{server.number}\n".encode())
            os.close(displayfd)

    name = args.name or default_session_name(number, settings.server)
    session = ForegroundSupervisor(
        settings,
        RuntimeDir.discover(),
        number,
        name=name,
        command=command,
        announce=announce,
        no_wait=args.no_wait,
        substitute=getattr(args, "substitute", False),
        parent_pid=args.parent_pid if args.exit_with_parent else None,  # see cli.main
        relaunched=args.relaunched,
    )
    return session.run()


def _print_display(facts: dict[str, object], as_json: bool) -> None:
    """What `start` prints once the display is ready: shell lines, or one JSON object."""
    if as_json:
        import json

        print(json.dumps(facts), flush=True)
    else:
        # The xvnc profile's endpoint, as VNC clients take it (a bare path, or HOST::PORT).
        from ..launch.vnc_endpoint import VncEndpoint

        vnc = f"\nVNC={VncEndpoint.from_json(facts['vnc'])}" if facts.get("vnc") else ""
        print(f"DISPLAY={facts['display']}\nXAUTHORITY={facts['xauthority']}{vnc}", flush=True)


def _start_detached(args: argparse.Namespace) -> int:
    from ..client import Client
    from ..launch.settings import FIELDS, parse_display

    parse_display(args.display)  # a bad request is a usage error here, not in the daemon
    settings = {field: getattr(args, field) for field in FIELDS if getattr(args, field) is not None}
    with Client(args.socket, timeout=None) as daemon:
        reply = daemon.start(args.display, name=args.name, no_wait=args.no_wait, **settings)
    reply.pop("ok", None)
    reply.pop("env", None)
    reply["number"] = int(reply["display"][1:])
    _print_display(reply, args.json)
    return ExitCode.OK
