"""``xsupervise.AsyncDisplay``: ``Display`` for asyncio, the same launch path driven by the
event loop (see host/processes.py)."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike, fspath
from types import TracebackType

from ..launch.launcher import launch_steps
from ..launch.recording import async_recording_block
from ..launch.server import XServer
from .display import Display

TYPE_CHECKING = False
if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager
    from typing import Self

    from ..launch.settings import Settings
    from .lease_client import LeasedServer


class AsyncDisplay:
    """``Display`` for asyncio: ``async with AsyncDisplay(":auto") as display: ...``.

    The same launch path, driven by the event loop (``host.processes.run_steps``): waiting is
    done with ``loop.add_reader`` on the server's pipe, socket and pidfd, so the loop is never
    blocked while the server starts or stops. Cancellation is safe: a task cancelled mid-start stops
    the server's process group (TERM, grace, KILL), reaps it and removes its files before the
    CancelledError propagates; cancelling it again during the grace kills at once.

    As with ``Display``, the server dies if the thread running the loop exits.
    """

    def __init__(
        self,
        display: str | int | None = ":auto",
        *,
        timeout: float | None = None,
        screen: str | None = None,
        server: str | Sequence[str] | None = None,
        kill_grace: float | None = None,
        name: str | None = None,
        runtime_dir: str | None = None,
        settings: Settings | None = None,
        pool: str | None = None,
        socket: str | None = None,
        wm: str | Sequence[str] | None = None,
        record: str | PathLike[str] | None = None,
    ):
        # A Display holds the settings and the accessors; only the driving differs.
        self._display = Display(
            display,
            timeout=timeout,
            screen=screen,
            server=server,
            kill_grace=kill_grace,
            name=name,
            runtime_dir=runtime_dir,
            settings=settings,
            pool=pool,
            socket=socket,
            wm=wm,
            record=record,
        )
        self._started = False

    def __repr__(self) -> str:
        return repr(self._display).replace("<Display", "<AsyncDisplay", 1)

    async def start(self) -> Self:
        from ..host.processes import run_steps

        inner = self._display
        # Checked and set before the first await: a second start() racing the first must not
        # launch a server that nothing would stop.
        if self._started:
            raise RuntimeError("this AsyncDisplay is already started; use a new one")
        self._started = True
        if inner._pool is not None:
            await self._lease()
            return self
        inner._server = await run_steps(
            launch_steps(
                inner._settings, inner._runtime(), inner._number, name=inner._name, kind="api"
            )
        )
        return self

    async def stop(self) -> None:
        """Stop the server (TERM, grace, KILL), reap it and remove its files. Idempotent."""
        from ..host.processes import run_steps

        server = self._display._server
        if isinstance(server, XServer):
            await run_steps(server.stop_steps())
        elif server is not None:
            server.release()  # closes its connection: no waiting

    async def _lease(self) -> None:
        import asyncio

        from .lease_client import take_lease

        inner = self._display
        assert inner._pool is not None
        # The round trip (or the wait for a spare) in a thread: the loop goes on meanwhile.
        taking = asyncio.get_running_loop().run_in_executor(
            None, take_lease, inner._pool, inner._socket, None, inner._record
        )

        def end_late_lease(done: asyncio.Future[LeasedServer]) -> None:
            if not done.cancelled() and done.exception() is None:
                done.result().release()

        try:
            inner._server = await asyncio.shield(taking)
        except asyncio.CancelledError:  # the lease may still arrive: end it when it does
            taking.add_done_callback(end_late_lease)
            raise

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def screenshot(
        self, path: str | PathLike[str], window: int | None = None
    ) -> tuple[int, int]:
        """``Display.screenshot``, in a worker thread: the loop goes on while it encodes."""
        import asyncio

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._display.screenshot, path, window)

    alive = property(lambda self: self._display.alive, doc=Display.alive.__doc__)

    def record(self, path: str | PathLike[str]) -> AbstractAsyncContextManager[str]:
        """``Display.record`` for asyncio: ``async with display.record("t.mp4"): ...``."""
        return async_recording_block(self._display, fspath(path))

    display = property(lambda self: self._display.display, doc=Display.display.__doc__)
    number = property(lambda self: self._display.number)
    env = property(lambda self: self._display.env, doc=Display.env.__doc__)
    server_pid = property(lambda self: self._display.server_pid)
    xauthority = property(lambda self: self._display.xauthority)
    facts = property(lambda self: self._display.facts, doc=Display.facts.__doc__)
    vnc = property(lambda self: self._display.vnc, doc=Display.vnc.__doc__)
