"""``xsupervise serve``: many supervised displays in one process, and a control socket.

The daemon's parts: this module is its life cycle (signals, readiness, reload, watchdog);
``_registry`` holds its sessions (``DaemonEntry``, each running ``_session.Session`` as an
asyncio task: the same launch path and restart policy as the command line);
``_control_server`` answers the control socket, whose protocol is ``_protocol``, through
``_daemon_ops``.

systemd: READY=1 once every configured session is ready or FAILED; STATUS= one line;
WATCHDOG=1 from the event loop (so a stuck loop stops the pings); RELOADING=1 and a config
re-read on SIGHUP; STOPPING=1 on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
import time

from . import _log as log
from ._control_server import ControlServer
from ._daemon_ops import DaemonOps
from ._errors import ExitCode, XSuperviseError
from ._lease import Pools
from ._listener import Listener
from ._notify import Notifier
from ._paths import RuntimeDir
from ._pool_spec import load_pool_specs
from ._registry import Registry
from ._settings import load_session_specs, load_settings

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs time
if TYPE_CHECKING:
    from collections.abc import Mapping

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
        from ._recovery import reclaim_abandoned

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
