"""Acting on sessions that other processes supervise: stop them, by signal, safely.

Targets are pinned by pidfd and checked against the record's create time before any
signal is sent (see ``process.Pinned``), so a reused pid is never hit.
"""

from __future__ import annotations

import signal

from .errors import NoSuchSession, XSuperviseError
from .paths import RuntimeDir
from .process import Pinned, wait_exited
from .records import live_records


def stop_sessions(runtime: RuntimeDir, number: int | None, wait: float) -> list[str]:
    """Stop display ``number`` (None: all). A CLI session's supervisor gets SIGTERM and tears
    its display down itself; a display embedded in a program (``Display``) has its X server
    stopped directly. Returns one line per stopped session."""
    records = [record for record in live_records(runtime)
               if number is None or record.display == f":{number}"]
    if not records and number is not None:
        raise NoSuchSession(f"no session of ours runs display :{number} (runtime directory "
                            f"{runtime.path}); 'xsupervise list' shows what runs.")
    targets: list[tuple[Pinned, str]] = []
    for record in records:
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
        raise XSuperviseError(f"pid {pids} did not exit within {wait:g} s of SIGTERM; "
                              "check it with 'xsupervise list' or raise --wait.")
    return [line for _, line in targets]
