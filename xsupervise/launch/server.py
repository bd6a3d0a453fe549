"""An X server of ours and its session's files, from its record to its remains.

- ``XServer``: a running server (stop, reap, clean up);
- ``SessionFiles``: the files of the session it serves (cookie, log, record), which outlive
  any one server;
- what a server printed, for a failure line;
- ``SessionRecord``: the record, one JSON file per running session in the runtime directory;
- crash recovery: what a dead supervisor of ours left, cleared by the next one.

The launch path that starts a server is launch/launcher.py."""

from __future__ import annotations

import json
import os
import signal
import time

from ..host import log
from ..host.paths import (
    RuntimeDir,
    create_private_file,
    new_token,
    remove_file,
    token_owner,
    write_private_file,
)
from ..host.processes import sweep_session
from .containment import CGROUP_PREFIX, all_cgroup_tokens, clear_cgroup, visible_to_us
from .process import Child, Pinned, Steps, same_process, terminate_pinned
from .settings import Settings
from .x11 import (
    ServerFacts,
    xauthority_entry,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import ClassVar

    from .recording import Recording
    from .vnc_endpoint import VncEndpoint

# Seconds kill_now waits for a SIGKILLed server that it cannot wait for asynchronously.
_KILL_NOW_WAIT = 1.0


class SessionFiles:
    """A session's own files, which outlive any one X server it runs: the cookie (so clients
    keep working across a restart), the server log, and the record that `list` reads."""

    def __init__(self, runtime: RuntimeDir, name: str, kind: str):
        self.runtime = runtime
        self.token = new_token()
        self.cookie = os.urandom(16)
        self.auth_path = runtime.auth_path(self.token)
        self.log_path = runtime.log_path(self.token)
        self.name = name
        self.kind = kind
        self.spawns = 0  # servers spawned so far: names each one's cgroup
        self.recordings = 0  # recordings started: a restarted server's gets a new file
        # Made once a server is spawned (it needs json: see launch_steps).
        self.record: SessionRecord | None = None
        self.created = False  # see create(): nothing is on disk before the first spawn

    def create(self) -> None:
        """Write the cookie and an empty log, just before the first spawn: a supervisor that
        is only waiting for its restart budget (and may be killed there) leaves nothing."""
        if self.created:
            return
        os.close(create_private_file(self.auth_path, xauthority_entry(self.cookie)))
        try:
            os.close(create_private_file(self.log_path))
        except BaseException:
            remove_file(self.auth_path)
            raise
        self.created = True

    def __repr__(self) -> str:
        return f"<SessionFiles {self.name} {self.token}>"

    def save(self, **changes: object) -> None:
        """Update the record (creating it the first time) and write it; before the first
        spawn (see create) only in memory."""
        if self.record is None:
            pid, ticks = own_identity()
            self.record = SessionRecord(
                token=self.token,
                name=self.name,
                kind=self.kind,
                supervisor_pid=pid,
                supervisor_ticks=ticks,
                xauthority=self.auth_path,
            )
        for field, value in changes.items():
            setattr(self.record, field, value)
        if self.created:
            self.record.save(self.runtime)

    def remove(self) -> None:
        self.runtime.remove_session(self.token)
        self.created = False


class XServer:
    """A running X server of ours. Stop it with ``run_blocking(stop_steps())``."""

    def __init__(
        self,
        child: Child,
        settings: Settings,
        files: SessionFiles,
        owns_files: bool,
        log_offset: int,
        requested_number: int | None,
    ):
        self.child = child
        self.settings = settings
        self.files = files
        self.owns_files = owns_files  # a one-off Display: its files go with its server
        self.log_offset = log_offset
        self.requested_number = requested_number
        self.number: int | None = None
        self.facts: ServerFacts | None = None
        self.spawned_wall = time.time()
        self.exit_status: int | None = None
        self.released = False
        self.output_tail = ""  # its last lines of output, once it has ended
        self.output_reason = ""  # its own reason for failing, if it gave one (server_reason)
        self.wm: Child | None = None  # the wm setting's window manager, stopped before us
        self.companion: Child | None = None  # a profile's (Xwayland's weston), stopped after
        self.vnc: VncEndpoint | None = None  # the xvnc profile's VNC endpoint (see launch/vnc.py)
        self.unreported_displays: set[int] = set()  # see _note_unreported_sockets
        child.before_kill = self._note_unreported_sockets
        self.recording: Recording | None = None  # the record setting's, stopped first

    def __repr__(self) -> str:
        return f"<XServer {self.display or '(no display yet)'} {self.child!r}>"

    @property
    def pid(self) -> int:
        """The X server's pid (in a PID namespace: the one its init runs, once seen)."""
        return self.child.program_pid

    @property
    def auth_path(self) -> str:
        return self.files.auth_path

    @property
    def record(self) -> SessionRecord | None:
        return self.files.record

    @property
    def display(self) -> str | None:
        return None if self.number is None else f":{self.number}"

    @property
    def env(self) -> dict[str, str]:
        """What a client needs: DISPLAY and XAUTHORITY."""
        if self.number is None:
            raise RuntimeError("the display is not ready")
        return {"DISPLAY": f":{self.number}", "XAUTHORITY": self.files.auth_path}

    def _note_unreported_sockets(self) -> None:
        """Just before any SIGKILL: if the server has not told us its number yet, note which
        display sockets it listens on (Xvfb makes them well before it writes its number), so
        that release() removes the files a SIGKILL leaves."""
        if self.number is not None or self.child.has_exited():
            return
        import psutil

        from ..host.sockets import displays_held_by

        pids = {self.child.pid, self.child.program_pid}
        try:
            pids |= {p.pid for p in psutil.Process(self.child.pid).children(recursive=True)}
        except psutil.Error:
            pass
        self.unreported_displays = displays_held_by(pids)

    def arm_recording(self) -> None:
        """The record setting's recorder, spawned with the server (see ffmpeg.py: its start-up
        overlaps the server's); none, said in one line, if it cannot be."""
        from .recording import arm

        self.files.spawns += 1
        try:
            self.recording = arm(
                self.settings.record_fps, f"{self.files.token}-{self.files.spawns}"
            )
        except Exception as exc:  # noqa: BLE001 - whatever it was, the server goes on unrecorded
            log.get().error("the display will not be recorded: cannot start the recorder: %s", exc)

    def start_recording(self) -> None:
        """Once the display is ready: the armed recorder starts on the session's next file
        (see launch.recording.recording_path)."""
        from .recording import recording_path

        assert self.recording is not None and self.number is not None
        assert self.settings.record is not None
        self.files.recordings += 1
        path = recording_path(self.settings.record, self.files.recordings)
        self.recording.go(self.number, self.files.auth_path, path)

    def _warn_escalation(self, child: Child) -> None:
        if not child.term_sent:  # it never got far enough for a SIGTERM: see term_steps
            log.get().warning(
                "%s (pid %d) had not written its display number %.1f s after it was asked to "
                "stop; sending SIGKILL to its process group.",
                os.path.basename(child.argv[0]),
                child.pid,
                self.settings.kill_grace,
            )
            return
        log.get().warning(
            "%s (pid %d) did not exit within %.1f s of SIGTERM; sending SIGKILL to its process "
            "group. Raise --kill-grace (XSUPERVISE_KILL_GRACE) if it needs longer.",
            os.path.basename(child.argv[0]),
            child.pid,
            self.settings.kill_grace,
        )

    def _warn_stuck(self, child: Child) -> None:
        log.get().error(
            "%s (pid %d) has not exited %.1f s after SIGKILL: it is stuck in the kernel (D state: "
            "a hung disk, network filesystem or device); still waiting for it, without blocking.",
            os.path.basename(child.argv[0]),
            child.pid,
            self.settings.kill_grace,
        )

    def stop_steps(self) -> Steps[int]:
        """Stop and reap the server's group; remove the socket it left, if any (and our files,
        if they are its alone)."""
        if self.exit_status is not None:
            return self.exit_status
        if self.recording is not None:  # first: its last frame is taken while the display is up
            try:
                yield from self.recording.let_go_steps(self.settings.kill_grace)
            except BaseException:  # closed, or a second signal: no more waiting for anyone
                self.kill_now()
                raise
        if self.wm is not None and self.wm.returncode is None:
            yield from self.wm.stop_steps(self.settings.kill_grace)
        try:
            self.exit_status = yield from self.child.stop_steps(
                self.settings.kill_grace, self._warn_escalation, self._warn_stuck
            )
            if self.companion is not None:  # after its server: Xwayland, then weston
                yield from self.companion.stop_steps(self.settings.kill_grace)
            if self.recording is not None:  # ffmpeg finished the file meanwhile
                from .recording import finish_steps

                yield from finish_steps(self.recording, self.settings.kill_grace)
        except GeneratorExit:
            self.kill_now()  # closed while waiting: no more yielding is possible
            raise
        finally:
            self.release()  # also when a second signal cut the grace short (it was SIGKILLed)
        return self.exit_status

    def kill_now(self) -> None:
        """SIGKILL the group and clean up, for when no waiting is possible (a closed generator):
        the reap waits at most _KILL_NOW_WAIT, so that a stuck server cannot hang its caller."""
        if self.recording is not None:
            self.recording.kill_now(_KILL_NOW_WAIT)
        if self.wm is not None and self.wm.returncode is None:
            self.wm.signal(signal.SIGKILL)
            self.wm.reap_within(_KILL_NOW_WAIT)
        if self.exit_status is None:
            self.child.signal(signal.SIGKILL)
            self.exit_status = self.child.reap_within(_KILL_NOW_WAIT)
            if self.exit_status is None:
                self._warn_stuck(self.child)
            else:
                self.child.clear_boundary_now(_KILL_NOW_WAIT)
            self.release()
        self._kill_companion()

    def _kill_companion(self) -> None:
        if self.companion is not None and self.companion.returncode is None:
            self.companion.signal(signal.SIGKILL)  # its server is gone: nothing to serve
            self.companion.reap_within(_KILL_NOW_WAIT)

    def release(self) -> None:
        """Once the server has ended: reap it (if it has) and remove what it leaves behind."""
        if self.exit_status is None:
            self.exit_status = self.child.try_reap()
        if self.recording is not None and self.recording.child.returncode is None:
            self.recording.kill_now(_KILL_NOW_WAIT)  # its display is gone: its file ends here
        if self.wm is not None and self.wm.returncode is None:
            self.wm.signal(signal.SIGKILL)  # its display is gone: nothing left to manage
            self.wm.reap_within(_KILL_NOW_WAIT)
        if self.exit_status is not None and not self.released:
            self._kill_companion()  # its server is gone: the next start makes a new one
        if self.released:
            return
        self.released = True
        # Imported by the launcher while the server started: free here (see launch.launcher).
        from ..host.sockets import remove_dead_socket

        if self.number is not None:
            remove_dead_socket(
                self.number, self.facts.socket_inode if self.facts else None, self.spawned_wall
            )
        for number in self.unreported_displays:
            remove_dead_socket(number, None, self.spawned_wall)
        self.output_reason, self.output_tail = read_output(self.files.log_path, self.log_offset)
        if self.owns_files:
            self.files.remove()


# --- what a server printed -----------------------------------------------------------------------
# What an X server printed, for a failure line: its own reason when it gave one.
#
# The X.Org servers (Xorg, Xvfb, Xwayland, Xvnc: they share the dix) end a fatal error with
#
#     (EE)
#     Fatal server error:
#     (EE) Invalid screen configuration bogus for -screen 0
#     (EE)
#
# and mark their other errors ``(EE) ...`` (Xorg's log adds a ``[ 12.345]`` time stamp). So a
# failure line quotes the line after ``Fatal server error:`` and the other ``(EE)`` lines; only
# when there are none does it fall back to the last lines the server printed (which, for a
# server that prints its usage, would be the end of that usage).

_TAIL_BYTES = 16384  # enough for Xvfb's usage text (~5 KiB) before its fatal error
_TAIL_LINES = 3
_MAX_ERRORS = 4  # (EE) lines quoted besides the fatal one: a backtrace has dozens
_MAX_CHARS = 400

_FATAL = "Fatal server error:"
_EE = "(EE)"
# (EE) lines that are the fatal error's frame, not a reason.
_BOILERPLATE = (
    "Please consult",
    "Please also check the log file",
    "Server terminated with error",
    "at http://wiki.x.org",
    "for help.",
)


def read_output(path: str, since: int = 0) -> tuple[str, str]:
    """(reason, tail) of what the server printed after offset ``since`` (see module doc);
    either may be empty."""
    try:
        with open(path, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            stream.seek(max(since, stream.tell() - _TAIL_BYTES))
            text = stream.read().decode("utf-8", "replace")
    except OSError:
        return "", ""
    return server_reason(text), last_lines(text)


def last_lines(text: str) -> str:
    """The last few non-empty lines, as one line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-_TAIL_LINES:])


def _unstamped(line: str) -> str:
    """The line without the ``[ 12.345]`` time stamp of Xorg's log, stripped."""
    line = line.strip()
    if line.startswith("["):
        end = line.find("]")
        if end > 0 and line[1:end].strip().replace(".", "").isdigit():
            return line[end + 1 :].strip()
    return line


def _strip_markers(line: str) -> str:
    return _unstamped(line).replace(_EE, "").strip()


def _is_error(line: str, content: str) -> bool:
    """An (EE) line with something to say (not the fatal error's frame)."""
    return (
        _unstamped(line).startswith(_EE) and bool(content) and not content.startswith(_BOILERPLATE)
    )


def server_reason(text: str) -> str:
    """'Fatal server error: <reason> | <other (EE) lines>' as one line, or '' if it gave none."""
    fatal = ""
    errors: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        content = _strip_markers(line)
        if content.startswith(_FATAL):
            reason = content[len(_FATAL) :].strip()
            for following in lines[i + 1 :]:
                if reason:
                    break
                reason = _strip_markers(following)
            fatal = reason or fatal
        elif _is_error(line, content) and content != fatal and content not in errors:
            errors.append(content)
    if fatal:
        errors = [error for error in errors if error != fatal]
        quoted = [f"{_FATAL} {fatal}", *errors[:_MAX_ERRORS]]
    else:
        quoted = errors[:_MAX_ERRORS]
    joined = " | ".join(quoted)
    return joined if len(joined) <= _MAX_CHARS else joined[: _MAX_CHARS - 3] + "..."


def quote(server: str, reason: str, tail: str) -> str:
    """The sentence a failure line ends with: the server's reason, else its last output."""
    if reason:
        return f"{server} said: {reason}"
    return f"Its last output: {tail or '(nothing)'}"


# --- session records -----------------------------------------------------------------------------
# Session records: one JSON file per running session in the runtime directory.
#
# A record names the supervisor and the X server by pid *and* start time (in clock ticks since
# boot, from /proc), so that a later process can tell "still the same process" from "a new
# process that reuses the pid".


class SessionRecord:
    """What `list`, `stop`, `status` and crash recovery know of a session. (A plain class: the
    CLI imports this while the server starts, and dataclasses would cost it milliseconds.)"""

    FIELDS: ClassVar[dict[str, object]] = {
        "token": None,
        "name": None,
        "kind": "api",  # "cli" (an `xsupervise start` process) or "api" (a Display)
        # A session's state (session.session.State, written by Session._go only); None for a
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


# --- crash recovery ------------------------------------------------------------------------------
# Crash recovery: clear what a dead supervisor of ours left in the runtime directory.
#
# A supervisor killed by SIGKILL cannot clean up. Its X server normally died with it
# (PR_SET_PDEATHSIG), leaving a record, a cookie, a log and perhaps its socket file. We
# terminate the server only if its pid *and* start time still match the record.
#
# Blocking (up to twice the kill grace per server that resists SIGTERM): on an event loop,
# run it as an ``Offload`` or in an executor.


def reclaim_abandoned(runtime: RuntimeDir, grace: float = 2.0) -> list[SessionRecord]:
    """Clean up after every session whose supervisor is gone; return their records."""
    from ..host.sockets import remove_dead_socket

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
    from ..host.processes import marked_processes, terminate_all

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
