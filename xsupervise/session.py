"""One display supervised in the foreground: what ``xsupervise start`` and ``run`` do.

Start the server (a stop signal during the start aborts it, cleanly), announce it, then
either wait for a stop signal or run COMMAND on the display, forwarding stop signals to it.
Whatever ends the session, the server is stopped and reaped and its files removed.
"""

from __future__ import annotations

import os
import select
import signal
from collections.abc import Callable, Sequence

from . import log
from .config import Settings
from .errors import ServerDied
from .launch import XServer, launch_steps
from .paths import RuntimeDir
from .process import Child, describe_status, run_blocking, shell_status, spawn
from .signals import Interrupted, SignalInbox

EXIT_COMMAND_NOT_FOUND = 127
EXIT_COMMAND_NOT_RUNNABLE = 126


def _delivered_by_terminal(signum: int) -> bool:
    """Ctrl-C already reached COMMAND if it shares our foreground process group on a tty."""
    if signum != signal.SIGINT:
        return False
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


class ForegroundSession:
    def __init__(self, settings: Settings, runtime: RuntimeDir, number: int | None, *,
                 name: str | None = None, command: Sequence[str] = (),
                 announce: Callable[[XServer], None] = lambda server: None):
        self.settings = settings
        self.runtime = runtime
        self.number = number
        self.name = name
        self.command = list(command)
        self.announce = announce

    def run(self) -> int:
        """Supervise until done; return the exit code."""
        with SignalInbox() as inbox:
            try:
                server = run_blocking(
                    launch_steps(self.settings, self.runtime, self.number, name=self.name,
                                 kind="cli"),
                    wake_fd=inbox.read_fd, on_wake=inbox.raise_if_signalled)
            except Interrupted as stop:
                log.get().info("start interrupted by %s; nothing left running.",
                         signal.Signals(stop.signum).name)
                return 128 + stop.signum if self.command else 0
            try:
                self.announce(server)
                if self.command:
                    return self._run_command(server, inbox)
                return self._wait_for_stop(server, inbox)
            finally:
                run_blocking(server.stop_steps())

    def _wait_for_stop(self, server: XServer, inbox: SignalInbox) -> int:
        while True:
            ready = _wait_readable(inbox.read_fd, server.child.pidfd)
            if inbox.read_fd in ready and inbox.drain():
                return 0
            if server.child.pidfd in ready:
                raise self._died(server)

    def _run_command(self, server: XServer, inbox: SignalInbox) -> int:
        try:
            command = spawn(self.command, env={**os.environ, **server.env}, own_group=False)
        except FileNotFoundError:
            log.get().error("command %r was not found; nothing was run.", self.command[0])
            return EXIT_COMMAND_NOT_FOUND
        except PermissionError:
            log.get().error("command %r is not executable; nothing was run.", self.command[0])
            return EXIT_COMMAND_NOT_RUNNABLE
        try:
            while True:
                ready = _wait_readable(inbox.read_fd, command.pidfd, server.child.pidfd)
                if inbox.read_fd in ready:
                    for signum in inbox.drain():
                        if not _delivered_by_terminal(signum):
                            command.signal(signum)
                if command.pidfd in ready:
                    return shell_status(command.reap())
                if server.child.pidfd in ready:
                    raise self._died(server)
        finally:
            if command.returncode is None:
                run_blocking(command.stop_steps(self.settings.kill_grace))

    def _died(self, server: XServer) -> ServerDied:
        status = server.child.reap()
        run_blocking(server.stop_steps())
        return ServerDied(f"X server {server.display} (pid {server.pid}) {describe_status(status)} "
                          f"while in use. Its last output: {server.output_tail or '(nothing)'}")


def _wait_readable(*fds: int) -> set[int]:
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return {fd for fd, _ in poller.poll()}
