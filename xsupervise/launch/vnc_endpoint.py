"""VncEndpoint: where a VNC client reaches an xvnc display, a unix socket or a TCP port.

Reported structured, never as one string a client must take apart: ``{"unix": PATH}`` or
``{"host": HOST, "port": PORT}`` in JSON (``start --json``, ``list``/``status --json``, the
daemon's replies, session records), a ``VncEndpoint`` in Python (``Display.vnc``). Its
``str()`` is the address VNC clients take as it is: the bare socket path (``vncdo -s PATH``),
or ``HOST::PORT`` (vncdotool, TigerVNC's vncviewer: a double colon means a port, not a
display number). Kept free of imports: records, protocol and client all use it.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["VncEndpoint"]


class VncEndpoint:
    """Exactly one of: ``unix`` (a socket path), or ``host`` and ``port`` (TCP)."""

    __slots__ = ("host", "port", "unix")

    def __init__(
        self, *, unix: str | None = None, host: str | None = None, port: int | None = None
    ) -> None:
        if (unix is None) == (host is None) or (host is None) != (port is None):
            raise ValueError("a VNC endpoint is a unix socket path, or a host and a port")
        self.unix = unix
        self.host = host
        self.port = port

    @classmethod
    def from_json(cls, value: Any) -> VncEndpoint | None:
        """From its JSON form (None stays None); also reads the ``unix:PATH`` / ``HOST:PORT``
        strings of records written before the structured form (a session still running)."""
        if value is None:
            return None
        if isinstance(value, dict):
            if "unix" in value:
                return cls(unix=str(value["unix"]))
            return cls(host=str(value["host"]), port=int(value["port"]))
        text = str(value)
        if text.startswith("unix:"):
            return cls(unix=text.removeprefix("unix:"))
        host, _, port = text.rpartition(":")
        return cls(host=host.removeprefix("[").removesuffix("]"), port=int(port))

    def to_json(self) -> dict[str, str | int]:
        if self.unix is not None:
            return {"unix": self.unix}
        assert self.host is not None and self.port is not None
        return {"host": self.host, "port": self.port}

    def __str__(self) -> str:
        if self.unix is not None:
            return self.unix
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}::{self.port}"

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={value!r}" for key, value in self.to_json().items())
        return f"VncEndpoint({fields})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VncEndpoint):
            return NotImplemented
        return self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash((self.unix, self.host, self.port))
