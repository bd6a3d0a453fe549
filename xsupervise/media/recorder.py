"""The recorder: a process of its own that feeds ffmpeg the frames in which the screen changed.

    python -S -m xsupervise.media.recorder FPS CONTROL_FD

Run by launch/recording.py (never by hand). It starts ffmpeg at once (launch/ffmpeg.py: its
start-up is paid while the X server initialises), then waits on CONTROL_FD for one JSON line naming
the display, its cookie file and the output path (``go``). From then on it waits for DAMAGE
events (see media/damage.py): what changed is grabbed, at most FPS times a second, patched into
the frame it keeps, and the frame goes to ffmpeg as a BMP image. When nothing changes, the
same frame goes again every HEARTBEAT (half a second), so that a file cut short by a SIGKILL
still covers all but its last half second. ffmpeg's output is copied to the file as it comes.

It finishes (a last frame, stamped now; ffmpeg's input closed; the rest of its output
written) when CONTROL_FD reaches end of file (its owner closed it, or died), on SIGTERM,
SIGINT or SIGHUP, or when the display goes away. End of file before ``go``: it leaves, and no
file is made. Its stdout is its owner's pipe: ``ready`` once the first frame is in ffmpeg's
hands, and, if it fails, one line saying why (exit status 1).
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

from ..launch.ffmpeg import Failure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..launch.ffmpeg import Encoder

HEARTBEAT = 0.5  # seconds: the longest stretch without a frame (and what a SIGKILL loses)
_END_MARGIN = 0.05  # seconds: a last frame this close to the one before adds nothing


class _DisplayGone(Exception):
    pass


def _open_output(path: str) -> int:
    """The file, created or emptied, never through a symlink (one planted in /tmp)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o666)
    except OSError as exc:
        raise Failure(f"cannot write {path} ({exc.strerror})") from None


def _read_go(control_fd: int, wakeup_fd: int, stop: list[bool]) -> dict[str, object] | None:
    """The owner's one JSON line, or None if it closed the pipe (or we were signalled)."""
    import json

    line = b""
    while not line.endswith(b"\n") and not stop[0]:
        if control_fd in select.select([control_fd, wakeup_fd], [], [])[0]:
            chunk = os.read(control_fd, 4096)
            if not chunk:
                return None
            line += chunk
    if stop[0]:
        return None
    go: dict[str, object] = json.loads(line)
    return go


class Recorder:
    """The frames of one display, as ffmpeg gets them."""

    def __init__(self, encoder: Encoder, number: int, xauthority: str, fps: float):
        from ..launch.x11 import read_cookie
        from .damage import DamageClient
        from .xstream import XError

        try:
            self.client = DamageClient(number, read_cookie(xauthority))
        except (OSError, ValueError, XError) as exc:
            raise Failure(f"cannot watch display :{number} ({exc})") from None
        self.encoder = encoder
        screen = self.client.screen
        self.interval = 1.0 / fps
        self.header, self.frame = _bmp(screen.width, screen.height, screen.pixel_format)
        self.pixels = self.frame[len(self.header) :]
        self.scratch = memoryview(bytearray(len(self.pixels)))
        self.sent_at = 0.0

    def grab(self, rect: tuple[int, int, int, int]) -> None:
        from .xstream import XError

        try:
            self.client.take(rect, self.pixels, self.scratch)
        except (OSError, XError) as exc:
            raise _DisplayGone(str(exc)) from None

    def changes(self) -> tuple[int, int, int, int] | None:
        from .xstream import XError

        try:
            return self.client.changes()
        except (OSError, XError) as exc:
            raise _DisplayGone(str(exc)) from None

    def send(self, extra: tuple[int, ...] = ()) -> set[int]:
        noticed = self.encoder.send(self.frame, extra)
        self.sent_at = time.monotonic()
        return noticed

    def run(self, control_fd: int, wakeup_fd: int, stop: list[bool]) -> None:
        """Record until told to stop; then send the last frame."""
        screen = self.client.screen
        try:
            self.grab((0, 0, screen.width, screen.height))
        except _DisplayGone as gone:
            raise Failure(f"the display went away before the first frame ({gone})") from None
        self.send()
        os.write(1, b"ready\n")
        watched = (self.client.fileno(), control_fd, wakeup_fd)
        changed = None
        try:
            while not stop[0]:
                now = time.monotonic()
                if changed is not None and now >= self.sent_at + self.interval:
                    self.grab(changed)
                    ready = self.send(watched)
                    changed = self.changes()  # what was drawn while we grabbed
                elif now >= self.sent_at + HEARTBEAT:
                    ready = self.send(watched)
                else:
                    due = self.sent_at + (self.interval if changed is not None else HEARTBEAT)
                    fds = [*watched, *self.encoder.open]
                    timeout = max(0.0, due - time.monotonic())
                    ready = set(select.select(fds, [], [], timeout)[0])
                self.encoder.serve(ready)
                if self.encoder.stdout not in self.encoder.open:
                    raise self.encoder.failed()  # ffmpeg closed its output: it is gone
                if control_fd in ready and not os.read(control_fd, 64):
                    stop[0] = True  # our owner closed it, or died
                if wakeup_fd in ready:
                    os.read(wakeup_fd, 64)
                if self.client.fileno() in ready:
                    changed = self.changes()
            changed = self.changes()
            if changed is not None:
                self.grab(changed)
        except _DisplayGone:
            pass  # the server ended: the file ends with the last frame it showed
        if changed is not None or time.monotonic() >= self.sent_at + _END_MARGIN:
            self.send()  # the last frame, stamped now: the file lasts as long as the recording
        os.write(1, b"last\n")  # the display may go now: ffmpeg finishes the file without it


def _bmp(width: int, height: int, pixel_format: str) -> tuple[bytes, memoryview]:
    """A BMP header (top-down rows: a negative height) and a buffer: header, then pixels."""
    import struct

    bits = 16 if pixel_format.startswith("rgb5") else 32
    masks = b""
    compression = 0  # BI_RGB: 32 bits are B, G, R, unused; 16 bits are 5-5-5
    if pixel_format == "rgb565le":
        compression, masks = 3, struct.pack("<III", 0xF800, 0x07E0, 0x001F)  # BI_BITFIELDS
    size = width * height * bits // 8
    offset = 14 + 40 + len(masks)
    info = struct.pack("<IiiHHIIiiII", 40, width, -height, 1, bits, compression, size, 0, 0, 0, 0)
    header = b"BM" + struct.pack("<IHHI", offset + size, 0, 0, offset) + info + masks
    frame = bytearray(offset + size)
    frame[:offset] = header
    return header, memoryview(frame)


def main(argv: list[str]) -> int:
    fps, control = float(argv[0]), int(argv[1])
    stop = [False]
    wakeup_read, wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wakeup_write)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda _signum, _frame: stop.__setitem__(0, True))
    try:
        from ..launch.ffmpeg import Encoder

        encoder = Encoder()  # first: ffmpeg loads while the display gets ready
        go = _read_go(control, wakeup_read, stop)
        if go is None:  # no display to record after all (a failed start, a stop)
            os.close(encoder.stdin)
            encoder.process.wait()
            return 0
        recorder = Recorder(encoder, int(go["display"]), str(go["xauthority"]), fps)  # type: ignore[call-overload]
        encoder.start_output(_open_output(str(go["path"])))
        recorder.run(control, wakeup_read, stop)
        encoder.finish()
    except Failure as failure:
        os.write(1, f"{failure}\n".encode())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
