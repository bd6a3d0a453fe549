"""A non-blocking unix socket read as a byte stream, every wait bounded by a timeout: what
the recorder's X connection (media/damage.py) reads replies, events and megabyte images from."""

from __future__ import annotations

import select
import socket
import time


class XError(Exception):
    """The X server refused a request of ours, or the connection broke."""


class Stream:
    """A non-blocking unix socket read as a stream, every wait bounded by ``timeout``."""

    def __init__(self, sock: socket.socket, timeout: float):
        self.sock = sock
        self.timeout = timeout  # a server that stops answering must not hang us
        self._buffer = bytearray()
        self._start = 0  # where the unread part of _buffer begins

    def _wait_readable(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([self.sock], [], [], remaining)[0]:
            raise XError(f"the X server did not answer within {self.timeout:g} s")

    def _recv(self, size: int) -> bytes:
        """What the socket holds (up to ``size`` bytes), waiting up to the timeout for it."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                data = self.sock.recv(size)
            except BlockingIOError:
                self._wait_readable(deadline)
                continue
            if not data:
                raise XError("the X server closed the connection")
            return data

    def _recv_into(self, target: memoryview) -> int:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                count = self.sock.recv_into(target)
            except BlockingIOError:
                self._wait_readable(deadline)
                continue
            if not count:
                raise XError("the X server closed the connection")
            return count

    def _fill(self, size: int) -> None:
        """Have at least ``size`` unread bytes in the buffer."""
        if self._start:
            del self._buffer[: self._start]
            self._start = 0
        while len(self._buffer) < size:
            self._buffer += self._recv(65536)

    def _read_exactly(self, size: int) -> bytes:
        self._fill(size)
        data = bytes(self._buffer[self._start : self._start + size])
        self._start += size
        if self._start == len(self._buffer):
            self._buffer.clear()
            self._start = 0
        return data

    def _read_into(self, target: memoryview) -> None:
        """Fill ``target``: what is buffered, then straight from the socket (no copy)."""
        buffered = min(len(target), len(self._buffer) - self._start)
        target[:buffered] = self._buffer[self._start : self._start + buffered]
        self._start += buffered
        if self._start == len(self._buffer):
            self._buffer.clear()
            self._start = 0
        done = buffered
        while done < len(target):
            done += self._recv_into(target[done:])

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                if not select.select([], [self.sock], [], self.timeout)[1]:
                    raise XError(f"the X server took no request for {self.timeout:g} s") from None
