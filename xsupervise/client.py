"""A client of ``xsupervise serve``'s control socket (the protocol is in the README).

    from xsupervise.client import Client
    with Client() as daemon:
        session = daemon.start(":auto", name="gui", screen="1920x1080x24")
        subprocess.run(["xterm"], env={**os.environ, **session["env"]})

A reply with ``"ok": false`` raises ``ControlError`` carrying the daemon's message and the
exit code the CLI would use for it.
"""

from __future__ import annotations

import json
import os
import socket

from ._errors import EnvironmentProblem, XSuperviseError


class ControlError(XSuperviseError):
    """The daemon refused or failed a request; ``exit_code`` is the one it gave."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class DaemonUnavailable(EnvironmentProblem):
    """No daemon answers on the control socket."""


def default_socket_path() -> str:
    from ._listener import default_path
    from ._paths import RuntimeDir

    return default_path(RuntimeDir.discover())


class Client:
    """One connection to the daemon; requests are answered in order."""

    def __init__(self, path: str | None = None, timeout: float | None = 60.0):
        self.path = path or default_socket_path()
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""

    def __repr__(self) -> str:
        return f"<Client {self.path}>"

    def connect(self) -> Client:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise DaemonUnavailable(f"no xsupervise serve answers on {self.path} "
                                    f"({exc.strerror}); start one (xsupervise serve, or "
                                    "systemctl --user start xsupervise.socket).") from None
        except OSError as exc:
            sock.close()
            raise DaemonUnavailable(f"cannot connect to {self.path}: {exc.strerror}.") from None
        self._sock = sock
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Client:
        return self if self._sock is not None else self.connect()

    def __exit__(self, *_exc) -> None:
        self.close()

    def request(self, op: str, **fields) -> dict:
        """Send one request; return the reply (``ok`` was true) or raise ControlError."""
        if self._sock is None:
            self.connect()
        try:
            self._sock.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
            while b"\n" not in self._buffer:
                chunk = self._sock.recv(65536)
                if not chunk:
                    raise ControlError(f"the daemon on {self.path} closed the connection "
                                       "without a reply.")
                self._buffer += chunk
        except socket.timeout:
            raise ControlError(f"no reply from the daemon on {self.path} within "
                               f"{self.timeout:g} s.") from None
        except OSError as exc:
            raise ControlError(f"lost the connection to {self.path}: {exc.strerror}.") from None
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            reply = json.loads(line)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise ControlError(f"the reply on {self.path} is not a JSON object ({line[:60]!r}); "
                               "is something other than xsupervise serving it?")
        if not reply.get("ok"):
            code = reply.get("exit_code")
            raise ControlError(str(reply.get("error", "the daemon gave no reason")),
                               code if isinstance(code, int) and not isinstance(code, bool) else 1)
        return reply

    def ping(self) -> dict:
        return self.request("ping")

    def start(self, display: str = ":auto", **options) -> dict:
        """Start (or join) a session; returns display, env, xauthority, server_pid, name."""
        return self.request("start", display=display, **options)

    def stop(self, display: str | None = None, *, name: str | None = None,
             all: bool = False) -> list[str]:
        fields = {key: value for key, value in (("display", display), ("name", name)) if value}
        return self.request("stop", **fields, **({"all": True} if all else {}))["stopped"]

    def list(self) -> list[dict]:
        return self.request("list")["sessions"]

    def status(self, target: str | None = None) -> list[dict]:
        return self.request("status", **({"target": target} if target else {}))["sessions"]

    def reset(self, name: str) -> bool:
        return self.request("reset", name=name)["had_history"]


def running_daemon(path: str | None = None, timeout: float | None = 60.0) -> Client | None:
    """A connected client if a daemon answers on the control socket, else None."""
    path = path or default_socket_path()
    if not os.path.exists(path):
        return None
    try:
        return Client(path, timeout).connect()
    except DaemonUnavailable:
        return None
