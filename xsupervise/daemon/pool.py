"""A warm pool: ``size`` spare displays kept started and verified, each handed out once.

Each spare is a ``session.session.Session`` in ``Mode.DAEMON_POOL`` (a ``DaemonEntry``), named
``pool.NAME``: so every spare of a pool shares one restart budget, a server that cannot
start makes the pool FAILED by the same policy as a configured session (never a storm), and
a spare whose server dies while idle is restarted by that policy. ``take`` hands a ready
spare over (it leaves the pool for good: ``daemon.pools.Pools`` destroys it when the lease ends)
and starts a new spare in its place. A leased display is its lessee's: its death ends its
session and counts in no budget (``Mode.DAEMON_LEASED``); the budget counts only what
says that spares cannot be made: starts that fail, and spares that die while idle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..host import log
from ..host.errors import XSuperviseError
from ..host.paths import RuntimeDir
from ..host.processes import run_steps
from ..launch.launcher import launch_steps
from ..launch.settings import SessionSpec
from ..session.session import (
    Event,
    Ledger,
    Mode,
    PoolState,
    Session,
    State,
    clock_time,
    record_handed_over,
)
from .pool_spec import PoolSpec
from .registry import DaemonEntry

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..session.session import Launcher


def run_entry(entry: DaemonEntry, on_event: Callable[[Session, Event], None]) -> None:
    """Start ``entry``'s session as a task (its files are removed however it ends)."""

    async def run() -> None:
        try:
            await run_steps(entry.session.steps())
        except asyncio.CancelledError:
            pass
        except XSuperviseError as error:
            entry.error = error
            log.get().error("display of %s ended: %s", entry.key, error, extra=fields())
        except Exception as error:  # noqa: BLE001 - a bug: keep serving the others, loudly
            entry.error = error
            log.get().exception("display of %s crashed", entry.key, extra=fields())

    def fields() -> dict[str, object]:
        return entry.session.log_fields()

    def over(_task: object) -> None:
        entry.session.files.remove()  # idempotent; the steps remove them when they ran
        on_event(entry.session, Event.ENDED)

    entry.task = asyncio.get_running_loop().create_task(run())
    entry.task.add_done_callback(over)


def stop_entries(entries: list[DaemonEntry]) -> None:
    """Cancel their sessions (each server gets its grace; a second cancel cuts it short)."""
    for entry in entries:
        if not entry.stopping:
            entry.stopping = True
            entry.running.cancel()


class Pool:
    """The spares of one ``[pool.NAME]``. ``changed()`` is called on every change."""

    def __init__(
        self,
        spec: PoolSpec,
        runtime: RuntimeDir,
        changed: Callable[[], None],
        launcher: Launcher = launch_steps,
    ):
        self.spec = spec
        self.runtime = runtime
        self.changed = changed
        self.launcher = launcher  # the seam: tests pass a fake one (tests/test_daemon_seam.py)
        self.spares: list[DaemonEntry] = []
        self.closed = False
        self.paused = False  # known (leases wait for it), but no spares yet: see Pools.begin
        self._serial = 0
        self._wakeup = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Pool {self.spec.name}: {self.ready()}/{self.spec.size} ready, {self.state}>"

    @property
    def name(self) -> str:
        return self.spec.name

    def ready(self) -> int:
        return sum(self._is_ready(entry) for entry in self.spares)

    @staticmethod
    def _is_ready(entry: DaemonEntry) -> bool:
        return entry.session.state == State.READY and entry.session.server is not None

    @property
    def state(self) -> PoolState:
        """READY (every spare is), REFILLING, FAILED (a spare's budget is spent), STOPPED."""
        if self.closed:
            return PoolState.STOPPED
        if any(entry.session.state == State.FAILED for entry in self.spares):
            return PoolState.FAILED
        return PoolState.READY if self.ready() >= self.spec.size else PoolState.REFILLING

    def failed_reason(self) -> str:
        for entry in self.spares:
            if entry.session.state == State.FAILED:
                return entry.session.last_failure or "(unknown)"
        return ""

    def failed_line(self) -> str:
        """What failed, how often, since when, and what to do: the line of a lease refused."""
        history = Ledger(self.runtime, self.spec.session_name).read()
        rules = self.spec.settings.policy()
        since = clock_time(history.failed_at) if history.failed_at else "now"
        until = history.failed_until(rules)
        return (
            f"pool {self.name} is FAILED: {len(history.failures)} failures (starts that "
            f"failed, or spares that died while idle) in {rules.start_limit_interval:g} s "
            f"(limit {rules.start_limit_burst}), FAILED since {since}"
            + (f", next try at {clock_time(until)}" if until else "")
            + f". Last failure: {self.failed_reason()} Fix the cause, then run 'xsupervise "
            f"reset {self.spec.session_name}' to try at once."
        )

    def settled(self) -> bool:
        """Every spare ready, or the pool FAILED: what READY=1 waits for."""
        return self.state != PoolState.REFILLING or not self.spares

    # -- spares ----------------------------------------------------------------------------
    def fill(self) -> None:
        """Start spares until there are ``size`` of them."""
        while not (self.closed or self.paused) and len(self.spares) < self.spec.size:
            self._serial += 1
            key = f"{self.spec.session_name}#{self._serial}"
            session = Session(
                self.spec.settings,
                self.runtime,
                None,
                name=self.spec.session_name,
                mode=Mode.DAEMON_POOL,
                on_event=self._on_event,
                launcher=self.launcher,
            )
            entry = DaemonEntry(key, SessionSpec(key, None, self.spec.settings), "pool", session)
            self.spares.append(entry)
            run_entry(entry, self._on_event)

    def _on_event(self, session: Session, event: Event) -> None:
        if event == Event.ENDED:
            for entry in self.spares:
                if entry.session is session:  # ended by itself (a bug, or the disk): not refilled
                    self.spares.remove(entry)  # at once, lest it storm; the next take does
                    break
        self.wake()

    def wake(self) -> None:
        """Wake every waiting lessee, and say that something changed."""
        self._wakeup.set()
        self._wakeup = asyncio.Event()
        self.changed()

    def take(self) -> DaemonEntry | None:
        """A ready spare, now out of the pool for good (a new spare starts in its place):
        its lessee's from now on, so that its death is counted in no budget (see Mode)."""
        for entry in self.spares:
            if self._is_ready(entry):
                self.spares.remove(entry)
                entry.session.mode = Mode.DAEMON_LEASED
                ledger = Ledger(self.runtime, self.spec.session_name)
                if ledger.read().in_a_row:  # (no file written on the lease path otherwise)
                    with ledger.update() as history:
                        record_handed_over(history)  # it proved that spares can be made
                self.fill()
                self.changed()
                return entry
        return None

    async def changes(self, timeout: float) -> None:
        """Return at the next change (a spare ready, FAILED, ...) or after ``timeout`` s."""
        wakeup = self._wakeup
        try:
            await asyncio.wait_for(wakeup.wait(), timeout)
        except TimeoutError:
            pass

    def apply(self, spec: PoolSpec) -> list[DaemonEntry]:
        """A reloaded config: grow, shrink or replace the spares; the ones it retires (to
        stop). Leased displays are not the pool's any more: they are never touched."""
        retired: list[DaemonEntry] = []
        if spec.settings != self.spec.settings:
            retired, self.spares = self.spares, []
        self.spec = spec
        excess = len(self.spares) - spec.size
        if excess > 0:  # the ones not ready yet go first
            ordered = sorted(self.spares, key=self._is_ready)
            retired += ordered[:excess]
            self.spares = [entry for entry in self.spares if entry not in retired]
        self.fill()
        stop_entries(retired)
        self.wake()
        return retired

    def close(self) -> list[DaemonEntry]:
        """No more spares; the ones it had (being stopped)."""
        self.closed = True
        retired, self.spares = self.spares, []
        stop_entries(retired)
        self.wake()
        return retired

    def info(self, leased: int) -> dict[str, object]:
        """What ``list`` and ``status`` show of it."""
        return {
            "name": self.spec.name,
            "size": self.spec.size,
            "ready": self.ready(),
            "leased": leased,
            "refilling": len(self.spares) - self.ready(),
            "state": self.state,
            "last_failure": self.failed_reason() or None,
        }
