"""Drive generator steps (host/steps.py) on an asyncio event loop: the async twin of run_blocking.

Waiting is done with ``loop.add_reader`` on the steps' fds (pipes, sockets, pidfds) and a
timer at their deadline; blocking calls the steps hand over as ``Offload`` (crash recovery,
the stale-file scan) run in the loop's default executor. So the loop is never blocked. A
cancellation is thrown into the steps like any other exception: they stop their X server
(TERM, grace, KILL, reap), remove its files, and re-raise; a second cancellation during the
grace escalates to SIGKILL at once.
"""

from __future__ import annotations

import asyncio

from .steps import Offload, Steps, Wait

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeVar

    _T = TypeVar("_T")


async def run_steps(steps: Steps[_T]) -> _T:
    """Run ``steps`` to completion on the running loop; return their value."""
    loop = asyncio.get_running_loop()
    sent: object = None  # a fresh generator must first be sent None
    error: BaseException | None = None
    while True:
        try:
            request = steps.throw(error) if error is not None else steps.send(sent)
        except StopIteration as done:
            value: _T = done.value
            return value
        error = None
        try:
            if isinstance(request, Offload):
                # If we are cancelled meanwhile, the call still runs to its end in its thread;
                # the steps learn of the cancellation at once.
                sent = await loop.run_in_executor(None, request.call)
            else:
                sent = await _wait(loop, request)
        except BaseException as exc:  # noqa: BLE001 - e.g. CancelledError: handed to the steps
            error = exc


async def _wait(loop: asyncio.AbstractEventLoop, wait: Wait) -> set[int]:
    future: asyncio.Future[None] = loop.create_future()
    ready: set[int] = set()

    def wake(fd: int | None = None) -> None:
        if fd is not None:
            ready.add(fd)
        if not future.done():
            future.set_result(None)

    for fd in wait.fds:
        loop.add_reader(fd, wake, fd)
    # loop.time() is time.monotonic(), the clock of Wait.deadline.
    timer = loop.call_at(wait.deadline, wake) if wait.deadline is not None else None
    try:
        await future
    finally:
        for fd in wait.fds:
            loop.remove_reader(fd)
        if timer is not None:
            timer.cancel()
    return ready
