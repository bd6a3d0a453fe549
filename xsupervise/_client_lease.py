"""A lease as ``client.Client`` holds it (``client.Lease``), and the events the daemon pushes
about it (``_protocol.EVENTS``): a line with an ``"event"`` and no ``"ok"``, wherever it
comes (between replies, or while the client is idle holding a lease). ``Client`` keeps them
aside from replies."""

from __future__ import annotations

import json
import socket

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs the CLI time
if TYPE_CHECKING:
    from ._protocol import Reply
    from .client import Client


class Lease(dict):  # type: ignore[type-arg]
    """A leased display: the ``lease`` op's reply (``display``, ``env``, ``lease``...), held
    while its client stays connected; ``with`` releases it (the daemon destroys it)."""

    def __init__(self, client: Client, reply: Reply):
        super().__init__(reply)
        self.client = client
        self.released = False

    @property
    def ended(self) -> Reply | None:
        """None while the lease holds; else the ``lease-ended`` event (its ``message`` says
        why: the display died, or was revoked), or a stand-in when the daemon closed the
        connection without one (it stopped or died, and its displays with it). Never blocks."""
        if self.released:
            return {"event": "lease-ended", "reason": "released", "message": "released."}
        return lease_ended(self.client, self["lease"])

    def release(self) -> None:
        """End the lease (idempotent); its display is destroyed by the daemon."""
        from .client import ControlError

        if not self.released:
            self.released = True
            try:
                self.client.release(self["lease"])
            except ControlError:
                pass  # the daemon or the connection is gone: so is the lease

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def parse_event(line: bytes) -> Reply | None:
    """The event a line carries, or None for a reply."""
    if not line.startswith(b'{"event"'):
        return None
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) and "ok" not in message else None


def next_reply_line(client: Client) -> bytes | None:
    """The next complete line in the client's buffer that is not an event (events are kept
    aside, in ``client._events``); None if there is none yet."""
    while b"\n" in client._buffer:
        line, _, client._buffer = client._buffer.partition(b"\n")
        message = parse_event(line)
        if message is None:
            return line
        client._events.append(message)
    return None


def lease_ended(client: Client, lease: str) -> Reply | None:
    """The lease-ended event of ``lease`` if one came (reading what waits, without blocking);
    a stand-in if the connection closed without one (the daemon stopped or died); else None."""
    sock = client._sock
    if sock is not None and not client._closed_by_daemon:
        try:
            while True:
                chunk = sock.recv(65536, socket.MSG_DONTWAIT)
                if not chunk:
                    client._closed_by_daemon = True
                    break
                client._buffer += chunk
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            client._closed_by_daemon = True
        while b"\n" in client._buffer:  # only events come unasked
            line, _, client._buffer = client._buffer.partition(b"\n")
            message = parse_event(line)
            if message is not None:
                client._events.append(message)
    for message in client._events:
        if message.get("lease") == lease:
            return message
    if client._closed_by_daemon or sock is None:
        return {
            "event": "lease-ended",
            "lease": lease,
            "reason": "connection-closed",
            "message": f"the daemon on {client.path} closed the connection (it stopped or "
            "died, and its displays with it).",
        }
    return None
