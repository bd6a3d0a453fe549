"""The recorder's X connection: what changed on the screen (DAMAGE), and its pixels (GetImage).

A tiny X11 client over the display's unix socket, authenticated by the session's cookie. It
asks the DAMAGE extension to report, on the root window, the bounding box of what was drawn
since we last looked (level BoundingBox: one event each time that box grows, so a window
redrawing continuously costs one event per frame we take, not one per drawing request), and
reads those pixels with core GetImage. The recorder (media/recorder.py) grabs only when something
changed, and only the rectangle that did: a clock that ticks once a second costs one small
GetImage a second, where x11grab copies and converts every whole frame at its frame rate.

Protocol facts (X11, DAMAGE 1.1): events and errors are 32 bytes, replies 32 plus 4 times the
length in their header; DamageNotify is DAMAGE's first event; its version is asked first.
"""

from __future__ import annotations

import socket
import struct

from ..host.paths import socket_path
from ..launch.x11 import refusal_reason, setup_request
from .xstream import Stream, XError

_QUERY_EXTENSION, _GET_IMAGE = 98, 73
_DAMAGE_QUERY_VERSION, _DAMAGE_CREATE, _DAMAGE_SUBTRACT = 0, 1, 3
_LEVEL_BOUNDING_BOX = 2
_Z_PIXMAP = 2
_REPLY, _ERROR, _GENERIC_EVENT = 1, 0, 35
# (depth, bits per pixel, image byte order: 0 is LSBFirst) -> ffmpeg's name of that layout.
# (A BMP, which ffmpeg gets, is little-endian: an MSBFirst server is not recorded.)
PIXEL_FORMATS = {
    (24, 32, 0): "bgr0",
    (32, 32, 0): "bgr0",
    (16, 16, 0): "rgb565le",
    (15, 16, 0): "rgb555le",
}

Rect = tuple[int, int, int, int]  # x, y, width, height


class Screen:
    """Screen 0 as the setup reply describes it, and how its pixels are laid out."""

    __slots__ = ("bytes_per_pixel", "depth", "height", "pixel_format", "root", "width")

    def __init__(self, root: int, width: int, height: int, depth: int, pixel_format: str):
        self.root, self.width, self.height, self.depth = root, width, height, depth
        self.pixel_format = pixel_format
        self.bytes_per_pixel = 2 if pixel_format.startswith("rgb5") else 4


def union(a: Rect | None, b: Rect) -> Rect:
    if a is None:
        return b
    x, y = min(a[0], b[0]), min(a[1], b[1])
    return x, y, max(a[0] + a[2], b[0] + b[2]) - x, max(a[1] + a[3], b[1] + b[3]) - y


class DamageClient(Stream):
    """One connection: ``changes()`` drains the DAMAGE events that arrived (their union),
    ``take(rect)`` re-arms the damage and returns that rectangle's pixels."""

    def __init__(self, number: int, cookie: bytes, timeout: float = 5.0):
        flags = socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        super().__init__(socket.socket(socket.AF_UNIX, flags), timeout)
        self._sequence = 0
        self._pending: Rect | None = None  # damage seen while we waited for a reply
        try:
            self.sock.setblocking(True)  # (a unix connect is immediate, or refused)
            self.sock.connect(socket_path(number))
            self.sock.setblocking(False)
            self.screen, base = self._handshake(cookie)
            self._damage_event = self._init_damage(base)
        except BaseException:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def _handshake(self, cookie: bytes) -> tuple[Screen, int]:
        self._send(setup_request(cookie))
        header = self._read_exactly(8)
        reply = header + self._read_exactly(4 * struct.unpack_from("<H", header, 6)[0])
        reason = refusal_reason(reply)
        if reason is not None:
            raise XError(f"the display refused our cookie: {reason}")
        (resource_base,) = struct.unpack_from("<I", reply, 12)
        (vendor_len,) = struct.unpack_from("<H", reply, 24)
        formats, byte_order = reply[29], reply[30]
        offset = 40 + vendor_len + (-vendor_len % 4)
        bpp = {reply[offset + 8 * i]: reply[offset + 8 * i + 1] for i in range(formats)}
        screen = offset + 8 * formats
        (root,) = struct.unpack_from("<I", reply, screen)
        width, height = struct.unpack_from("<HH", reply, screen + 20)
        depth = reply[screen + 38]
        layout = PIXEL_FORMATS.get((depth, bpp.get(depth, 0), byte_order))
        if layout is None:
            raise XError(
                f"a {depth}-bit screen with this pixel layout cannot be recorded (only "
                "little-endian 15, 16, 24 and 32-bit ones can)"
            )
        return Screen(root, width, height, depth, layout), resource_base

    def _request(self, data: bytes) -> int:
        self._send(data)
        self._sequence = (self._sequence + 1) & 0xFFFF
        return self._sequence

    def _reply_header(self, sequence: int) -> bytes:
        """The first 32 bytes of the reply to request ``sequence`` (its body, 4 times the
        length in bytes 4-7, follows); events that come first are noted, other replies
        skipped."""
        while True:
            message = self._read_exactly(32)
            kind = message[0]
            if kind == _ERROR:
                raise XError(f"X error {message[1]} on request {message[10]}.{message[8]}")
            if kind != _REPLY:
                self._note_event(message)
            elif struct.unpack_from("<H", message, 2)[0] == sequence:
                return message
            else:
                self._read_exactly(4 * struct.unpack_from("<I", message, 4)[0])

    def _reply(self, sequence: int) -> bytes:
        header = self._reply_header(sequence)
        return header + self._read_exactly(4 * struct.unpack_from("<I", header, 4)[0])

    def _note_event(self, event: bytes) -> None:
        if event[0] & 0x7F == _GENERIC_EVENT:  # not asked for; skip its extra length
            self._read_exactly(4 * struct.unpack_from("<I", event, 4)[0])
        elif event[0] & 0x7F == self._damage_event:
            x, y, width, height = struct.unpack_from("<hhHH", event, 16)
            self._pending = union(self._pending, (x, y, width, height))

    def _init_damage(self, resource_base: int) -> int:
        name = b"DAMAGE"
        pad = -len(name) % 4
        query = struct.pack("<BxHHxx", _QUERY_EXTENSION, 2 + (len(name) + pad) // 4, len(name))
        reply = self._reply(self._request(query + name + b"\0" * pad))
        if not reply[8]:
            raise XError("the X server has no DAMAGE extension")
        self._opcode, first_event = reply[9], reply[10]
        version = struct.pack("<BBHII", self._opcode, _DAMAGE_QUERY_VERSION, 3, 1, 1)
        self._reply(self._request(version))
        self._damage = resource_base | 1
        create = struct.pack(
            "<BBHIIBxxx",
            self._opcode,
            _DAMAGE_CREATE,
            4,
            self._damage,
            self.screen.root,
            _LEVEL_BOUNDING_BOX,
        )
        self._request(create)
        return first_event

    # -- what the recorder asks ------------------------------------------------------------
    def changes(self) -> Rect | None:
        """The union of the damage reported so far (reading what the socket holds, without
        blocking), or None; clipped to the screen."""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                break
            if not chunk:
                raise XError("the X server closed the connection")
            self._buffer += chunk
        while len(self._buffer) - self._start >= 32:
            kind = self._buffer[self._start]
            if kind in (_ERROR, _REPLY):
                raise XError(f"unexpected X message {kind} from the server")
            self._note_event(self._read_exactly(32))
        return self._clip(self._pending)

    def _clip(self, rect: Rect | None) -> Rect | None:
        if rect is None:
            return None
        x, y = max(0, rect[0]), max(0, rect[1])
        right = min(self.screen.width, rect[0] + rect[2])
        bottom = min(self.screen.height, rect[1] + rect[3])
        return (x, y, right - x, bottom - y) if right > x and bottom > y else None

    def take(self, rect: Rect, frame: memoryview, scratch: memoryview) -> None:
        """Clear the damage (so that what is drawn from now on is reported again), then copy
        the pixels of ``rect`` into ``frame`` (the whole screen, row after row: no padding at
        16 and 32 bits per pixel). ``scratch`` holds a partial-width rectangle on its way."""
        subtract = struct.pack("<BBHIII", self._opcode, _DAMAGE_SUBTRACT, 4, self._damage, 0, 0)
        self._request(subtract)
        self._pending = None
        x, y, width, height = rect
        get = struct.pack(
            "<BBHIhhHHI",
            _GET_IMAGE,
            _Z_PIXMAP,
            5,
            self.screen.root,
            x,
            y,
            width,
            height,
            0xFFFFFFFF,
        )
        header = self._reply_header(self._request(get))
        size = 4 * struct.unpack_from("<I", header, 4)[0]
        pixel = self.screen.bytes_per_pixel
        stride, row = self.screen.width * pixel, width * pixel
        if size != row * height:
            self._read_exactly(size)
            raise XError(f"GetImage answered {size} bytes for a {width}x{height} rectangle")
        if width == self.screen.width:  # whole rows: straight into place
            self._read_into(frame[y * stride : (y + height) * stride])
            return
        self._read_into(scratch[:size])
        start = y * stride + x * pixel
        for line in range(height):
            at = start + line * stride
            frame[at : at + row] = scratch[line * row : (line + 1) * row]
