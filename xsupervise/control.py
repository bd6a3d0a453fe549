"""Acting on sessions that other processes supervise: stop them, by signal, safely.

A target is signalled only after psutil confirms that its pid still belongs to the process
named in the record (same create time), so a reused pid is never hit.
"""

from __future__ import annotations

from .errors import NoSuchSession, XSuperviseError
from .paths import RuntimeDir
from .records import live_records


def stop_sessions(runtime: RuntimeDir, number: int | None, wait: float) -> list[str]:
    """Stop display ``number`` (None: all). A CLI session's supervisor gets SIGTERM and tears
    its display down itself; a display embedded in a program (``Display``) has its X server
    stopped directly. Returns one line per stopped session."""
    import psutil

    records = [record for record in live_records(runtime)
               if number is None or record.display == f":{number}"]
    if not records and number is not None:
        raise NoSuchSession(f"no session of ours runs display :{number} (runtime directory "
                            f"{runtime.path}); 'xsupervise list' shows what runs.")
    targets: list[tuple[psutil.Process, str]] = []
    for record in records:
        if record.kind == "cli":
            pid, started, role = record.supervisor_pid, record.supervisor_started, "supervisor"
        else:
            pid, started, role = record.server_pid, record.server_started, "X server"
        try:
            process = psutil.Process(pid)
            if started is None or abs(process.create_time() - started) > 0.005:
                continue  # the pid was reused: not ours any more
            process.terminate()
        except psutil.NoSuchProcess:
            continue
        targets.append((process, f"{record.display or record.name}: stopped ({role} pid {pid})"))
    gone, alive = psutil.wait_procs([process for process, _ in targets], timeout=wait)
    if alive:
        pids = ", ".join(str(process.pid) for process in alive)
        raise XSuperviseError(f"pid {pids} did not exit within {wait:g} s of SIGTERM; "
                              "check it with 'xsupervise list' or raise --wait.")
    return [line for _, line in targets]
