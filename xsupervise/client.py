"""A client of ``xsupervise serve``'s control socket (the protocol: ``daemon/protocol.py``).

    from xsupervise.client import Client
    with Client() as daemon:
        session = daemon.start(":auto", name="gui", screen="1920x1080x24")
        subprocess.run(["xterm"], env={**os.environ, **session["env"]})

A reply with ``"ok": false`` raises ``ControlError`` carrying the daemon's message and the
exit code the CLI would use for it.

A lease as ``client.Client`` holds it (``client.Lease``), and the events the daemon pushes
about it (``daemon.protocol.EVENTS``): a line with an ``"event"`` and no ``"ok"``, wherever it
comes (between replies, or while the client is idle holding a lease). ``Client`` keeps them
aside from replies.
"""

from __future__ import annotations

import json
import os
import socket

from .daemon import protocol
from .host.errors import EnvironmentProblem, ExitCode, UsageError, XSuperviseError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .daemon.protocol import Reply

__all__ = [
    "Client",
    "ControlError",
    "DaemonUnavailable",
    "Lease",
    "default_socket_path",
    "running_daemon",
]

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs the CLI time
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Any, Self, TypeAlias

    from .daemon.protocol import Reply
    from .session.local_ops import StatusEntry

    # (Inside Client, `list` means its method.)
    Records: TypeAlias = "list[dict[str, Any]]"
    StatusEntries: TypeAlias = "list[StatusEntry]"

# How much longer than the "wait" it gives the daemon we wait for a stop's reply.
_STOP_REPLY_MARGIN = 30.0
_LEASE_WAIT = 30.0  # the protocol's default "wait" for a lease


class ControlError(XSuperviseError):
    """The daemon refused or failed a request; ``exit_code`` is the one it gave."""

    def __init__(self, message: str, exit_code: int = ExitCode.FAILURE):
        super().__init__(message)
        self.exit_code = exit_code


class _NoReply(ControlError):
    """The daemon closed the connection without a reply (e.g. dropped it to make room)."""


class DaemonUnavailable(EnvironmentProblem):
    """No daemon answers on the control socket."""


def default_socket_path() -> str:
    from .host.paths import RuntimeDir, default_path

    return default_path(RuntimeDir.discover())


class Client:
    """One connection to the daemon; requests are answered in order."""

    def __init__(self, path: str | None = None, timeout: float | None = 60.0):
        self.path = path or default_socket_path()
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._events: list[Reply] = []  # pushed by the daemon (see daemon.protocol.EVENTS)
        self._closed_by_daemon = False

    def __repr__(self) -> str:
        return f"<Client {self.path}>"

    def connect(self) -> Self:
        from .host.listener import connect

        try:
            self._sock = connect(self.path, self.timeout)
        except BlockingIOError:
            raise DaemonUnavailable(
                f"the daemon on {self.path} did not accept a connection within {self.timeout:g} s "
                "(its queue of waiting connections stayed full: it is overloaded or stuck)."
            ) from None
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonUnavailable(
                f"no xsupervise serve answers on {self.path} ({exc.strerror}); start one "
                "(xsupervise serve, or systemctl --user start xsupervise.socket)."
            ) from None
        except OSError as exc:
            raise DaemonUnavailable(f"cannot connect to {self.path}: {exc.strerror}.") from None
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Self:
        return self if self._sock is not None else self.connect()

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()

    def request(self, op: str, **fields: object) -> Reply:
        """Send one request; return the reply (``ok`` was true) or raise ControlError.

        The request is checked against the protocol first: what the daemon would refuse
        raises the same ControlError without a round trip."""
        return self._ask(op, fields)

    def _ask(self, op: str, fields: dict[str, object], reply_within: float | None = None) -> Reply:
        """``request``; ``reply_within``: wait at least that long for the reply."""
        try:
            protocol.check_request({"op": op, **fields})
        except UsageError as error:
            raise ControlError(str(error), error.exit_code) from None
        sock = self._socket()
        if reply_within is not None and self.timeout is not None:
            sock.settimeout(max(self.timeout, reply_within))
        try:
            try:
                sock.sendall(protocol.encode({"op": op, **fields}))
            except BrokenPipeError:
                pass  # it answered and closed before reading (a refusal): read that answer
            while (line := next_reply_line(self)) is None:
                chunk = sock.recv(65536)
                if not chunk:
                    self._closed_by_daemon = True
                    raise _NoReply(
                        f"the daemon on {self.path} closed the connection without a reply."
                    )
                self._buffer += chunk
        except TimeoutError:
            raise ControlError(
                f"no reply from the daemon on {self.path} within {sock.gettimeout():g} s."
            ) from None
        except OSError as exc:
            reset = isinstance(exc, ConnectionResetError | BrokenPipeError)
            lost = _NoReply if reset else ControlError
            raise lost(f"lost the connection to {self.path}: {exc.strerror}.") from None
        finally:
            if reply_within is not None and self._sock is not None:
                self._sock.settimeout(self.timeout)
        try:
            reply = json.loads(line)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise ControlError(
                f"the reply on {self.path} is not a JSON object ({line[:60]!r}); "
                "is something other than xsupervise serving it?"
            )
        if not reply.get("ok"):
            raise ControlError(
                str(reply.get("error", "the daemon gave no reason")),
                protocol.reply_exit_code(reply),
            )
        return reply

    def _socket(self) -> socket.socket:
        """The connected socket, connecting first if need be."""
        return self._sock if self._sock is not None else self.connect()._connected()

    def _connected(self) -> socket.socket:
        assert self._sock is not None
        return self._sock

    # One method per op of the protocol (daemon.protocol.OPS), taking that op's fields.
    def ping(self) -> Reply:
        """The daemon's pid, version, number of sessions and status line."""
        return self._ask("ping", {})

    def start(
        self,
        display: str = ":auto",
        *,
        name: str | None = None,
        no_wait: bool = False,
        **settings: object,
    ) -> Reply:
        """Start (or join) a session; returns display, env, xauthority, server_pid, name.

        ``settings``: any setting, e.g. ``screen="1920x1080x24"``, ``server="Xephyr"``."""
        fields: dict[str, object] = {"display": display, **settings}
        if name:
            fields["name"] = name
        if no_wait:
            fields["no_wait"] = True
        return self._ask("start", fields)

    def stop(
        self,
        display: str | None = None,
        *,
        name: str | None = None,
        all: bool = False,  # noqa: A002 - the protocol's field, as the CLI's --all
        wait: float | None = None,
    ) -> list[str]:
        """Stop display ":N", the session ``name``, or ``all``; one line per stopped session.

        ``wait``: seconds the daemon gives them to exit (its default: 10); the reply is
        awaited that long too, even beyond this client's timeout."""
        fields: dict[str, object] = {
            key: value for key, value in (("display", display), ("name", name)) if value
        }
        if all:
            fields["all"] = True
        if wait is not None:
            fields["wait"] = wait
        reply = self._ask("stop", fields, None if wait is None else wait + _STOP_REPLY_MARGIN)
        lines: list[str] = reply["stopped"]
        return lines

    def list(self) -> Records:
        """The session records, as ``xsupervise list --json`` shows them."""
        sessions: Records = self._ask("list", {})["sessions"]
        return sessions

    def status(self, target: str | None = None) -> StatusEntries:
        """What ``xsupervise status --json`` shows: every session, or ``target`` (":N", name)."""
        sessions: StatusEntries = self._ask("status", {"target": target} if target else {})[
            "sessions"
        ]
        return sessions

    def reset(self, name: str) -> bool:
        """Clear the restart history of ``name``; whether it had any."""
        return bool(self._ask("reset", {"name": name})["had_history"])

    def lease(self, pool: str = "default", wait: float | None = None, record: str = "") -> Lease:
        """A display of ``pool`` (a context manager), held while connected or until released;
        ``wait``: seconds for a spare (default 30); ``record``: an absolute path the daemon
        records it to until then. A FAILED pool: ControlError, exit code 7."""
        fields: dict[str, object] = {"pool": pool, **({"record": record} if record else {})}
        if wait is not None:
            fields["wait"] = wait
        within = (_LEASE_WAIT if wait is None else wait) + _STOP_REPLY_MARGIN
        for _attempt in range(4):  # then a fifth, whose error is raised
            try:
                return Lease(self, self._ask("lease", fields, within))
            except _NoReply:
                # Dropped for room in a burst, before our request was read: nothing was
                # leased (lessees are never dropped). Ask again on a new connection.
                self.close()
        return Lease(self, self._ask("lease", fields, within))

    def release(self, lease: str) -> None:
        """End lease ``lease`` (the id ``lease`` replied with); its display is destroyed."""
        self._ask("release", {"lease": lease})

    def pools(self) -> Records:
        """Every pool: name, size, ready, leased, refilling, state."""
        pools: Records = self._ask("pools", {}).get("pools", [])
        return pools


def running_daemon(path: str | None = None, timeout: float | None = 60.0) -> Client | None:
    """A connected client if a daemon answers on the control socket, else None."""
    path = path or default_socket_path()
    if not os.path.exists(path):
        return None
    try:
        return Client(path, timeout).connect()
    except DaemonUnavailable:
        return None


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
