"""The daemon's sessions: one ``DaemonEntry`` per session, each running ``session.session.Session``
as an asyncio task, kept by key in a ``Registry``.

Sessions come from the config file (origin "config": retried by the restart policy until
they work or are FAILED, then again after each cool-down) or from ``start`` requests on the
control socket (origin "request": tried once, then restarted as ``xsupervise start`` does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from ..host import log
from ..host.errors import XSuperviseError
from ..host.log import Notifier
from ..host.paths import RuntimeDir
from ..host.processes import run_steps
from ..launch.launcher import launch_steps
from ..launch.settings import SessionSpec
from ..session.session import Event, Mode, Session, State, clock_time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..session.session import Launcher


class DaemonEntry:
    """A session the daemon runs: its spec, where it came from, its session and task."""

    def __init__(self, key: str, spec: SessionSpec, origin: str, session: Session):
        self.key = key  # in Registry.entries: the name, or name#N for an unnamed request
        self.spec = spec
        self.origin = origin  # "config" or "request"
        self.session = session
        self.task: asyncio.Task[None] | None = None
        self.stopping = False
        self.ready = asyncio.Event()
        self.error: BaseException | None = None  # why the task ended, if it did by an error

    def __repr__(self) -> str:
        return f"<DaemonEntry {self.spec.name} from {self.origin}: {self.session!r}>"

    @property
    def running(self) -> asyncio.Task[None]:
        """Its task (set as soon as the registry starts it)."""
        assert self.task is not None, f"{self!r} was never started"
        return self.task

    def settled(self) -> bool:
        """Ready at least once, FAILED, or over: what READY=1 waits for."""
        return self.session.ready_once or self.session.state == State.FAILED or self.running.done()


class Registry:
    """The sessions the daemon runs, by key; it starts their tasks and forgets them when over.

    ``changed`` is set whenever a session changes state (and STATUS= is sent then)."""

    def __init__(self, runtime: RuntimeDir, notifier: Notifier, launcher: Launcher = launch_steps):
        self.runtime = runtime
        self.notifier = notifier
        self.launcher = launcher  # the seam: tests pass a fake one (tests/test_daemon_seam.py)
        self.entries: dict[str, DaemonEntry] = {}
        self.changed = asyncio.Event()
        self.more_status: Callable[[], str] = str  # e.g. the pools' part of the status line
        self._requests = 0

    def __repr__(self) -> str:
        return f"<Registry of {len(self.entries)} session(s)>"

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[DaemonEntry]:
        return iter(list(self.entries.values()))  # a copy: entries go away as tasks end

    def get(self, key: str) -> DaemonEntry | None:
        return self.entries.get(key)

    def configured(self) -> list[DaemonEntry]:
        return [entry for entry in self if entry.origin == "config"]

    def request_key(self, name: str) -> str:
        """A key of its own for an unnamed request: name#N."""
        self._requests += 1
        return f"{name}#{self._requests}"

    def start(
        self, spec: SessionSpec, origin: str, no_wait: bool = False, key: str | None = None
    ) -> DaemonEntry:
        key = key or spec.name
        mode = Mode.DAEMON_CONFIGURED if origin == "config" else Mode.DAEMON_REQUESTED
        session = Session(
            spec.settings,
            self.runtime,
            spec.number,
            name=spec.name,
            mode=mode,
            no_wait=no_wait,
            on_event=self._on_event,
            launcher=self.launcher,
        )
        managed = DaemonEntry(key, spec, origin, session)
        managed.task = asyncio.get_running_loop().create_task(self._run_session(managed))
        # Also when the task is cancelled before it ever ran (its finally would not run).
        managed.task.add_done_callback(lambda _task: self._session_over(managed))
        self.entries[key] = managed
        return managed

    def _session_over(self, managed: DaemonEntry) -> None:
        managed.session.files.remove()  # idempotent; the steps remove them when they ran
        if self.entries.get(managed.key) is managed:
            del self.entries[managed.key]
        self.changed.set()
        self.notifier.status(self.status_line())

    async def _run_session(self, managed: DaemonEntry) -> None:
        try:
            await run_steps(managed.session.steps())
        except asyncio.CancelledError:
            log.get().info(
                "session %s stopped.", managed.spec.name, extra=managed.session.log_fields()
            )
        except XSuperviseError as error:
            managed.error = error
            log.get().error(
                "session %s ended: %s", managed.spec.name, error, extra=managed.session.log_fields()
            )
        except Exception as error:  # noqa: BLE001 - a bug: keep serving the others, say so loudly
            managed.error = error
            log.get().exception(
                "session %s crashed", managed.spec.name, extra=managed.session.log_fields()
            )

    def _on_event(self, session: Session, event: Event) -> None:
        if event == Event.VERIFIED:
            for managed in self:
                if managed.session is session:
                    managed.ready.set()
        self.changed.set()
        self.notifier.status(self.status_line())

    async def stop(self, entries: list[DaemonEntry]) -> None:
        """Stop these sessions (their servers get their grace) and wait until they are over."""
        for managed in entries:
            if not managed.stopping:  # a second cancel would cut the server's grace short
                managed.stopping = True
                managed.running.cancel()
        if entries:
            await asyncio.wait([managed.running for managed in entries])

    def cancel_all(self) -> None:
        """A second stop signal: cancel again, which cuts the X servers' grace short."""
        for managed in self:
            managed.running.cancel()

    def status_line(self) -> str:
        """One human line, e.g. '2 displays ready (:5 :7), 1 in backoff until 12:03:41'."""
        sessions = list(self)
        ready = [m.session.display or "" for m in sessions if m.session.state == State.READY]
        backoff = [
            m.session.next_retry_at
            for m in sessions
            if m.session.state == State.BACKOFF and m.session.next_retry_at
        ]
        failed = [m.spec.name for m in sessions if m.session.state == State.FAILED]
        starting = sum(m.session.state == State.STARTING for m in sessions)
        parts = [
            f"{len(ready)} display{'s' * (len(ready) != 1)} ready"
            + (f" ({' '.join(ready)})" if ready else "")
        ]
        if starting:
            parts.append(f"{starting} starting")
        if backoff:
            parts.append(f"{len(backoff)} in backoff until {clock_time(min(backoff))}")
        if failed:
            parts.append(f"{len(failed)} FAILED ({' '.join(failed)})")
        more = self.more_status()
        if more:
            parts.append(more)
        return ", ".join(parts)

    def note_change(self) -> None:
        """Something outside the sessions (a pool) changed: wake waiters, update STATUS=."""
        self.changed.set()
        self.notifier.status(self.status_line())
