"""The recorder: a process of its own that feeds ffmpeg the frames in which the screen changed.

    python -S -m xsupervise._recorder FPS CONTROL_FD

Run by _recording.py (never by hand). It starts ffmpeg at once (see _ffmpeg.py: its start-up
is paid while the X server initialises), then waits on CONTROL_FD for one JSON line naming
the display, its cookie file and the output path (``go``). From then on it waits for DAMAGE
events (see _damage.py): what changed is grabbed, at most FPS times a second, patched into
the frame it keeps, and the frame goes to ffmpeg as a BMP image. When nothing changes, the
same frame goes again once a second (HEARTBEAT), so that a file cut short by a SIGKILL
still covers all but its last second. ffmpeg's output is copied to the file as it comes.

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
import subprocess
import sys
import time

HEARTBEAT = 1.0  # seconds: the longest stretch without a frame
_FINISH_WAIT = 10.0  # seconds ffmpeg may take to finish the file once its input ends
_CHUNK = 1 << 20


class Failure(Exception):
    """The recording cannot go on; the message is the one line its owner reports."""


class _DisplayGone(Exception):
    pass


class Encoder:
    """ffmpeg, fed BMP frames on stdin; its output copied to ``output`` once that is set.
    Its pipes are non-blocking and served together: ffmpeg may be writing while we write."""

    def __init__(self) -> None:
        from ._ffmpeg import encoder_argv

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


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


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
        from ._damage import DamageClient, XError, read_cookie

        try:
            self.client = DamageClient(number, read_cookie(xauthority))
        except (OSError, XError) as exc:
            raise Failure(f"cannot watch display :{number} ({exc})") from None
        self.encoder = encoder
        screen = self.client.screen
        self.interval = 1.0 / fps
        self.header, self.frame = _bmp(screen.width, screen.height, screen.pixel_format)
        self.pixels = self.frame[len(self.header) :]
        self.scratch = memoryview(bytearray(len(self.pixels)))
        self.sent_at = 0.0

    def grab(self, rect: tuple[int, int, int, int]) -> None:
        from ._damage import XError

        try:
            self.client.take(rect, self.pixels, self.scratch)
        except (OSError, XError) as exc:
            raise _DisplayGone(str(exc)) from None

    def changes(self) -> tuple[int, int, int, int] | None:
        from ._damage import XError

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
        self.send()  # the last frame, stamped now: the file lasts as long as the recording


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
