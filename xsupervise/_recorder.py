"""The recorder: a process of its own that feeds ffmpeg the frames in which the screen changed.

    python -m xsupervise._recorder NUMBER XAUTHORITY OUTPUT_FD FPS CONTROL_FD

Run by _recording.Recording (never by hand). It connects to display :NUMBER with the cookie
in XAUTHORITY, starts ffmpeg (see _ffmpeg.py) writing to the already-open file OUTPUT_FD, and
from then on waits for DAMAGE events (see _damage.py): what changed is grabbed, at most FPS
times a second, patched into the frame it keeps, and the whole frame goes to ffmpeg's stdin.
When nothing changes, the same frame goes again once a second, so that a file cut short (a
SIGKILL) still covers all but its last second.

It finishes (a last frame, stamped now; ffmpeg's stdin closed; ffmpeg waited for) when
CONTROL_FD reaches end of file (its owner closed it, or died), on SIGTERM/SIGINT/SIGHUP, or
when the display goes away. Its stdout is its owner's pipe: ``ready`` once the first frame
is in ffmpeg's hands, and, if it fails, one line saying why (exit status 1).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

HEARTBEAT = 1.0  # seconds: the longest stretch without a frame
_FINISH_WAIT = 10.0  # seconds ffmpeg may take to finish the file once its input ends
_PIPE_SIZE = 1 << 20  # bytes: ffmpeg's stdin takes a frame in a few writes, not hundreds


class Failure(Exception):
    """The recording cannot go on; the message is the one line its owner reports."""


class Recorder:
    def __init__(self, number: int, xauthority: str, output_fd: int, fps: float):
        from ._damage import DamageClient, XError, read_cookie
        from ._ffmpeg import encoder_argv

        try:
            self.client = DamageClient(number, read_cookie(xauthority))
        except (OSError, XError) as exc:
            raise Failure(f"cannot watch display :{number} ({exc})") from None
        screen = self.client.screen
        self.interval = 1.0 / fps
        self.frame = memoryview(bytearray(screen.width * screen.height * screen.bytes_per_pixel))
        self.scratch = memoryview(bytearray(len(self.frame)))
        argv = encoder_argv(
            "ffmpeg",
            screen.width,
            screen.height,
            screen.pixel_format,
            f"file:/proc/self/fd/{output_fd}",
        )
        try:
            self.ffmpeg = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=(output_fd,),
            )
        except OSError as exc:
            raise Failure(f"cannot run ffmpeg ({exc.strerror})") from None
        assert self.ffmpeg.stdin is not None and self.ffmpeg.stderr is not None
        self.stdin = self.ffmpeg.stdin.fileno()
        self.errors = self.ffmpeg.stderr.fileno()
        self.said = b""  # ffmpeg's output (errors only), for the line we report
        try:
            import fcntl

            fcntl.fcntl(self.stdin, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            pass  # over /proc/sys/fs/pipe-max-size: the default works, with more writes
        self.sent_at = 0.0

    def grab(self, rect: tuple[int, int, int, int]) -> None:
        from ._damage import XError

        try:
            self.client.take(rect, self.frame, self.scratch)
        except (OSError, XError) as exc:
            raise _DisplayGone(str(exc)) from None

    def send(self) -> None:
        """The frame to ffmpeg (its timestamp is when ffmpeg reads it)."""
        try:
            self._write_all()
        except BrokenPipeError:
            raise self.ffmpeg_failed() from None
        self.sent_at = time.monotonic()

    def _write_all(self) -> None:
        done = 0
        while done < len(self.frame):
            done += os.write(self.stdin, self.frame[done:])

    def drain_errors(self) -> bool:
        """Read what ffmpeg said; False once its stderr is closed."""
        chunk = os.read(self.errors, 4096)
        self.said = (self.said + chunk)[-4096:]
        return bool(chunk)

    def ffmpeg_failed(self) -> Failure:
        status = self.ffmpeg.wait()
        while self.drain_errors():
            pass
        lines = self.said.decode(errors="replace").strip().splitlines()
        said = f": {lines[-1].strip()}" if lines else ""
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        return Failure(f"ffmpeg (pid {self.ffmpeg.pid}) {how}{said}")

    def run(self, control_fd: int, wakeup_fd: int, stop: list[bool]) -> None:
        """Record until told to stop; then finish the file."""
        screen = self.client.screen
        try:
            self.grab((0, 0, screen.width, screen.height))
        except _DisplayGone as gone:
            raise Failure(f"the display went away before the first frame ({gone})") from None
        self.send()
        os.write(1, b"ready\n")
        poller = select.poll()
        for fd in (self.client.fileno(), control_fd, wakeup_fd, self.errors):
            poller.register(fd, select.POLLIN)
        changed = None
        try:
            while not stop[0]:
                now = time.monotonic()
                if changed is not None and now >= self.sent_at + self.interval:
                    self.grab(changed)
                    self.send()
                    changed = self._changes()  # what was drawn while we grabbed
                elif now >= self.sent_at + HEARTBEAT:
                    self.send()
                due = self.sent_at + (self.interval if changed is not None else HEARTBEAT)
                for fd, _ in poller.poll(max(0.0, due - time.monotonic()) * 1000):
                    if fd == control_fd and not os.read(control_fd, 64):
                        stop[0] = True  # our owner closed it, or died
                    elif fd == wakeup_fd:
                        os.read(wakeup_fd, 64)
                    elif fd == self.errors and not self.drain_errors():
                        raise self.ffmpeg_failed()
                    elif fd == self.client.fileno():
                        changed = self._changes()
            changed = self._changes()
            if changed is not None:
                self.grab(changed)
        except _DisplayGone:
            pass  # the server ended: the file ends with the last frame it showed
        self.send()  # the last frame, stamped now: the file lasts as long as the recording
        self.finish()

    def _changes(self) -> tuple[int, int, int, int] | None:
        from ._damage import XError

        try:
            return self.client.changes()
        except (OSError, XError) as exc:
            raise _DisplayGone(str(exc)) from None

    def finish(self) -> None:
        """Close ffmpeg's input and let it write the end of the file."""
        os.close(self.stdin)
        self.ffmpeg.stdin = None
        deadline = time.monotonic() + _FINISH_WAIT
        while select.select([self.errors], [], [], max(0.0, deadline - time.monotonic()))[0]:
            if not self.drain_errors():
                break
        if self.ffmpeg.poll() is None:
            try:
                self.ffmpeg.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.ffmpeg.kill()
                self.ffmpeg.wait()
                raise Failure(
                    f"ffmpeg (pid {self.ffmpeg.pid}) had not finished the file "
                    f"{_FINISH_WAIT:g} s after its input ended; it was killed"
                ) from None
        if self.ffmpeg.returncode != 0:
            raise self.ffmpeg_failed()


class _DisplayGone(Exception):
    pass


def main(argv: list[str]) -> int:
    number, xauthority, output_fd, fps, control_fd = argv
    stop = [False]
    wakeup_read, wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wakeup_write)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda _signum, _frame: stop.__setitem__(0, True))
    try:
        recorder = Recorder(int(number), xauthority, int(output_fd), float(fps))
        os.close(int(output_fd))  # ffmpeg has it: the file is done when ffmpeg is
        recorder.run(int(control_fd), wakeup_read, stop)
    except Failure as failure:
        os.write(1, f"{failure}\n".encode())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
