"""The daemon's side of the control socket: clients, their limits, one reply per request line.

Defences: at most ``MAX_CLIENTS`` connections (when full, the one idle longest is dropped),
besides at most ``MAX_LESSEES`` that asked for a lease (never dropped: a lease lasts as long
as its connection, with no idle timeout while it holds one), lines of at most
``protocol.MAX_LINE`` bytes, ``protocol.IDLE_TIMEOUT`` seconds to send a complete line,
``WRITE_TIMEOUT`` seconds for a reply to be taken, peers of another uid refused (root is
always allowed). What a request means is ``daemon.DaemonOps``'s part.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import socket
import sys
import time

from ..host import log
from ..host.errors import ExitCode, XSuperviseError
from ..launch.process import peer_credentials
from . import protocol

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs time
if TYPE_CHECKING:
    from typing import Protocol

    from .protocol import Reply

    class Operations(Protocol):
        """What answers the requests (``daemon.daemon.DaemonOps``): a coroutine method per
        operation of ``daemon.protocol.OPS``, looked up by name, and this."""

        def connection_closed(self, leases: set[str]) -> None: ...


MAX_CLIENTS = 64
# Connections that asked for a lease are counted apart (a burst of lessees may wait on a
# small pool, and a lessee is never dropped to make room: that would destroy its display).
MAX_LESSEES = 1024
WRITE_TIMEOUT = 10.0


class Connection:
    """One client connection; ``leases``: the ids of the leases it holds (they end with it)."""

    def __init__(self, writer: asyncio.StreamWriter, reader: asyncio.StreamReader | None = None):
        self.writer = writer
        self.reader = reader
        self.last_activity = time.monotonic()
        self.busy = False
        self.lessee = False  # it asked for a lease: see MAX_LESSEES
        self.pid: int | None = None  # the peer's, when it connected
        self.leases: set[str] = set()

    def gone(self) -> bool:
        """The client closed its end (the transport still reads while we do not)."""
        return self.reader is not None and self.reader.at_eof()


# The connection whose request is being answered (each connection is a task of its own).
CURRENT: contextvars.ContextVar[Connection | None] = contextvars.ContextVar(
    "xsupervise_connection", default=None
)


class ControlServer:
    """Serves the control socket: reads request lines, answers each through ``ops``."""

    def __init__(self, ops: Operations):
        self.ops = ops
        self.clients: dict[asyncio.StreamWriter, Connection] = {}
        self._server: asyncio.Server | None = None

    def __repr__(self) -> str:
        return f"<ControlServer with {len(self.clients)} client(s)>"

    async def start(self, sock: socket.socket) -> None:
        # Python >= 3.13 would unlink the socket's path on close, even systemd's: we remove
        # our own in Listener.close, and never the one systemd holds.
        if sys.version_info >= (3, 13):
            self._server = await asyncio.start_unix_server(
                self._serve_client, sock=sock, limit=protocol.MAX_LINE, cleanup_socket=False
            )
        else:
            self._server = await asyncio.start_unix_server(
                self._serve_client, sock=sock, limit=protocol.MAX_LINE
            )

    def close(self) -> None:
        """Stop accepting, and drop every client at once (a stopping daemon answers no one)."""
        if self._server is not None:
            self._server.close()
        for client in list(self.clients.values()):
            client.writer.transport.abort()

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        client = Connection(writer, reader)
        CURRENT.set(client)
        try:
            client.pid, uid, _gid = peer_credentials(writer.get_extra_info("socket"))
            if uid not in (os.getuid(), 0):
                await self._reply(
                    client,
                    protocol.error_reply(
                        f"uid {uid} may not use this daemon (it runs as uid {os.getuid()}); ask as "
                        "that user.",
                        ExitCode.USAGE,
                    ),
                )
                return
            if not self._make_room():
                await self._reply(
                    client,
                    protocol.error_reply(
                        f"too many clients ({MAX_CLIENTS}) are being answered; try again shortly.",
                        ExitCode.FAILURE,
                    ),
                )
                return
            self.clients[writer] = client
            while True:
                # A lessee holds its connection open, idle, for as long as it uses the display.
                timeout = None if client.leases else protocol.IDLE_TIMEOUT
                try:
                    line = await asyncio.wait_for(reader.readline(), timeout)
                except TimeoutError:
                    await self._reply(
                        client,
                        protocol.error_reply(
                            f"no complete request line within {protocol.IDLE_TIMEOUT:g} s; "
                            "closing.",
                            ExitCode.USAGE,
                        ),
                    )
                    return
                except ValueError:  # longer than the limit
                    await self._reply(
                        client,
                        protocol.error_reply(
                            f"request line longer than {protocol.MAX_LINE} bytes; closing.",
                            ExitCode.USAGE,
                        ),
                    )
                    return
                if not line.endswith(b"\n"):
                    return  # EOF, perhaps half-way through a line: nobody to answer
                client.busy, client.last_activity = True, time.monotonic()
                reply = await self.handle_line(line)
                client.busy, client.last_activity = False, time.monotonic()
                await self._reply(client, reply)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self.clients.pop(writer, None)
            if client.leases:  # the lessee is gone: so are its displays
                self.ops.connection_closed(client.leases)
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # it does not read: do not wait to flush to it
            else:
                writer.close()

    def holder(self, lease: str) -> int | None:
        """The pid of the peer whose connection holds ``lease`` (None: no connection does)."""
        for client in self.clients.values():
            if lease in client.leases:
                return client.pid
        return None

    def lease_ended(self, lease: str, event: Reply) -> None:
        """Push ``event`` (a lease-ended one) to the connection holding ``lease``, which holds
        it no more; then close that connection if it holds no other lease (its lessee sees
        the line, then the end: whatever it waits on wakes up)."""
        for client in list(self.clients.values()):
            if lease in client.leases:
                client.leases.discard(lease)
                client.writer.write(protocol.encode(event))
                if not client.leases:
                    client.writer.transport.close()  # after the buffer is written
                return

    def lessees(self) -> int:
        return sum(client.lessee for client in self.clients.values())

    def _make_room(self) -> bool:
        """At MAX_CLIENTS, drop the connection idle longest (never one being answered, nor
        one holding a lease: that would destroy a display in use)."""
        others = [client for client in self.clients.values() if not client.lessee]
        if len(others) < MAX_CLIENTS:
            return True
        idle = [client for client in others if not client.busy]
        if not idle:
            return False
        oldest = min(idle, key=lambda client: client.last_activity)
        self.clients.pop(oldest.writer, None)
        oldest.writer.transport.abort()  # frees its fd now; close() would wait to flush
        return True

    async def _reply(self, client: Connection, reply: Reply) -> None:
        client.writer.write(protocol.encode(reply))
        await asyncio.wait_for(client.writer.drain(), WRITE_TIMEOUT)

    async def handle_line(self, line: bytes) -> Reply:
        """One request line -> one reply object. Never raises."""
        try:
            op, fields = protocol.parse_request(line)
        except XSuperviseError as error:
            return protocol.error_reply(str(error), error.exit_code)
        try:
            result: Reply = await getattr(self.ops, op.name)(**fields)
            return {"ok": True, **result}
        except XSuperviseError as error:
            return protocol.error_reply(str(error), error.exit_code)
        except Exception:  # noqa: BLE001 - a bug: answer, log, keep serving
            log.get().exception("request %s failed", op.name)
            return protocol.error_reply(
                f"internal error while handling {op.name!r}; see the daemon's log.",
                ExitCode.FAILURE,
            )
