"""A display leased from a pool of ``xsupervise serve``, behind the interface ``Display`` and
``AsyncDisplay`` give a server of their own (``env``, ``number``, ``pid``, ``facts``...).

The lease is held by its connection to the daemon: ``release`` closes it, and the daemon
destroys the display (in the background); so does our death, however it comes.
"""

from __future__ import annotations

import os

from ..launch.vnc_endpoint import VncEndpoint
from ..launch.x11 import ServerFacts

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..client import Client, Lease


class LeasedServer:
    """What a ``Display(pool=...)`` holds instead of an ``XServer``."""

    def __init__(self, client: Client, lease: Lease):
        self.client = client
        self.lease = lease
        self.number: int = int(lease["display"][1:])
        self.pid: int = lease["server_pid"]
        self.auth_path: str = lease["xauthority"]
        width, height, depth = (int(part) for part in lease["screen"].split("x"))
        self.facts = ServerFacts(lease["vendor"], 0, width, height, depth, 0)
        self.exit_status: int | None = None  # "not running" once released, as for XServer
        self.vnc = VncEndpoint.from_json(lease.get("vnc"))  # the xvnc profile's endpoint

    def __repr__(self) -> str:
        return f"<LeasedServer :{self.number} lease {self.lease['lease']}>"

    @property
    def env(self) -> dict[str, str]:
        return {"DISPLAY": f":{self.number}", "XAUTHORITY": self.auth_path}

    def alive(self) -> bool:
        """The lease holds: its display did not die, was not revoked, the daemon is there."""
        return self.lease.ended is None

    def release(self) -> None:
        """End the lease: close its connection (no round trip; idempotent)."""
        if self.exit_status is None:
            self.exit_status = 0
            self.client.close()


def take_lease(
    pool: str, socket: str | None = None, wait: float | None = None, record: str | None = None
) -> LeasedServer:
    """Lease a display of ``pool`` (blocking: up to ``wait`` s when no spare is ready);
    ``record``: a path the daemon records it to until the lease ends."""
    from ..client import Client

    client = Client(socket, timeout=None).connect()
    try:
        path = os.path.abspath(record) if record else ""  # the daemon's directory is not ours
        return LeasedServer(client, client.lease(pool, wait, path))
    except BaseException:
        client.close()
        raise
