"""ffmpeg for recordings: where it is, and how it encodes what the recorder feeds it.

The recorder (media/recorder.py) starts ffmpeg before it knows the display: loading ffmpeg's
two hundred libraries takes ~50 ms, paid while the X server initialises. So frames go in as
BMP images (``image2pipe``), each carrying its own size, not as raw video, whose size ffmpeg
must be told up front; and the encoded stream comes out on ffmpeg's stdout, which the
recorder copies to the file it opens once the display is ready (a failed start leaves no
file).

Frames are written only when the screen changed (and twice a second when it did not): a
variable frame rate. ffmpeg stamps each frame with the wall clock as it reads it
(``-use_wallclock_as_timestamps``; ``-framerate 1000`` makes the time base 1 ms) and passes
the timestamps through. H.264 (libx264, ultrafast, zerolatency: no frame is held back).

The file must stay playable if everything is SIGKILLed mid-recording: a fragmented MP4 (an
empty ``moov`` first), one fragment per frame (``frag_every_frame``), flushed as written
(``flush_packets``). A plain MP4 writes its index only at the end; a fragmented one with
ffmpeg's default fragments (one per keyframe, 250 frames) holds nothing readable for seconds.
A fragment is complete once the next frame arrives, so a cut file lacks at most its last
half second (the recorder's heartbeat).
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time

from ..host import errors

INSTALL = "install it (Debian: apt-get install ffmpeg)"
KEYFRAME_EVERY = 2  # seconds: where a player can start, or seek to
_FINISH_WAIT = 10.0  # seconds ffmpeg may take to finish the file once its input ends
_CHUNK = 1 << 20


class Failure(Exception):
    """The recording cannot go on; the message is the one line the recorder's owner reports."""


def find_ffmpeg() -> str:
    """ffmpeg's path, or EnvironmentProblem (exit 5) saying how to install it."""
    found = shutil.which("ffmpeg")
    if found is None:
        raise errors.EnvironmentProblem(
            f"recording needs ffmpeg, which was not found on PATH; {INSTALL}, or drop the "
            "record setting (--record, XSUPERVISE_RECORD)."
        )
    return found


def encoder_argv(ffmpeg: str = "ffmpeg") -> list[str]:
    """ffmpeg reading BMP frames on stdin, writing a fragmented MP4 (H.264) on stdout."""
    return [
        ffmpeg,
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        # Input: BMP images, timed as they arrive; no probing beyond the first one.
        "-f",
        "image2pipe",
        "-c:v",
        "bmp",
        "-framerate",
        "1000",
        "-fpsprobesize",
        "0",
        "-probesize",
        "32",
        "-analyzeduration",
        "0",
        "-use_wallclock_as_timestamps",
        "1",
        "-i",
        "pipe:0",
        # 4:2:0 needs even sizes: an odd width or height gets one black line of padding.
        "-vf",
        "pad=ceil(iw/2)*2:ceil(ih/2)*2",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-tune",
        "zerolatency",
        "-pix_fmt",
        "yuv420p",
        "-fps_mode",
        "passthrough",
        "-force_key_frames",
        f"expr:gte(t,n_forced*{KEYFRAME_EVERY})",
        "-flush_packets",
        "1",
        "-movflags",
        "+frag_every_frame+empty_moov+default_base_moof",
        "-f",
        "mp4",
        "pipe:1",
    ]


class Encoder:
    """ffmpeg, fed BMP frames on stdin; its output copied to ``output`` once that is set.
    Its pipes are non-blocking and served together: ffmpeg may be writing while we write."""

    def __init__(self) -> None:
        from .ffmpeg import encoder_argv

        try:
            self.process = subprocess.Popen(
                encoder_argv(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            raise Failure(f"cannot run ffmpeg ({exc.strerror})") from None
        streams = (self.process.stdin, self.process.stdout, self.process.stderr)
        self.stdin, self.stdout, self.stderr = (stream.fileno() for stream in streams)  # type: ignore[union-attr]
        for fd in (self.stdin, self.stdout, self.stderr):
            os.set_blocking(fd, False)
        try:  # a frame in a few writes, not eighty (the default pipe holds 64 KiB)
            import fcntl

            fcntl.fcntl(self.stdin, fcntl.F_SETPIPE_SZ, _CHUNK)
        except OSError:
            pass  # above /proc/sys/fs/pipe-max-size: the default works, with more writes
        self.output = -1
        self.held = bytearray()  # what ffmpeg wrote before the file was open
        self.said = b""  # its error output, for the line we report
        self.open = {self.stdout, self.stderr}

    def serve(self, ready: set[int]) -> None:
        """Take what ffmpeg wrote on its readable pipes."""
        for fd in ready & self.open:
            try:
                chunk = os.read(fd, _CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                self.open.discard(fd)
            elif fd == self.stderr:
                self.said = (self.said + chunk)[-4096:]
            elif self.output >= 0:
                _write_all(self.output, chunk)
            else:
                self.held += chunk

    def start_output(self, fd: int) -> None:
        self.output = fd
        _write_all(fd, self.held)
        self.held.clear()

    def send(self, data: memoryview, extra: tuple[int, ...] = ()) -> set[int]:
        """Write one frame, serving ffmpeg's output meanwhile; the ``extra`` fds that became
        readable while we wrote."""
        done, noticed = 0, set()
        poller = select.poll()
        poller.register(self.stdin, select.POLLOUT)
        for fd in (*self.open, *extra):
            poller.register(fd, select.POLLIN)
        while done < len(data):
            events = dict(poller.poll(1000))
            if self.stdin in events:
                if events[self.stdin] & (select.POLLERR | select.POLLHUP):
                    raise self.failed()
                try:
                    done += os.write(self.stdin, data[done : done + _CHUNK])
                except BlockingIOError:
                    pass
                except BrokenPipeError:
                    raise self.failed() from None
            readable = {fd for fd, event in events.items() if fd != self.stdin}
            self.serve(readable)
            # The caller's fds are its to read: noted once, then no longer polled here
            # (they would stay readable); so are ffmpeg's pipes once closed.
            noticed |= readable & set(extra)
            for fd in noticed | (readable - self.open - set(extra)):
                if fd in readable:
                    poller.unregister(fd)
        return noticed

    def failed(self) -> Failure:
        status = self.process.wait()
        self.drain(time.monotonic() + 1.0)
        lines = self.said.decode(errors="replace").strip().splitlines()
        said = f": {lines[-1].strip()}" if lines else ""
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        return Failure(f"ffmpeg (pid {self.process.pid}) {how}{said}")

    def drain(self, deadline: float) -> None:
        """Copy what ffmpeg still writes, until it closes its pipes or ``deadline``."""
        while self.open and time.monotonic() < deadline:
            ready = select.select(list(self.open), [], [], deadline - time.monotonic())[0]
            self.serve(set(ready))

    def finish(self) -> None:
        """End ffmpeg's input; write the rest of the file; fail if ffmpeg did."""
        os.close(self.stdin)
        self.process.stdin = None
        deadline = time.monotonic() + _FINISH_WAIT
        self.drain(deadline)
        try:
            self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise Failure(
                f"ffmpeg (pid {self.process.pid}) had not finished the file {_FINISH_WAIT:g} s "
                "after its input ended; it was killed"
            ) from None
        if self.process.returncode != 0:
            raise self.failed()


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
