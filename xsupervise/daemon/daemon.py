"""``xsupervise serve``: many supervised displays in one process, and a control socket.

The daemon's parts: this module is its life cycle (signals, readiness, reload, watchdog)
and what its requests do (``DaemonOps``); ``daemon.registry`` holds its sessions (``DaemonEntry``,
each running ``session.session.Session`` as an asyncio task: the same launch path and restart
policy as the command line); ``daemon.control_server`` answers the control socket, whose protocol
is ``daemon.protocol``, through ``DaemonOps``.

systemd: READY=1 once every configured session is ready or FAILED; STATUS= one line;
WATCHDOG=1 from the event loop (so a stuck loop stops the pings); RELOADING=1 and a config
re-read on SIGHUP; STOPPING=1 on SIGTERM/SIGINT.

``DaemonOps``: one coroutine per op of ``daemon.protocol.OPS``, named after it and taking its
fields as keyword arguments (already checked, defaults filled in); it returns the reply's
fields (``Op.reply``) or raises an XSuperviseError, which becomes the error reply.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

from ..host import log
from ..host.errors import (
    EnvironmentProblem,
    ExitCode,
    NoSuchSession,
    StartError,
    UsageError,
    XSuperviseError,
)
from ..host.listener import Listener
from ..host.log import Notifier
from ..host.paths import RuntimeDir
from ..host.version import __version__
from ..launch.settings import (
    SessionSpec,
    default_session_name,
    load_session_specs,
    load_settings,
    parse_display,
)
from . import protocol
from .control_server import ControlServer
from .pool_spec import load_pool_specs
from .pools import Pools
from .registry import Registry

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs time
if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..host.processes import Steps
    from .protocol import Reply

# READY=1 waits for the configured sessions, but not forever: a server that hangs costs the
# whole --timeout per try, so with the default policy it may never become FAILED. After this
# long, READY=1 is sent anyway and STATUS= names what is not ready (systemd's own start
# timeout, TimeoutStartSec=90 in our unit, must not kill and restart us in a loop).
READY_DEADLINE = 60.0


class Daemon:
    """One ``xsupervise serve``: its sessions, its control socket, its talk with systemd."""

    def __init__(
        self,
        runtime: RuntimeDir,
        listener: Listener,
        *,
        flags: Mapping[str, object] | None = None,
        notifier: Notifier | None = None,
    ):
        self.runtime = runtime
        self.listener = listener
        self.flags = dict(flags or {})
        self.notifier = notifier or Notifier()
        self.registry = Registry(runtime, self.notifier)
        self.pools = Pools(runtime, self.registry.note_change)
        self.registry.more_status = self.pools.status_text
        self.control = ControlServer(DaemonOps(self))
        self.pools.tell = lambda lease, event: self.control.lease_ended(lease.id, event)
        self.config_path: str | None = None
        self.policy = load_settings(self.flags).policy()  # for status; re-read on SIGHUP
        self._stop = asyncio.Event()
        self._signals = 0
        self._reload_lock = asyncio.Lock()
        self._readiness: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Daemon on {self.listener!r}: {self.registry.status_line()}>"

    @property
    def stopping(self) -> bool:
        """A stop signal came: no new sessions."""
        return self._stop.is_set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.config_path, specs = load_session_specs(self.flags)  # a bad file: exit 2 now
        self.pools.apply(load_pool_specs(self.flags))  # known at once; spares once reclaimed
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        await self.control.start(self.listener.sock)
        await self._reclaim()
        self.pools.begin()
        log.get().info(
            "serving on %s (%s); config %s with %d session(s), %d pool(s).",
            self.listener.path or "a socket from systemd",
            "socket-activated" if self.listener.activated else "bound by us",
            self.config_path or "(none)",
            len(specs),
            len(self.pools.pools),
        )
        for spec in specs:
            self.registry.start(spec, "config")
        self._readiness = loop.create_task(self._announce_when_settled(first=True))
        watchdog = loop.create_task(self._watchdog()) if self.notifier.interval else None
        try:
            await self._stop.wait()
        finally:
            self.notifier.stopping(f"stopping {len(self.registry)} display(s)")
            for task in (self._readiness, watchdog):
                if task is not None:
                    task.cancel()
            self.control.close()  # every lessee sees its connection close
            await asyncio.gather(self.pools.stop(), self.registry.stop(list(self.registry)))
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
        return ExitCode.OK

    def _on_reload_signal(self) -> None:
        if not self._stop.is_set():
            asyncio.get_running_loop().create_task(self.reload())

    async def _reclaim(self) -> None:
        """Clear what killed supervisors left, in a thread: it may wait for a server's exit."""
        from ..launch.server import reclaim_abandoned

        await asyncio.get_running_loop().run_in_executor(None, reclaim_abandoned, self.runtime)

    def _on_stop_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals == 1:
            log.get().info("%s: stopping every display.", signal.Signals(signum).name)
            self._stop.set()
        else:  # a second signal: cut the X servers' grace short
            self.registry.cancel_all()
            self.pools.cancel_all()

    async def _watchdog(self) -> None:
        # This runs on the event loop: if the loop is stuck, the pings stop and systemd
        # restarts us (WatchdogSec=), which is the point.
        interval = self.notifier.interval
        assert interval is not None
        while True:
            self.notifier.ping()
            await asyncio.sleep(interval)

    async def _announce_when_settled(self, first: bool = False) -> None:
        """READY=1 once every configured session is ready or FAILED (or READY_DEADLINE)."""
        deadline = time.monotonic() + READY_DEADLINE
        changed = self.registry.changed
        while not (
            all(managed.settled() for managed in self.registry.configured())
            and self.pools.settled()
        ):
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), deadline - time.monotonic())
            except TimeoutError:
                log.get().error(
                    "not every configured display is ready after %g s; reporting "
                    "ready anyway so that systemd does not restart us in a loop: %s",
                    READY_DEADLINE,
                    self.registry.status_line(),
                )
                break
        self.notifier.ready(self.registry.status_line())
        log.get().info("%s: %s", "ready" if first else "reloaded", self.registry.status_line())

    async def reload(self) -> None:
        """SIGHUP: re-read the config file; start, stop or restart what changed."""
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                config_path, specs = load_session_specs(self.flags)
                pools = load_pool_specs(self.flags)
                policy = load_settings(self.flags).policy()
            except XSuperviseError as error:
                log.get().error("config not reloaded, keeping the old one: %s", error)
                self._announce_again()
                return
            self.config_path, self.policy = config_path, policy
            wanted = {spec.name: spec for spec in specs}
            outdated = [
                managed
                for managed in self.registry.configured()
                if wanted.get(managed.key) != managed.spec
            ]
            await self.registry.stop(outdated)
            if self._stop.is_set():  # SIGTERM came while we stopped them: start nothing new
                return
            for spec in specs:
                if self.registry.get(spec.name) is None:
                    self.registry.start(spec, "config")
            self.pools.apply(pools)  # leased displays are never touched
            log.get().info(
                "reloaded %s: %d session(s), %d stopped or restarted; %d pool(s).",
                self.config_path or "(no config file)",
                len(specs),
                len(outdated),
                len(pools),
            )
            self._announce_again()

    def _announce_again(self) -> None:
        """After RELOADING=1: READY=1 again once the (new) configured sessions are settled."""
        if self._readiness is not None:
            self._readiness.cancel()
        self._readiness = asyncio.get_running_loop().create_task(self._announce_when_settled())


def serve(
    runtime: RuntimeDir, listener: Listener, flags: Mapping[str, object] | None = None
) -> int:
    """Run the daemon until SIGTERM/SIGINT; the exit code."""
    import resource

    # Up to MAX_LESSEES connections, each with a display's pidfd and pipes: the soft limit
    # (1024 under systemd) would make a burst fail accept() and spawns; the hard one will not.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if resource.RLIM_INFINITY not in (soft, hard) and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        return asyncio.run(Daemon(runtime, listener, flags=flags).run())
    finally:
        listener.close()


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
        server = managed.session.server
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
            or (display and managed.session.display == f":{number}")
        ]
        lines = [
            f"{m.session.display or m.spec.name}: stopped (session {m.spec.name} of "
            f"xsupervise serve pid {os.getpid()})"
            for m in ours
        ]
        await self.registry.stop(ours)
        if display or all:
            from ..session.local_ops import stop_sessions

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
        from ..session.local_ops import local_records

        # With abandoned ones (see local_records), in a worker thread as for status.
        records = await asyncio.get_running_loop().run_in_executor(
            None, local_records, self.runtime
        )
        return {
            "sessions": [record.as_dict() for record in records],
            "pools": self.daemon.pools.info(),
        }

    async def status(self, target: str | None) -> Reply:
        from ..session.local_ops import session_status

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
        from ..session.session import Ledger

        if not name:
            raise UsageError('reset needs "name": NAME.')
        return {"name": name, "had_history": Ledger(self.runtime, name).reset()}

    async def lease(self, pool: str, wait: float, record: str | None = None) -> Reply:
        from .control_server import CURRENT, MAX_LESSEES

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
            from ..host.processes import run_steps

            try:
                await run_steps(_record_lease_steps(lease.entry.session.server, record, lease.id))
            except BaseException:
                connection.leases.discard(lease.id)
                self.daemon.pools.release(lease.id)
                raise
        return lease.reply()

    async def release(self, lease: str | None) -> Reply:
        from .control_server import CURRENT

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
    from ..launch.recording import READY_WAIT, start_recording
    from ..launch.server import XServer

    assert isinstance(server, XServer) and server.number is not None  # leased once ready
    recording = server.recording = start_recording(
        server.number, server.files.auth_path, path, server.settings.record_fps, lease
    )
    if not (yield from recording.ready_steps(READY_WAIT)):  # the lessee must know: refused
        server.recording = None
        recording.kill_now(1.0)
        from ..host.errors import EnvironmentProblem

        status = recording.child.returncode
        raise EnvironmentProblem(
            recording.death_line(status if status is not None else -9, "the lease is refused")
        )
