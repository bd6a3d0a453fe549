"""A recording of a display: the recorder process (media/recorder.py), run as a companion of its X
server, and how its owner starts it, stops it and hears of its end.

- **Armed early, contained.** It is spawned with the server (``arm``: ffmpeg's start-up
  overlaps the server's) in a boundary of its own (launch.containment.choose), so a SIGKILLed
  owner takes it along at once; ``go`` names the display and file once it is ready.
- **Finished, not killed.** Closing its control pipe asks for a last frame (``let_go_steps``
  returns once it is taken: the server may stop) and the end of the file (``finish_steps``).
  Only a recorder that has not finished within the grace gets TERM, grace, KILL.
- **One line when it dies.** Its stdout is a pipe to us: ``ready``, ``last``, and at most one
  line saying why it failed (``death_line``). It is never restarted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from ..host import errors
from ..host.processes import Wait
from .process import Child, describe_status, spawn

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..host.processes import Steps

READY_WAIT = 10.0  # seconds for a recorder's first frame (ffmpeg's start-up, mostly)
_PACKAGE_PARENT = os.path.abspath(__file__).rsplit(os.sep, 3)[0]  # of xsupervise/launch/this


def check_output(path: str) -> None:
    """Refuse a recording path whose directory we cannot write, before anything starts."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.access(directory, os.W_OK | os.X_OK):
        raise errors.UsageError(
            f"cannot write the recording to {path}: its directory {directory} is missing or "
            "not writable; name a file in a writable directory."
        )


class Recording:
    """A recorder of ours on display ``:number``, writing ``path``."""

    def __init__(self, child: Child, control_fd: int, status_fd: int, path: str, display: str):
        self.child, self.path, self.display = child, path, display
        self._control_fd, self._status_fd = control_fd, status_fd
        self._said = b""
        self.reported = False  # its end was reported (death_line): once is enough
        self.ready = False
        self.started_wall = time.time()

    def __repr__(self) -> str:
        return f"<Recording of {self.display} to {self.path} {self.child!r}>"

    @property
    def pidfd(self) -> int:
        return self.child.pidfd

    def go(self, number: int, xauthority: str, path: str) -> None:
        """Start recording display ``:number`` to ``path`` (until then it only waits)."""
        import json

        self.path, self.display = path, f":{number}"
        self.started_wall = time.time()
        line = {"display": number, "xauthority": xauthority, "path": os.path.abspath(path)}
        try:
            os.write(self._control_fd, json.dumps(line).encode() + b"\n")  # < PIPE_BUF: whole
        except OSError:
            pass  # it has ended already: its pidfd says so, and death_line why

    def _read_status(self) -> bool | None:
        """Read what the recorder said so far; False at its end of file, None if it has
        nothing more to say for now."""
        try:
            chunk = os.read(self._status_fd, 4096)
        except BlockingIOError:
            return None
        self._said = (self._said + chunk)[-8192:]
        if b"ready\n" in self._said:
            self.ready = True
        return bool(chunk)

    def ready_steps(self, timeout: float) -> Steps[bool]:
        """Wait until the first frame is in ffmpeg's hands (True), or the recorder ended."""
        deadline = time.monotonic() + timeout
        while not self.ready:
            ready = yield Wait((self._status_fd,), deadline)
            if not ready or self._read_status() is False:
                return self.ready
        return True

    def let_go_steps(self, grace: float) -> Steps[None]:
        """Ask the recorder to finish; return once it needs the display no more (its last
        frame taken: it says ``last``), so that the server's stop overlaps ffmpeg's end."""
        if self._control_fd >= 0:
            os.close(self._control_fd)  # end of file: its cue to finish
            self._control_fd = -1
        deadline = time.monotonic() + grace
        while b"last\n" not in self._said and self.child.returncode is None:
            ready = yield Wait((self._status_fd, self.child.pidfd), deadline)
            if not ready or self.child.pidfd in ready or self._read_status() is False:
                return

    def finish_steps(self, grace: float) -> Steps[int]:
        """Ask the recorder to finish the file and wait for it (see the module's docstring)."""
        if self._control_fd >= 0:
            os.close(self._control_fd)  # end of file: its cue to finish
            self._control_fd = -1
        if self.child.returncode is None:
            yield Wait((self.child.pidfd,), time.monotonic() + grace)
        status = yield from self.child.stop_steps(grace)
        self._close()
        return status

    def kill_now(self, timeout: float) -> None:
        """For a caller that can no longer wait: SIGKILL it (the file stays playable)."""
        if self.child.returncode is None:
            self.child.signal(9)  # SIGKILL
            self.child.reap_within(timeout)
        self._close()

    def _close(self) -> None:
        if self._control_fd >= 0:
            os.close(self._control_fd)
            self._control_fd = -1
        if self._status_fd >= 0:
            while self._read_status():
                pass
            os.close(self._status_fd)
            self._status_fd = -1

    def failure(self) -> str | None:
        """Once it has ended: why it failed, in its own words (None: it did not say)."""
        lines = [
            line
            for line in self._said.decode(errors="replace").splitlines()
            if line.strip() and line not in ("ready", "last")
        ]
        return lines[-1].strip() if lines else None

    def death_line(self, status: int, then: str = "the display goes on without a recording") -> str:
        """The one line that reports a recorder that ended on its own."""
        self.reported = True
        self._close()
        why = self.failure() or describe_status(status)
        return (
            f"the recorder of {self.display} (pid {self.child.pid}) stopped: {why}; "
            f"{self.path} ends there, and {then}."
        )


def arm(fps: float, label: str) -> Recording:
    """Spawn a recorder that starts ffmpeg and waits for ``Recording.go``; ``label`` names its
    boundary (a cgroup's name). EnvironmentProblem without ffmpeg."""
    from ..host.log import child_environment
    from .containment import NS_DISPLAYFD, choose
    from .ffmpeg import find_ffmpeg

    find_ffmpeg()
    control_read, control_write = os.pipe2(os.O_CLOEXEC)
    status_read, status_write = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(status_read, False)
    os.set_blocking(control_write, False)
    try:
        boundary = choose(label)
        # In a PID namespace the control pipe goes in as stdin and arrives as fd 3 (as the
        # X server's -displayfd does, see launch.containment); elsewhere it keeps its number.
        inside = boundary.namespace is not None
        control = NS_DISPLAYFD if inside else control_read
        # -S: no site-packages to scan (PYTHONPATH finds us): it starts in ~5 ms, not 20.
        argv = [sys.executable, "-S", "-m", "xsupervise.media.recorder", f"{fps:g}", str(control)]
        inherited = os.environ.get("PYTHONPATH")  # it imports xsupervise from where we did
        python_path = _PACKAGE_PARENT + (os.pathsep + inherited if inherited else "")
        child = spawn(
            argv,
            env=child_environment({"PYTHONPATH": python_path}),
            pass_fds=() if inside else (control_read,),
            stdin=control_read if inside else subprocess.DEVNULL,
            stdout=status_write,
            stderr=status_write,
            boundary=boundary,
        )
    except BaseException:
        for fd in (control_write, status_read):
            os.close(fd)
        raise
    finally:
        for fd in (control_read, status_write):
            os.close(fd)
    return Recording(child, control_write, status_read, "", "")


def start_recording(number: int, xauthority: str, path: str, fps: float, label: str) -> Recording:
    """Record display ``:number`` to ``path`` from now on (see ``Recording.ready_steps``)."""
    check_output(path)
    recording = arm(fps, label)
    recording.go(number, xauthority, path)
    return recording


def recording_path(path: str, count: int) -> str:
    """The file of a session's ``count``-th recording: ``path`` for the first, then (a
    restarted server's) ``NAME.restart-N.EXT``, so that no recording overwrites another."""
    if count <= 1:
        return path
    stem, ext = os.path.splitext(path)
    return f"{stem}.restart-{count - 1}{ext}"


def finish_steps(recording: Recording, grace: float) -> Steps[int]:
    """Finish ``recording``; a recorder that failed on its way out says so in one line."""
    status = yield from recording.finish_steps(grace)
    if status != 0 and not recording.reported:
        from ..host import log

        log.get().error("%s", recording.death_line(status))
    return status


def _begin_steps(display: object, path: str) -> Steps[Recording]:
    """Record ``display`` (a started Display) from now on; return once the first frame is
    taken."""
    from ..host.paths import new_token

    fps = display._settings.record_fps  # type: ignore[attr-defined]
    number, xauthority = display.number, display.xauthority  # type: ignore[attr-defined]
    recording = start_recording(number, xauthority, path, fps, f"{new_token()}-rec")
    try:
        yield from recording.ready_steps(READY_WAIT)
    except BaseException:
        recording.kill_now(1.0)
        raise
    return recording


@contextmanager
def recording_block(display: object, path: str) -> Iterator[str]:
    """``Display.record``: a recording for the length of a ``with`` block."""
    from ..host.processes import run_blocking

    grace = display._settings.kill_grace  # type: ignore[attr-defined]
    recording = run_blocking(_begin_steps(display, path))
    try:
        yield path
    finally:
        run_blocking(finish_steps(recording, grace))


@asynccontextmanager
async def async_recording_block(display: object, path: str) -> AsyncIterator[str]:
    """``AsyncDisplay.record``: the same, its waits driven by the event loop."""
    from ..host.processes import run_steps

    grace = display._settings.kill_grace  # type: ignore[attr-defined]
    recording = await run_steps(_begin_steps(display, path))
    try:
        yield path
    finally:
        await run_steps(finish_steps(recording, grace))
