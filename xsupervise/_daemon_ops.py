"""The ops of the control protocol, as the daemon answers them.

One coroutine per op of ``_protocol.OPS``, named after it and taking its fields as keyword
arguments (already checked, defaults filled in); it returns the reply's fields (``Op.reply``)
or raises an XSuperviseError, which becomes the error reply.
"""

from __future__ import annotations

import asyncio
import os
import time

from . import __version__
from . import _protocol as protocol
from ._errors import EnvironmentProblem, NoSuchSession, StartError, UsageError, XSuperviseError
from ._settings import SessionSpec, default_session_name, load_settings, parse_display

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs time
if TYPE_CHECKING:
    from ._daemon import Daemon
    from ._protocol import Reply
    from ._steps import Steps


class DaemonOps:
    """What each op does in ``daemon``: its registry of sessions, runtime directory, policy."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon
        self.registry = daemon.registry
        self.runtime = daemon.runtime

    def __repr__(self) -> str:
        return f"<DaemonOps of {self.daemon!r}>"

    async def ping(self) -> Reply:
        return {
            "pid": os.getpid(),
            "version": __version__,
            "sessions": len(self.registry),
            "status": self.registry.status_line(),
        }

    async def start(
        self, display: str, name: str | None, no_wait: bool, **settings: object
    ) -> Reply:
        if self.daemon.stopping:  # shutting down: a session started now would outlive the list
            raise EnvironmentProblem(
                "the daemon is stopping; retry once it is back, or run "
                "'xsupervise start' without --detach."
            )
        number = parse_display(display)
        loaded = load_settings(settings)
        name_or_default = name or default_session_name(number, loaded.server)
        # A named request joins a running session of that name. Unnamed ones get a display
        # of their own (as `xsupervise start` does), sharing only the default name's budget.
        managed = self.registry.get(name_or_default) if name else None
        if managed is None:
            spec = SessionSpec(name_or_default, number, loaded)
            managed = self.registry.start(
                spec,
                "request",
                no_wait=no_wait,
                key=name_or_default if name else self.registry.request_key(name_or_default),
            )
        waiter = asyncio.ensure_future(managed.ready.wait())
        try:
            await asyncio.wait([managed.running, waiter], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        server = managed.core.server
        if not managed.ready.is_set() or server is None:
            error = managed.error
            if isinstance(error, XSuperviseError):
                raise error
            raise StartError(
                f"session {name_or_default} ended before it was ready",
                server="?",
                pid=None,
                elapsed=0.0,
            )
        return protocol.display_reply(name_or_default, server)

    async def stop(self, display: str | None, name: str | None, all: bool, wait: float) -> Reply:  # noqa: A002 - the protocol's field
        if not (display or name or all):
            raise UsageError('stop needs "display": ":N", "name": NAME or "all": true.')
        number = parse_display(display) if display else None
        if display and number is None:
            raise UsageError(f'stop needs a display number, not {display!r}, e.g. ":5".')
        if number is not None and self.daemon.pools.find(f":{number}"):
            return {"stopped": [await self._revoke(f":{number}", float(wait))]}
        ours = [
            managed
            for managed in self.registry
            if all
            or managed.spec.name == name
            or (display and managed.core.display == f":{number}")
        ]
        lines = [
            f"{m.core.display or m.spec.name}: stopped (session {m.spec.name} of "
            f"xsupervise serve pid {os.getpid()})"
            for m in ours
        ]
        await self.registry.stop(ours)
        if display or all:
            from ._local_ops import stop_sessions

            try:  # sessions of other supervisors in our runtime directory (blocking: a thread)
                lines += await asyncio.get_running_loop().run_in_executor(
                    None, stop_sessions, self.runtime, number, float(wait)
                )
            except NoSuchSession:
                if not ours:
                    raise
        elif not ours:
            raise NoSuchSession(f"no session named {name!r} runs in this daemon.")
        return {"stopped": lines}

    async def _revoke(self, display: str, wait: float) -> str:
        """`stop :N` of a pool's display: a leased one's lease ends (its display destroyed,
        awaited up to ``wait`` s); a spare is refused (the pool would only replace it)."""
        pool, lease = self.daemon.pools.find(display) or ("?", None)
        if lease is None:
            raise UsageError(
                f"display {display} is a spare of pool {pool}, kept ready for leases; to keep "
                f"fewer, lower size in [pool.{pool}] of the config file and reload (SIGHUP)."
            )
        holder = self.daemon.control.holder(lease.id)
        self.daemon.pools.revoke(lease.id, "'xsupervise stop'")
        await asyncio.wait([lease.entry.running], timeout=wait)
        return (
            f"{display}: stopped (lease {lease.id} of pool {pool}, held by pid {holder}, "
            f"revoked; xsupervise serve pid {os.getpid()})"
        )

    async def list(self) -> Reply:
        from ._local_ops import local_records

        # With abandoned ones (see local_records), in a worker thread as for status.
        records = await asyncio.get_running_loop().run_in_executor(
            None, local_records, self.runtime
        )
        return {
            "sessions": [record.as_dict() for record in records],
            "pools": self.daemon.pools.info(),
        }

    async def status(self, target: str | None) -> Reply:
        from ._local_ops import session_status

        # In a worker thread: it stops what dead supervisors left (see local_records), which
        # may take up to twice the kill grace.
        entries = await asyncio.get_running_loop().run_in_executor(
            None, session_status, self.runtime, target, self.daemon.policy, time.time()
        )
        return {
            "sessions": entries,
            "status": self.registry.status_line(),
            "pools": self.daemon.pools.info(),
        }

    async def reset(self, name: str | None) -> Reply:
        from ._ledger import Ledger

        if not name:
            raise UsageError('reset needs "name": NAME.')
        return {"name": name, "had_history": Ledger(self.runtime, name).reset()}

    async def lease(self, pool: str, wait: float, record: str | None = None) -> Reply:
        from ._control_server import CURRENT, MAX_LESSEES

        connection = CURRENT.get()
        if connection is None:
            raise UsageError("a lease is held by a control connection; ask over the socket.")
        if not connection.lessee:
            if self.daemon.control.lessees() >= MAX_LESSEES:
                raise EnvironmentProblem(
                    f"{MAX_LESSEES} connections hold or wait for leases already; release some."
                )
            connection.lessee = True
        lease = await self.daemon.pools.lease(pool, float(wait), connection.gone)
        connection.leases.add(lease.id)  # before the reply: a closed connection releases it
        if record:  # an absolute path; finished before the display is destroyed
            from ._aio import run_steps

            try:
                await run_steps(_record_lease_steps(lease.entry.core.server, record, lease.id))
            except BaseException:
                connection.leases.discard(lease.id)
                self.daemon.pools.release(lease.id)
                raise
        return lease.reply()

    async def release(self, lease: str | None) -> Reply:
        from ._control_server import CURRENT

        if not lease:
            raise UsageError('release needs "lease": the id the lease op replied with.')
        connection = CURRENT.get()
        if connection is not None and lease not in connection.leases:  # another's: in use
            raise NoSuchSession(f"this connection holds no lease {lease!r}; release your own.")
        if self.daemon.pools.release(lease) is None:
            raise NoSuchSession(f"no lease {lease!r} is held in this daemon (released already?).")
        if connection is not None:
            connection.leases.discard(lease)
        return {"released": lease}

    async def pools(self) -> Reply:
        return {"pools": self.daemon.pools.info()}

    def connection_closed(self, leases: set[str]) -> None:
        """A lessee's connection closed (it exited, crashed, was killed): end its leases."""
        for lease in leases:
            self.daemon.pools.release(lease)


def _record_lease_steps(server: object, path: str, lease: str) -> Steps[None]:
    """The daemon's part of a ``lease`` with ``record``: record the leased display (its
    session's XServer) until its lease ends; return once its first frame is taken."""
    from ._recording import READY_WAIT, start_recording
    from ._server import XServer

    assert isinstance(server, XServer) and server.number is not None  # leased once ready
    recording = server.recording = start_recording(
        server.number, server.files.auth_path, path, server.settings.record_fps, lease
    )
    if not (yield from recording.ready_steps(READY_WAIT)):  # the lessee must know: refused
        server.recording = None
        recording.kill_now(1.0)
        from ._errors import EnvironmentProblem

        status = recording.child.returncode
        raise EnvironmentProblem(
            recording.death_line(status if status is not None else -9, "the lease is refused")
        )
