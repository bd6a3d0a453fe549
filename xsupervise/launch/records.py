"""Session records: one JSON file per running session in the runtime directory.

A record names the supervisor and the X server by pid *and* start time (in clock ticks since
boot, from /proc), so that a later process can tell "still the same process" from "a new
process that reuses the pid".
"""

from __future__ import annotations

import json
import os
import time

from ..host.paths import RuntimeDir, write_private_file
from .process import same_process

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import ClassVar


class SessionRecord:
    """What `list`, `stop`, `status` and crash recovery know of a session. (A plain class: the
    CLI imports this while the server starts, and dataclasses would cost it milliseconds.)"""

    FIELDS: ClassVar[dict[str, object]] = {
        "token": None,
        "name": None,
        "kind": "api",  # "cli" (an `xsupervise start` process) or "api" (a Display)
        # A session's state (session.states.State, written by Session._go only); None for a
        # one-off display (Display), which has no state machine: starting, or ready once it
        # has a display.
        "state": None,
        "supervisor_pid": None,
        "supervisor_ticks": None,
        "server_pid": None,
        "server_ticks": None,
        "display": None,
        "xauthority": None,
        "socket_inode": None,
        "started_at": None,
        "server_argv": (),
        "containment": None,  # cgroup, pidns or group (see launch.containment)
        "cgroup": None,  # the server's cgroup, with containment "cgroup"
        "abandoned": None,  # list/status: what a dead supervisor left (session.local_ops)
        "restarts": 0,
        "last_failure": None,
        "next_retry_at": None,
        "ready_at": None,
        "vnc": None,  # the xvnc profile's VNC endpoint: {"unix": PATH} or {"host", "port"}
    }
    __slots__ = tuple(FIELDS)
    token: str
    name: str
    kind: str
    state: str | None
    supervisor_pid: int | None
    supervisor_ticks: int | None
    server_pid: int | None
    server_ticks: int | None
    display: str | None  # ":N"
    xauthority: str | None
    socket_inode: int | None
    started_at: float
    server_argv: Sequence[str]
    containment: str | None
    cgroup: str | None
    abandoned: str | None
    restarts: int
    last_failure: str | None
    next_retry_at: float | None
    ready_at: float | None
    vnc: dict[str, str | int] | None

    def __init__(self, **values: object):
        unknown = set(values) - set(self.FIELDS)
        if unknown:
            raise TypeError(f"unknown record fields: {sorted(unknown)}")
        for name, default in self.FIELDS.items():
            setattr(self, name, values.get(name, default))
        if values.get("started_at") is None:
            self.started_at = time.time()
        if isinstance(self.vnc, str):  # a record written before the structured form
            from .vnc_endpoint import VncEndpoint

            endpoint = VncEndpoint.from_json(self.vnc)
            self.vnc = endpoint.to_json() if endpoint is not None else None

    def __repr__(self) -> str:
        return f"<SessionRecord {self.name} {self.display or '-'} {self.state}>"

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.FIELDS}

    def save(self, runtime: RuntimeDir) -> None:
        # One line: json's C encoder; with indent= its Python one takes 0.15 ms a save.
        write_private_file(runtime.record_path(self.token), json.dumps(self.as_dict()).encode())

    def supervisor_alive(self) -> bool:
        return same_process(self.supervisor_pid, self.supervisor_ticks)


def load_records(runtime: RuntimeDir) -> list[SessionRecord]:
    """Every readable record; a torn or foreign file is skipped, never trusted."""
    records: list[SessionRecord] = []
    for path in runtime.record_paths():
        try:
            with open(path, "rb") as stream:
                data = json.load(stream)
            records.append(
                SessionRecord(
                    **{key: value for key, value in data.items() if key in SessionRecord.FIELDS}
                )
            )
        except (OSError, ValueError, TypeError):
            continue
    return records


def live_records(runtime: RuntimeDir) -> list[SessionRecord]:
    return [record for record in load_records(runtime) if record.supervisor_alive()]


def own_identity() -> tuple[int, int | None]:
    pid = os.getpid()
    from .process import start_ticks

    return pid, start_ticks(pid)
