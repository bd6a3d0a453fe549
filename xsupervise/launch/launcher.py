"""The one launch path: spawn the X server, read -displayfd, verify, and tear down completely.

Used by ``xsupervise start``/``run``, ``Display`` and (through an event loop) ``AsyncDisplay``.
Whatever goes wrong after the spawn, the server's process group is stopped (TERM, grace,
KILL) and reaped, and every file it or we created for it is removed before the error is raised.
"""

from __future__ import annotations

import os
import signal

from ..host import errors, log
from ..host.log import child_environment
from ..host.paths import RuntimeDir
from .process import DEVNULL, Offload, Steps, spawn
from .profiles import plan_launch
from .server import SessionFiles, XServer
from .settings import Settings
from .x11 import DisplayFdError, HandshakeError, read_display_number, verify

__all__ = ["SessionFiles", "XServer", "launch_steps"]  # the first two live in launch/server.py


def launch_steps(
    settings: Settings,
    runtime: RuntimeDir,
    number: int | None = None,
    *,
    files: SessionFiles | None = None,
    name: str | None = None,
    kind: str = "api",
    reclaim: bool = True,
) -> Steps[XServer]:
    """Start an X server on ``number`` (None: let it choose) and return it verified ready.

    ``files``: the session's cookie, log and record, when a session runs servers one after
    another; without them a one-off set is made, and removed with the server.
    ``reclaim``: clear what killed supervisors left (for up to twice the kill grace if an
    abandoned server resists SIGTERM: an Offload, so in a worker thread under asyncio).
    """
    owns_files = files is None
    if files is None:
        files = SessionFiles(
            runtime, name or (f":{number}" if number is not None else "auto"), kind
        )
    log_fd = read_fd = write_fd = -1
    boundary = None
    if settings.record:  # ffmpeg and the file's directory, before anything is spawned
        from .ffmpeg import find_ffmpeg
        from .recording import check_output

        find_ffmpeg()
        check_output(settings.record)
    if reclaim and number is not None:
        # A fixed number may be what a killed supervisor's leftover still serves: clear it
        # first. (With :auto the server may start meanwhile, so it is done after the spawn.)
        from .server import reclaim_abandoned

        yield Offload(reclaim_abandoned, runtime, settings.kill_grace)
    try:
        files.create()  # the cookie and log appear now, just before the first spawn
        log_fd = os.open(files.log_path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        log_offset = os.lseek(log_fd, 0, os.SEEK_END)
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        from .containment import NS_DISPLAYFD, choose

        files.spawns += 1
        boundary = choose(f"{files.token}-{files.spawns}")
        # In a PID namespace the pipe goes in as stdin and the server finds it as fd 3.
        inside = boundary.namespace is not None
        displayfd = NS_DISPLAYFD if inside else write_fd
        plan = plan_launch(settings, number, displayfd, files)  # a profile or a raw command
        argv = plan.argv
        companion = None  # Xwayland's compositor, started first (see launch.compositor.Companion)
        if plan.companion is not None:
            companion = yield from plan.companion.start_steps(settings, files)
    except BaseException:
        for fd in (log_fd, read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
        if boundary is not None:
            boundary.remove()  # a cgroup made for a spawn that never came
        if owns_files:
            files.remove()
        raise
    try:
        child = spawn(
            argv,
            env=child_environment(plan.env),
            pass_fds=() if inside else (write_fd,),
            stdin=write_fd if inside else DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            deathsig=signal.SIGKILL,
            boundary=boundary,
        )
    except BaseException as exc:  # nothing of this launch may outlive it, whatever failed
        os.close(read_fd)
        if companion is not None:
            companion.signal(signal.SIGKILL)
            companion.reap_within(settings.kill_grace)
        if owns_files:
            files.remove()
        if not isinstance(exc, OSError):
            raise
        if isinstance(exc, FileNotFoundError):
            where = "does not exist" if "/" in argv[0] else "was not found on PATH"
            raise errors.ServerNotFound(
                f"X server {argv[0]!r} {where}; install it (Debian: apt-get install "
                f"{plan.package or 'xvfb'}) or name another with --server."
            ) from None
        raise errors.EnvironmentProblem(
            f"cannot start X server {argv[0]!r}: {exc.strerror}; "
            "check that it is an executable program."
        ) from None
    finally:
        os.close(write_fd)
        os.close(log_fd)
    child.started_fd = read_fd  # a stop while it starts holds its SIGTERM till then: _teardown
    deadline = child.spawned_at + settings.displayfd_timeout
    server = XServer(child, settings, files, owns_files, log_offset, number)
    server.companion, server.vnc = companion, plan.vnc
    if settings.record:  # spawned now, recording once ready: see launch.recording.arm
        server.arm_recording()
    try:
        # Everything up to the first wait runs while the server initialises (~40 ms): the
        # imports and files here cost nothing a user would notice. Once it is ready, every
        # millisecond is on the user's clock: what verify and the log line import, import now.
        import socket  # noqa: F401  (for verify)
        import subprocess  # noqa: F401  (for what runs next: a COMMAND, a window manager)

        from ..host.sockets import clean_own_quietly
        from .server import reclaim_abandoned

        logger = log.get()

        files.save(
            server_pid=child.pid,
            server_ticks=child.start_ticks,
            server_argv=argv,
            containment=child.boundary.kind if child.boundary else None,
            cgroup=child.boundary.cgroup if child.boundary else None,
            display=None,
            socket_inode=None,
            vnc=plan.vnc.to_json() if plan.vnc else None,
        )
        # Both may block (a server that resists SIGTERM, connect() probes): off the loop.
        if reclaim and number is None:
            yield Offload(reclaim_abandoned, runtime, settings.kill_grace)
        yield Offload(clean_own_quietly)
        child.find_program()  # now, while it runs: a failure must name it (see launch.containment)
        server.number = yield from read_display_number(read_fd, child, deadline)
        child.started_fd = -1  # it has started: a stop may SIGTERM it at once (see _teardown)
        if child.boundary is not None:
            pid = child.find_program()
            logger.info("X server pid %d contained by %s", pid, child.boundary.describe())
        server.facts = yield from verify(server.number, child, files.cookie, deadline)
        if settings.wm:  # ready means managed, for tests that need focus (see launch/wm.py)
            from .wm import start_steps as start_wm

            server.wm = yield from start_wm(server)
        if server.recording is not None:  # it records from now on: see launch/recording.py
            server.start_recording()
    except (DisplayFdError, HandshakeError) as exc:
        child.find_program()  # the error names the server, not a namespace's init
        child.started_fd = -1  # it will not start now: SIGTERM at once (see term_steps)
        yield from server.stop_steps()
        from .start_failure import start_error

        raise (yield from start_error(exc, server)) from None
    except GeneratorExit:
        # Closed half-way (the driver gave up on us): no more waiting is possible here.
        server.kill_now()
        raise
    except BaseException:
        yield from server.stop_steps()
        raise
    finally:
        child.started_fd = -1
        os.close(read_fd)
    files.save(
        display=server.display,
        socket_inode=server.facts.socket_inode,
        server_pid=child.program_pid,
        server_ticks=child.program_ticks,
    )
    return server
