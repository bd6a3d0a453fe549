"""Acting on sessions that other processes supervise: stop them, by signal, safely.

Targets are pinned by pidfd and checked against the record's create time before any
signal is sent (see ``process.Pinned``), so a reused pid is never hit.
"""

from __future__ import annotations

import signal

from ..host.errors import NoSuchSession, XSuperviseError
from ..host.paths import RuntimeDir
from ..launch.process import Pinned, wait_exited
from ..launch.server import SessionRecord, live_records
from ..launch.vnc_endpoint import VncEndpoint
from .session import State

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs the CLI time
if TYPE_CHECKING:
    from typing import NotRequired, TypedDict

    from ..launch.settings import RestartPolicy

    class StatusEntry(TypedDict):
        """One of ``status``'s "sessions" (and of ``xsupervise status --json``)."""

        name: str
        display: str | None
        state: str
        restarts: int
        last_failure: str | None
        supervisor_pid: int | None
        server_pid: int | None
        containment: NotRequired[str | None]  # cgroup, pidns or group (see launch.containment)
        abandoned: NotRequired[str | None]  # state "abandoned": what its dead supervisor left
        uptime: float | None  # seconds, when ready
        next_retry_at: float | None  # wall time, in backoff or FAILED
        failed_since: float | None  # wall time
        vnc: dict[str, str | int] | None  # the xvnc profile's: {"unix"} or {"host", "port"}


def stop_sessions(runtime: RuntimeDir, number: int | None, wait: float) -> list[str]:
    """Stop display ``number`` (None: all). A CLI session's supervisor gets SIGTERM and tears
    its display down itself; a display embedded in a program (``Display``) has its X server
    stopped directly. Returns one line per stopped session."""
    records = [
        record
        for record in live_records(runtime)
        if number is None or record.display == f":{number}"
    ]
    served = [record for record in records if record.kind == "daemon"]
    records = [record for record in records if record.kind != "daemon"]
    if served and number is not None and not records:
        # Signalling a daemon would stop all its displays: this one is stopped through it.
        raise XSuperviseError(
            f"display :{number} belongs to xsupervise serve (pid {served[0].supervisor_pid}), "
            "which does not answer on its control socket here; give its --socket, or stop "
            "the daemon itself."
        )
    if not records and number is not None:
        raise NoSuchSession(
            f"no session of ours runs display :{number} (runtime directory "
            f"{runtime.path}); 'xsupervise list' shows what runs."
        )
    targets: list[tuple[Pinned, str]] = []
    for record in records:
        pid: int | None
        if record.kind == "cli":
            pid, ticks, role = record.supervisor_pid, record.supervisor_ticks, "supervisor"
        else:
            pid, ticks, role = record.server_pid, record.server_ticks, "X server"
        process = Pinned.pin(pid, ticks)
        if process is None:
            continue  # gone meanwhile, or the pid now belongs to someone else
        process.signal(signal.SIGTERM)
        targets.append((process, f"{record.display or record.name}: stopped ({role} pid {pid})"))
    try:
        living = wait_exited([process for process, _ in targets], wait)
    finally:
        for process, _ in targets:
            process.close()
    if living:
        pids = ", ".join(str(process.pid) for process in living)
        raise XSuperviseError(
            f"pid {pids} did not exit within {wait:g} s of SIGTERM; "
            "check it with 'xsupervise list' or raise --wait."
        )
    return [line for _, line in targets]


def session_status(
    runtime: RuntimeDir, target: str | None, policy: RestartPolicy, now: float
) -> list[StatusEntry]:
    """What `status` shows: every live session, and every name whose history holds it back
    (backoff or FAILED) although no supervisor runs. ``target``: ':N' or a name."""
    import os

    from .session import Ledger, all_ledgers, read_history

    entries: list[StatusEntry] = []
    for record in local_records(runtime):
        history = Ledger(runtime, record.name).read()
        entries.append(
            {
                "name": record.name,
                "display": record.display,
                "state": record.state or State.STARTING,  # (set by local_records)
                "restarts": record.restarts,
                "last_failure": record.last_failure,
                "supervisor_pid": record.supervisor_pid,
                "server_pid": record.server_pid,
                "containment": record.containment,
                "abandoned": record.abandoned,
                "uptime": now - record.ready_at
                if record.state == State.READY and record.ready_at
                else None,
                "next_retry_at": record.next_retry_at
                if record.state in (State.BACKOFF, State.FAILED)
                else None,
                "failed_since": history.failed_at,
                "vnc": record.vnc,
            }
        )
    seen = {entry["name"] for entry in entries}
    for path in all_ledgers(runtime):
        history = read_history(path)
        name = history.name or os.path.basename(path)[:-5]
        if name in seen:
            continue
        failed_until = history.failed_until(policy)
        if failed_until is not None and now < failed_until:
            state, retry = "failed", failed_until
        elif now < history.next_start_at:
            state, retry = "backoff", history.next_start_at
        else:
            continue
        entries.append(
            {
                "name": name,
                "display": None,
                "state": state,
                "restarts": 0,
                "last_failure": history.last_failure,
                "supervisor_pid": None,
                "server_pid": None,
                "containment": None,
                "abandoned": None,
                "uptime": None,
                "next_retry_at": retry,
                "failed_since": history.failed_at,
                "vnc": None,
            }
        )
    if target is not None:
        entries = [entry for entry in entries if target in (entry["display"], entry["name"])]
        if not entries:
            raise NoSuchSession(
                f"no session {target} is running or held back (runtime directory "
                f"{runtime.path}); 'xsupervise status' shows them all."
            )
    return entries


def format_status(entry: StatusEntry, now: float) -> str:
    import time

    def clock(wall: float) -> str:
        return time.strftime("%H:%M:%S", time.localtime(wall))

    parts = [entry["display"] or "-", entry["name"]]
    state = entry["state"]
    if state in (State.BACKOFF, State.FAILED) and entry["next_retry_at"]:
        parts.append(
            f"{state} until {clock(entry['next_retry_at'])} "
            f"(in {max(0.0, entry['next_retry_at'] - now):.0f} s)"
        )
    elif state == State.ABANDONED:
        parts.append(f"abandoned: {entry.get('abandoned')}")
    elif state == State.READY and entry["uptime"] is not None:
        parts.append(f"ready, up {entry['uptime']:.0f} s")
    else:
        parts.append(state)
    parts.append(f"restarts {entry['restarts']}")
    if entry["supervisor_pid"]:
        parts.append(
            f"supervisor pid {entry['supervisor_pid']}, server pid {entry['server_pid'] or '-'}"
        )
    if entry.get("vnc"):
        parts.append(f"vnc {VncEndpoint.from_json(entry['vnc'])}")
    if entry["last_failure"]:
        parts.append(f"last failure: {entry['last_failure']}")
    return "  ".join(parts)


def local_records(runtime: RuntimeDir) -> list[SessionRecord]:
    """What `list` and `status` show without a daemon: every live session, and every session
    whose supervisor died (state ``abandoned``, with what it left) until a start, run or
    clean removes its files. What such a session left running is stopped first."""
    import os

    from ..launch.server import sweep_abandoned

    abandoned = sweep_abandoned(runtime)
    for record in abandoned:
        left = [
            what
            for what, path in (
                ("record", runtime.record_path(record.token)),
                ("cookie", runtime.auth_path(record.token)),
                ("log", runtime.log_path(record.token)),
            )
            if os.path.lexists(path)
        ]
        record.state = State.ABANDONED
        record.abandoned = (
            f"supervisor pid {record.supervisor_pid} died; its processes are stopped; left: "
            f"{', '.join(left) or 'nothing'} (removed by the next start, run or clean)"
        )
    live = live_records(runtime)
    for record in live:  # a one-off display (Display) has no state machine: see its record
        record.state = record.state or (State.READY if record.display else State.STARTING)
    return live + abandoned
