"""The daemon's pools (``daemon.pool.Pool``, by name) and their leases.

A lease is a display taken out of a pool, held by one control connection: it ends with an
explicit ``release`` or when that connection closes (the client exited, crashed or was
SIGKILLed), and then its display is destroyed, in the background. A display is never handed
out twice, so no window, property, selection or cookie of one lessee reaches the next.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ..host.errors import (
    EnvironmentProblem,
    ExitCode,
    NoSuchSession,
    SessionFailed,
    XSuperviseError,
)
from ..host.paths import RuntimeDir, new_token
from ..launch.launcher import launch_steps
from ..session.session import PoolState
from .pool import Pool, stop_entries
from .pool_spec import PoolSpec
from .registry import DaemonEntry

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..session.session import Launcher
    from .protocol import Reply


class LeaseTimeout(XSuperviseError):
    """No spare became ready within the lease's ``wait``."""

    exit_code = ExitCode.READY_TIMEOUT


class LeasedDisplay:
    """One display handed out: its id, pool and session (which runs its server)."""

    __slots__ = ("entry", "id", "pool", "since")

    def __init__(self, pool: str, entry: DaemonEntry):
        self.id = new_token()
        self.pool = pool
        self.entry = entry
        self.since = time.time()

    def __repr__(self) -> str:
        return f"<LeasedDisplay {self.id} of pool {self.pool}: {self.entry.session.display}>"

    def reply(self) -> Reply:
        """The fields ``start`` replies with, plus ``lease`` and ``pool``."""
        server = self.entry.session.server
        assert server is not None  # taken only when ready
        from .protocol import display_reply

        return {
            "lease": self.id,
            "pool": self.pool,
            **display_reply(self.entry.session.name, server),
        }


def _not_told(_lease: LeasedDisplay, _event: Reply) -> None:
    pass


class Pools:
    """Every pool of the daemon, and every lease taken from them. ``tell(lease, event)``
    pushes a ``lease-ended`` event to the lease's connection when its display died or was
    revoked (the control server's part)."""

    def __init__(
        self,
        runtime: RuntimeDir,
        changed: Callable[[], None],
        launcher: Launcher = launch_steps,
    ):
        self.runtime = runtime
        self.changed = changed
        self.launcher = launcher  # what starts the spares' servers (tests pass a fake one)
        self.tell: Callable[[LeasedDisplay, Reply], None] = _not_told
        self.pools: dict[str, Pool] = {}
        self.leases: dict[str, LeasedDisplay] = {}
        self.retiring: set[DaemonEntry] = set()  # displays being destroyed
        self.stopping = False
        self.begun = False

    def __repr__(self) -> str:
        return f"<Pools {list(self.pools)}: {len(self.leases)} lease(s)>"

    def apply(self, specs: list[PoolSpec]) -> None:
        """Start new pools, resize or renew changed ones, close removed ones (their leased
        displays stay until their leases end)."""
        wanted = {spec.name: spec for spec in specs}
        for name in [name for name in self.pools if name not in wanted]:
            self._retire(self.pools.pop(name).close())
        for spec in specs:
            pool = self.pools.get(spec.name)
            if pool is None:
                self.pools[spec.name] = pool = Pool(spec, self.runtime, self.changed, self.launcher)
                pool.paused = not self.begun
                pool.fill()
            elif pool.spec != spec:
                self._retire(pool.apply(spec))
        self.changed()

    def begin(self) -> None:
        """Start the spares (once the daemon has cleared what killed supervisors left). The
        pools are known before, so that a lease asked for at once waits rather than fails."""
        self.begun = True
        for pool in self.pools.values():
            pool.paused = False
            pool.fill()
        self.changed()

    def _retire(self, entries: list[DaemonEntry]) -> None:
        stop_entries(entries)
        for entry in entries:
            if not entry.running.done():
                self.retiring.add(entry)
                entry.running.add_done_callback(self._forget(entry))

    def _forget(self, entry: DaemonEntry) -> Callable[[object], None]:
        return lambda _task: self.retiring.discard(entry)

    async def lease(
        self, name: str, wait: float, gone: Callable[[], bool] = lambda: False
    ) -> LeasedDisplay:
        """A ready display of pool ``name``: at once, or the next one within ``wait`` s.
        ``gone()``: the lessee has left while it waited; no display is taken for it."""
        pool = self.pools.get(name)
        if pool is None:
            known = ", ".join(self.pools) or "none"
            raise NoSuchSession(
                f"this daemon has no pool named {name!r} (its pools: {known}); declare "
                f"[pool.{name}] in its config file and reload it (SIGHUP)."
            )
        deadline = time.monotonic() + wait
        pool.fill()  # in case a spare ended by itself
        while True:
            if self.stopping or pool.closed:
                raise EnvironmentProblem(
                    f"pool {name} is {'stopping' if self.stopping else 'gone'} (the daemon "
                    f"{'is stopping' if self.stopping else 'reloaded its config'}); retry."
                )
            if gone():
                raise EnvironmentProblem(f"the client waiting for pool {name} has left.")
            entry = pool.take()
            if entry is not None:
                break
            if pool.state == PoolState.FAILED:
                raise SessionFailed(pool.failed_line())
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LeaseTimeout(
                    f"no display of pool {name} became ready within {wait:g} s ({pool.ready()}"
                    f" ready, {len(pool.spares)} starting, {self.leased(name)} leased); give "
                    "a longer wait, or a larger size to the pool."
                )
            await pool.changes(remaining)
        lease = LeasedDisplay(name, entry)
        self.leases[lease.id] = lease
        entry.running.add_done_callback(lambda _task: self._died(lease))
        self.changed()
        return lease

    def _died(self, lease: LeasedDisplay) -> None:
        """A leased display's session ended while its lease held: its server died (counted
        in no budget: see Mode.DAEMON_LEASED). Its lessee is told; the lease is over."""
        if self.leases.get(lease.id) is not lease:
            return  # released or revoked: its lessee knows
        del self.leases[lease.id]
        session = lease.entry.session
        self.tell(
            lease, _ended(lease, "died", f": {session.last_failure or 'its X server ended.'}")
        )
        self.changed()

    def revoke(self, lease_id: str, by: str) -> LeasedDisplay | None:
        """End a lease by ``by`` (e.g. `xsupervise stop`): its lessee is told, its display
        destroyed (in the background). None if unknown."""
        lease = self.leases.get(lease_id)
        if lease is not None:
            self.tell(lease, _ended(lease, "revoked", f" by {by}."))
        return self.release(lease_id)

    def release(self, lease_id: str) -> LeasedDisplay | None:
        """End a lease: its display is destroyed (in the background). None if unknown."""
        lease = self.leases.pop(lease_id, None)
        if lease is not None:
            self._retire([lease.entry])
            self.changed()
        return lease

    def find(self, display: str) -> tuple[str, LeasedDisplay | None] | None:
        """The pool ``display`` (":N") is of and its lease (None: a spare); None: no pool's."""
        for lease in self.leases.values():
            if lease.entry.session.display == display:
                return lease.pool, lease
        for name, pool in self.pools.items():
            if any(entry.session.display == display for entry in pool.spares):
                return name, None
        return None

    def leased(self, name: str) -> int:
        return sum(lease.pool == name for lease in self.leases.values())

    async def stop(self) -> None:
        """Close every pool, end every lease, and wait until every display is destroyed."""
        self.stopping = True
        for pool in self.pools.values():
            self._retire(pool.close())
        self._retire([lease.entry for lease in self.leases.values()])
        self.leases.clear()
        tasks = [entry.running for entry in self.retiring]
        if tasks:
            await asyncio.wait(tasks)

    def cancel_all(self) -> None:
        """A second stop signal: cut the X servers' grace short."""
        for entry in list(self.retiring):
            entry.running.cancel()

    def settled(self) -> bool:
        return all(pool.settled() for pool in self.pools.values())

    def info(self) -> list[dict[str, object]]:
        return [pool.info(self.leased(name)) for name, pool in self.pools.items()]

    def status_text(self) -> str:
        """For the STATUS= line, e.g. 'pool default 3/4 ready, 2 leased'."""
        return ", ".join(
            f"pool {name} {pool.ready()}/{pool.spec.size} ready"
            + (f", {self.leased(name)} leased" if self.leased(name) else "")
            + (" FAILED" if pool.state == PoolState.FAILED else "")
            for name, pool in self.pools.items()
        )


def _ended(lease: LeasedDisplay, reason: str, why: str) -> Reply:
    """The ``lease-ended`` event (see daemon.protocol.EVENTS): one line says what happened."""
    from .protocol import event

    display = lease.entry.session.display
    return event(
        "lease-ended",
        lease=lease.id,
        pool=lease.pool,
        display=display,
        reason=reason,
        message=f"display {display} (lease {lease.id} of pool {lease.pool}) {reason}{why}",
    )
