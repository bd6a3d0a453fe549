"""Session records: one JSON file per running session in the runtime directory.

A record names the supervisor and the X server by pid *and* create time, so that a later
process can tell "still the same process" from "a new process that reuses the pid".
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from .paths import RuntimeDir, remove_file, write_private_file

# Create times from psutil are floats computed from clock ticks; equal processes agree exactly,
# a reused pid differs by at least a tick (10 ms).
_SAME_PROCESS_TOLERANCE = 0.005


@dataclasses.dataclass
class SessionRecord:
    token: str
    name: str
    kind: str  # "cli" (an `xsupervise start` process) or "api" (a Display in some program)
    state: str  # starting, ready, backoff, failed, stopping
    supervisor_pid: int
    supervisor_started: float
    server_pid: int | None = None
    server_started: float | None = None
    display: str | None = None
    xauthority: str | None = None
    socket_inode: int | None = None
    started_at: float = dataclasses.field(default_factory=time.time)
    server_argv: list[str] = dataclasses.field(default_factory=list)
    restarts: int = 0
    last_failure: str | None = None
    next_retry_at: float | None = None

    def save(self, runtime: RuntimeDir) -> None:
        write_private_file(runtime.record_path(self.token),
                           json.dumps(dataclasses.asdict(self), indent=1).encode())

    def remove(self, runtime: RuntimeDir) -> None:
        remove_file(runtime.record_path(self.token))

    def supervisor_alive(self) -> bool:
        return same_process_alive(self.supervisor_pid, self.supervisor_started)

    def server_alive(self) -> bool:
        return self.server_pid is not None and self.server_started is not None \
            and same_process_alive(self.server_pid, self.server_started)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def create_time(pid: int) -> float:
    import psutil  # imported late: the CLI pays for it while the X server initialises

    return psutil.Process(pid).create_time()


def same_process_alive(pid: int, started: float) -> bool:
    """True if ``pid`` runs and is the process that started at ``started`` (not a reuse)."""
    import psutil

    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - started) < _SAME_PROCESS_TOLERANCE \
            and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def load_records(runtime: RuntimeDir) -> list[SessionRecord]:
    """Every readable record; a torn or foreign file is skipped, never trusted."""
    fields = {field.name for field in dataclasses.fields(SessionRecord)}
    records = []
    for path in runtime.record_paths():
        try:
            with open(path, "rb") as stream:
                data = json.load(stream)
            records.append(SessionRecord(**{k: v for k, v in data.items() if k in fields}))
        except (OSError, ValueError, TypeError):
            continue
    return records


def live_records(runtime: RuntimeDir) -> list[SessionRecord]:
    return [record for record in load_records(runtime) if record.supervisor_alive()]


def new_token() -> str:
    return f"{os.getpid()}-{os.urandom(4).hex()}"
