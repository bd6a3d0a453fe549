"""A running X server of ours (``XServer``: stop, reap, clean up) and the files of the
session it serves (``SessionFiles``: cookie, log, record), which outlive any one server."""

from __future__ import annotations

import os
import signal
import time

from ..host import log
from ..host.paths import RuntimeDir, create_private_file, new_token, remove_file
from .process import Child, Steps
from .settings import Settings
from .x11 import ServerFacts, xauthority_entry

# Imported only once the server is spawned (records needs json): see launch_steps.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .recording import Recording
    from .records import SessionRecord
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
            from .records import SessionRecord, own_identity

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
        self.output_reason = ""  # its own reason for failing, if it gave one (launch.server_output)
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

        from ..host.holder import displays_held_by

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
        from ..host.stale import remove_dead_socket
        from .server_output import read_output

        if self.number is not None:
            remove_dead_socket(
                self.number, self.facts.socket_inode if self.facts else None, self.spawned_wall
            )
        for number in self.unreported_displays:
            remove_dead_socket(number, None, self.spawned_wall)
        self.output_reason, self.output_tail = read_output(self.files.log_path, self.log_offset)
        if self.owns_files:
            self.files.remove()
