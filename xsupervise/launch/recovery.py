"""Crash recovery: clear what a dead supervisor of ours left in the runtime directory.

A supervisor killed by SIGKILL cannot clean up. Its X server normally died with it
(PR_SET_PDEATHSIG), leaving a record, a cookie, a log and perhaps its socket file. We
terminate the server only if its pid *and* start time still match the record.

Blocking (up to twice the kill grace per server that resists SIGTERM): on an event loop,
run it as an ``Offload`` or in an executor.
"""

from __future__ import annotations

import os

from ..host import log
from ..host.group import sweep_session
from ..host.paths import RuntimeDir, token_owner
from ..host.stale import remove_dead_socket
from .cgroup import CGROUP_PREFIX, all_cgroup_tokens, clear_cgroup, visible_to_us
from .process import Pinned, same_process, terminate_pinned
from .records import SessionRecord, load_records


def reclaim_abandoned(runtime: RuntimeDir, grace: float = 2.0) -> list[SessionRecord]:
    """Clean up after every session whose supervisor is gone; return their records."""
    abandoned = sweep_abandoned(runtime, grace)
    for record in abandoned:
        if record.display and record.socket_inode:
            remove_dead_socket(int(record.display[1:]), record.socket_inode)
        runtime.remove_session(record.token)
        log.get().info(
            "removed the files of %s, abandoned by dead supervisor pid %d.",
            record.display or record.name,
            record.supervisor_pid,
        )
    # Files of a supervisor killed before it wrote its record: the token names its maker.
    recorded = {record.token for record in load_records(runtime)}
    for token in runtime.tokens() - recorded:
        owner = token_owner(token)
        if owner is not None and not same_process(*owner):
            runtime.remove_session(token)
    # Cgroups of a supervisor killed before it wrote its record (or after removing it); not
    # those of another PID namespace's supervisor sharing our cgroup, whose pid we cannot see.
    for token, cgroups in all_cgroup_tokens().items():
        owner = token_owner(token)
        if token not in recorded and owner is not None and not same_process(*owner):
            for cgroup in cgroups:
                if visible_to_us(cgroup):
                    clear_cgroup(cgroup, grace)
    return abandoned


def _clear_boundary(record: SessionRecord, grace: float) -> None:
    """What the server left in its boundary: a cgroup's processes, or its session's (the
    fallback: members of session ``server_pid`` started no earlier than the server)."""
    # Its own, where recorded (it may lie under another cgroup than ours), and any of its
    # token under ours.
    cgroups = set(all_cgroup_tokens().get(record.token, []))
    name = os.path.basename(record.cgroup or "")
    if name.startswith(f"{CGROUP_PREFIX}{record.token}-") and os.path.isdir(record.cgroup or ""):
        cgroups.add(record.cgroup or "")
    for cgroup in sorted(cgroups):
        if clear_cgroup(cgroup, grace) is False:
            log.get().error("cgroup %s did not empty within %.1f s of cgroup.kill.", cgroup, grace)
    if record.containment == "group" and record.server_pid and record.server_ticks is not None:
        swept = sweep_session(record.server_pid, record.server_ticks, grace)
        if swept:
            log.get().warning(
                "stopped pid %s, left in the session of X server pid %d of %s.",
                " ".join(map(str, swept)),
                record.server_pid,
                record.display or record.name,
            )


def sweep_abandoned(runtime: RuntimeDir, grace: float = 2.0) -> list[SessionRecord]:
    """Stop what every dead supervisor's session left running (its X server, its cgroup or
    session); keep the files, so that `list` and `status` can show what was abandoned."""
    abandoned = [record for record in load_records(runtime) if not record.supervisor_alive()]
    for record in abandoned:
        server = Pinned.pin(record.server_pid, record.server_ticks)
        if server is not None:
            terminate_pinned(server, grace)
            server.close()
            log.get().warning(
                "stopped X server pid %d of %s: its supervisor pid %d is gone.",
                record.server_pid,
                record.display or record.name,
                record.supervisor_pid,
            )
        _clear_boundary(record, grace)
        _stop_commands(record, grace)
    return abandoned


def _stop_commands(record: SessionRecord, grace: float) -> None:
    """What a COMMAND of the dead supervisor left: processes that carry its mark."""
    from ..host.group import marked_processes, terminate_all

    if record.kind != "cli":
        return
    stopped = terminate_all(marked_processes(record.token, record.supervisor_ticks), grace)
    if stopped:
        log.get().warning(
            "stopped pid %s, left on %s by a COMMAND of dead supervisor pid %d.",
            " ".join(map(str, stopped)),
            record.display or record.name,
            record.supervisor_pid,
        )
