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

from . import _errors as errors, _log as log
from ._settings import Settings
from ._notify import child_environment
from ._paths import RuntimeDir, create_private_file, new_token, remove_file
from ._process import Child, Offload, Steps, describe_status, spawn
from ._stale import bound_abstract_displays, remove_dead_socket
from ._x11 import (DisplayFdError, HandshakeError, ServerFacts, read_display_number,
                      server_argv, verify, xauthority_entry)

# Imported only once the server is spawned (records needs psutil and json): see launch_steps.

_TAIL_BYTES = 4096
# Seconds kill_now waits for a SIGKILLed server that it cannot wait for asynchronously.
_KILL_NOW_WAIT = 1.0
_TAIL_LINES = 3


def _output_tail(path: str, since: int = 0) -> str:
    """The last few non-empty lines the server printed (after offset ``since``), as one line."""
    try:
        with open(path, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            stream.seek(max(since, stream.tell() - _TAIL_BYTES))
            text = stream.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-_TAIL_LINES:])


class SessionFiles:
    """A session's own files, which outlive any one X server it runs: the cookie (so clients
    keep working across a restart), the server log, and the record that `list` reads."""

    def __init__(self, runtime: RuntimeDir, name: str, kind: str):
        self.runtime = runtime
        self.token = new_token()
        self.cookie = os.urandom(16)
        self.auth_path = runtime.auth_path(self.token)
        self.log_path = runtime.log_path(self.token)
        self.name = name
        self.kind = kind
        self.record = None  # made once a server is spawned (it needs json: see launch_steps)
        os.close(create_private_file(self.auth_path, xauthority_entry(self.cookie)))
        try:
            os.close(create_private_file(self.log_path))
        except BaseException:
            remove_file(self.auth_path)
            raise

    def __repr__(self) -> str:
        return f"<SessionFiles {self.name} {self.token}>"

    def save(self, **changes) -> None:
        """Update the record (creating it the first time) and write it."""
        if self.record is None:
            from ._records import SessionRecord, own_identity

            pid, ticks = own_identity()
            self.record = SessionRecord(token=self.token, name=self.name, kind=self.kind,
                                        supervisor_pid=pid, supervisor_ticks=ticks,
                                        xauthority=self.auth_path)
        for field, value in changes.items():
            setattr(self.record, field, value)
        self.record.save(self.runtime)

    def remove(self) -> None:
        self.runtime.remove_session(self.token)


class XServer:
    """A running X server of ours. Stop it with ``run_blocking(stop_steps())``."""

    def __init__(self, child: Child, settings: Settings, files: SessionFiles, owns_files: bool,
                 log_offset: int, requested_number: int | None):
        self.child = child
        self.settings = settings
        self.files = files
        self.owns_files = owns_files  # a one-off Display: its files go with its server
        self.log_offset = log_offset
        self.requested_number = requested_number
        self.number: int | None = None
        self.facts: ServerFacts | None = None
        self.spawned_wall = time.time()
        self.exit_status: int | None = None
        self.released = False
        self.output_tail = ""

    def __repr__(self) -> str:
        return f"<XServer {self.display or '(no display yet)'} {self.child!r}>"

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def auth_path(self) -> str:
        return self.files.auth_path

    @property
    def record(self):
        return self.files.record

    @property
    def display(self) -> str | None:
        return None if self.number is None else f":{self.number}"

    @property
    def env(self) -> dict[str, str]:
        """What a client needs: DISPLAY and XAUTHORITY."""
        if self.number is None:
            raise RuntimeError("the display is not ready")
        return {"DISPLAY": f":{self.number}", "XAUTHORITY": self.files.auth_path}

    def _warn_escalation(self, child: Child) -> None:
        log.get().warning(
            "%s (pid %d) did not exit within %.1f s of SIGTERM; sending SIGKILL to its process "
            "group. Raise --kill-grace (XSUPERVISE_KILL_GRACE) if it needs longer.",
            os.path.basename(child.argv[0]), child.pid, self.settings.kill_grace)

    def _warn_stuck(self, child: Child) -> None:
        log.get().error(
            "%s (pid %d) has not exited %.1f s after SIGKILL: it is stuck in the kernel (D state: "
            "a hung disk, network filesystem or device); still waiting for it, without blocking.",
            os.path.basename(child.argv[0]), child.pid, self.settings.kill_grace)

    def stop_steps(self) -> Steps[int]:
        """Stop and reap the server's group; remove the socket it left, if any (and our files,
        if they are its alone)."""
        if self.exit_status is not None:
            return self.exit_status
        try:
            self.exit_status = yield from self.child.stop_steps(
                self.settings.kill_grace, self._warn_escalation, self._warn_stuck)
        except GeneratorExit:
            self.kill_now()  # closed while waiting: no more yielding is possible
            raise
        finally:
            self.release()  # also when a second signal cut the grace short (it was SIGKILLed)
        return self.exit_status

    def kill_now(self) -> None:
        """SIGKILL the group and clean up, for when no waiting is possible (a closed generator):
        the reap waits at most _KILL_NOW_WAIT, so that a stuck server cannot hang its caller."""
        if self.exit_status is None:
            self.child.signal(signal.SIGKILL)
            self.exit_status = self.child.reap_within(_KILL_NOW_WAIT)
            if self.exit_status is None:
                self._warn_stuck(self.child)
            self.release()

    def release(self) -> None:
        """Once the server has ended: reap it (if it has) and remove what it leaves behind."""
        if self.exit_status is None:
            self.exit_status = self.child.try_reap()
        if self.released:
            return
        self.released = True
        if self.number is not None:
            remove_dead_socket(self.number, self.facts.socket_inode if self.facts else None,
                               self.spawned_wall)
        self.output_tail = _output_tail(self.files.log_path, self.log_offset)
        if self.owns_files:
            self.files.remove()


def launch_steps(settings: Settings, runtime: RuntimeDir, number: int | None = None, *,
                 files: SessionFiles | None = None, name: str | None = None,
                 kind: str = "api", reclaim: bool = True) -> Steps[XServer]:
    """Start an X server on ``number`` (None: let it choose) and return it verified ready.

    ``files``: the session's cookie, log and record, when a session runs servers one after
    another; without them a one-off set is made, and removed with the server.
    ``reclaim``: clear what killed supervisors left (for up to twice the kill grace if an
    abandoned server resists SIGTERM: an Offload, so in a worker thread under asyncio).
    """
    owns_files = files is None
    if files is None:
        files = SessionFiles(runtime, name or (f":{number}" if number is not None else "auto"),
                             kind)
    log_fd = read_fd = write_fd = -1
    try:
        log_fd = os.open(files.log_path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        log_offset = os.lseek(log_fd, 0, os.SEEK_END)
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        argv = server_argv(settings.server, number, write_fd, files.auth_path, settings.screen)
    except BaseException:
        for fd in (log_fd, read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
        if owns_files:
            files.remove()
        raise
    try:
        child = spawn(argv, env=child_environment(), pass_fds=(write_fd,),
                      stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                      deathsig=signal.SIGKILL)
    except OSError as exc:
        os.close(read_fd)
        if owns_files:
            files.remove()
        if isinstance(exc, FileNotFoundError):
            where = "does not exist" if "/" in argv[0] else "was not found on PATH"
            raise errors.ServerNotFound(
                f"X server {argv[0]!r} {where}; install it (Debian: apt-get install xvfb) or "
                "name another with --server.") from None
        raise errors.EnvironmentProblem(f"cannot start X server {argv[0]!r}: {exc.strerror}; "
                                        "check that it is an executable program.") from None
    finally:
        os.close(write_fd)
        os.close(log_fd)
    deadline = child.spawned_at + settings.displayfd_timeout
    server = XServer(child, settings, files, owns_files, log_offset, number)
    try:
        # Everything up to the first wait runs while the server initialises (~50 ms): the
        # imports and files here cost nothing a user would notice.
        from ._recovery import reclaim_abandoned
        from ._stale import clean_own_quietly

        log.get()
        files.save(state="starting", server_pid=child.pid, server_ticks=child.start_ticks,
                   server_argv=argv, display=None, socket_inode=None)
        # Both may block (a server that resists SIGTERM, connect() probes): off the loop.
        if reclaim:
            yield Offload(reclaim_abandoned, runtime, settings.kill_grace)
        yield Offload(clean_own_quietly)
        server.number = yield from read_display_number(read_fd, child, deadline)
        server.facts = yield from verify(server.number, child, files.cookie, deadline)
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
    files.save(state="ready", display=server.display, socket_inode=server.facts.socket_inode)
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
    if kind == "refused":
        return errors.NotServing(str(exc), **facts,
                                 hint="Does --server pass its own -auth or access options?")
    if kind in ("garbage", "closed"):
        return errors.BadDisplayFd(str(exc), **facts,
                                   hint="Is --server an X server that supports -displayfd?")
    return errors.NotServing(str(exc), **facts,
                             hint="Is another program interfering with /tmp/.X11-unix?")
