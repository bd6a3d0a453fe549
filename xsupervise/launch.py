"""The one launch path: spawn the X server, read -displayfd, verify, and tear down completely.

Used by ``xsupervise start``/``run``, ``Display`` and (through an event loop) ``AsyncDisplay``.
Whatever goes wrong after the spawn, the server's process group is stopped (TERM, grace,
KILL) and reaped, and every file it or we created for it is removed before the error is raised.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from . import errors, log
from .config import Settings
from .paths import RuntimeDir, create_private_file, new_token, remove_file
from .process import Child, Steps, describe_status, spawn
from .stale import bound_abstract_displays, remove_dead_socket
from .xserver import (DisplayFdError, HandshakeError, ServerFacts, read_display_number,
                      server_argv, verify, xauthority_entry)

# Imported only once the server is spawned (records needs psutil and json): see launch_steps.

_TAIL_BYTES = 4096
_TAIL_LINES = 3


def _output_tail(path: str) -> str:
    """The last few non-empty lines the server printed, joined into one line."""
    try:
        with open(path, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            stream.seek(max(0, stream.tell() - _TAIL_BYTES))
            text = stream.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-_TAIL_LINES:])


class XServer:
    """A running X server of ours, with its files. Stop it with ``run_blocking(stop_steps())``."""

    def __init__(self, child: Child, settings: Settings, runtime: RuntimeDir, token: str,
                 record):
        self.child = child
        self.settings = settings
        self.runtime = runtime
        self.token = token
        self.record = record
        self.auth_path = runtime.auth_path(token)
        self.log_path = runtime.log_path(token)
        self.requested_number: int | None = None
        self.number: int | None = None
        self.facts: ServerFacts | None = None
        self.spawned_wall = time.time()
        self.exit_status: int | None = None
        self.output_tail = ""

    def __repr__(self) -> str:
        return f"<XServer {self.display or '(no display yet)'} {self.child!r}>"

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def display(self) -> str | None:
        return None if self.number is None else f":{self.number}"

    @property
    def env(self) -> dict[str, str]:
        """What a client needs: DISPLAY and XAUTHORITY."""
        if self.number is None:
            raise RuntimeError("the display is not ready")
        return {"DISPLAY": f":{self.number}", "XAUTHORITY": self.auth_path}

    def _warn_escalation(self, child: Child) -> None:
        log.get().warning("%s (pid %d) did not exit within %.1f s of SIGTERM; sending SIGKILL to its "
                    "process group. Raise --kill-grace (XSUPERVISE_KILL_GRACE) if it needs longer.",
                    os.path.basename(child.argv[0]), child.pid, self.settings.kill_grace)

    def stop_steps(self) -> Steps[int]:
        """Stop and reap the server's group; remove its socket (if it left it), cookie, log, record."""
        if self.exit_status is not None:
            return self.exit_status
        self.exit_status = yield from self.child.stop_steps(self.settings.kill_grace,
                                                            self._warn_escalation)
        self.release()
        return self.exit_status

    def kill_now(self) -> None:
        """SIGKILL the group, reap, clean up; for when no waiting is possible."""
        if self.exit_status is None:
            self.child.signal(signal.SIGKILL)
            self.release()

    def release(self) -> None:
        """After the server is reaped: remove everything of ours it leaves behind."""
        if self.exit_status is None:
            self.exit_status = self.child.reap()
        if self.number is not None:
            remove_dead_socket(self.number, self.facts.socket_inode if self.facts else None,
                               self.spawned_wall)
        self.output_tail = _output_tail(self.log_path)
        for path in (self.auth_path, self.log_path):
            remove_file(path)
        if self.record is not None:
            self.record.remove(self.runtime)


def launch_steps(settings: Settings, runtime: RuntimeDir, number: int | None = None, *,
                 name: str | None = None, kind: str = "api") -> Steps[XServer]:
    """Start an X server on ``number`` (None: let it choose) and return it verified ready."""
    token = new_token()
    cookie = os.urandom(16)
    auth_path = runtime.auth_path(token)
    os.close(create_private_file(auth_path, xauthority_entry(cookie)))
    log_fd = create_private_file(runtime.log_path(token))
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    argv = server_argv(settings.server, number, write_fd, auth_path, settings.screen)
    try:
        child = spawn(argv, pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=log_fd,
                      stderr=log_fd, deathsig=signal.SIGKILL)
    except OSError as exc:
        os.close(read_fd)
        remove_file(auth_path)
        remove_file(runtime.log_path(token))
        if isinstance(exc, FileNotFoundError):
            raise errors.ServerNotFound(
                f"X server {argv[0]!r} was not found on PATH; install it (Debian: apt-get install "
                "xvfb) or name another with --server.") from None
        raise errors.EnvironmentProblem(f"cannot start X server {argv[0]!r}: {exc.strerror}; "
                                        "check that it is an executable program.") from None
    finally:
        os.close(write_fd)
        os.close(log_fd)
    deadline = child.spawned_at + settings.displayfd_timeout
    server = XServer(child, settings, runtime, token, None)
    server.requested_number = number
    try:
        # Everything up to the first wait runs while the server initialises (~50 ms): the
        # imports and files here cost nothing a user would notice.
        from .records import SessionRecord, own_identity
        from .recovery import reclaim_abandoned

        log.get()
        record = server.record = SessionRecord(
            token=token, name=name or (f":{number}" if number is not None else "auto"),
            kind=kind, state="starting", server_pid=child.pid, server_ticks=child.start_ticks,
            server_argv=argv)
        record.supervisor_pid, record.supervisor_ticks = own_identity()
        record.xauthority = auth_path
        record.save(runtime)
        reclaim_abandoned(runtime, settings.kill_grace)
        server.number = yield from read_display_number(read_fd, child, deadline)
        server.facts = yield from verify(server.number, child, cookie, deadline)
    except (DisplayFdError, HandshakeError) as exc:
        yield from server.stop_steps()
        raise _start_error(exc, server) from None
    except GeneratorExit:
        # Closed half-way (the driver gave up on us): no more waiting is possible here.
        server.kill_now()
        raise
    except BaseException:
        yield from server.stop_steps()
        raise
    finally:
        os.close(read_fd)
    record = server.record
    record.display = server.display
    record.socket_inode = server.facts.socket_inode
    record.state = "ready"
    record.save(runtime)
    return server


def _start_error(exc: Exception, server: XServer) -> errors.StartError:
    settings = server.settings
    facts = dict(server=os.path.basename(server.child.argv[0]), pid=server.pid,
                 elapsed=time.monotonic() - server.child.spawned_at,
                 stderr_tail=server.output_tail, display=server.display)
    kind = getattr(exc, "kind", None)
    if kind == "exited":
        hint = "Check the --server and --screen settings."
        requested = server.requested_number
        if requested is not None and requested in bound_abstract_displays():
            hint = (f"Display :{requested} is already served by another X server; "
                    "ask for another number or :auto.")
        return errors.ServerExited(f"{describe_status(server.exit_status)} before it wrote a "
                                   "display number", **facts, hint=hint)
    if kind == "timeout":
        return errors.ReadyTimeout(
            f"was not ready within the {settings.displayfd_timeout:g} s deadline ({exc})",
            **facts, hint="If it is just slow, raise --timeout (XSUPERVISE_DISPLAYFD_TIMEOUT).")
    if kind in ("garbage", "closed"):
        return errors.BadDisplayFd(str(exc), **facts,
                                   hint="Is --server an X server that supports -displayfd?")
    return errors.NotServing(str(exc), **facts,
                             hint="Is another program interfering with /tmp/.X11-unix?")
