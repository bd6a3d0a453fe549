"""Steps: slow operations written once, as generators, and the two drivers that run them.

A steps generator yields requests and is sent their results:
- ``Wait(fds, deadline)``: "wake me when one of these fds is readable, or at this deadline";
  it is sent the set of readable fds (empty at the deadline).
- ``Offload(fn, *args)``: "run this blocking call where it blocks nobody"; it is sent the
  call's return value, or has its exception thrown in.

``run_blocking`` here drives them with poll(2) (the CLI, ``Display``); ``run_steps`` drives
them on an asyncio loop (``AsyncDisplay``, ``serve``), where an Offload runs in a worker thread.
So there is one launch path, and nothing on it may block except through an Offload.

On the loop, waiting is ``loop.add_reader`` on the steps' fds (pipes, sockets, pidfds) and a
timer at their deadline; an Offload (crash recovery, the stale-file scan) runs in the loop's
default executor, so the loop is never blocked. A cancellation is thrown into the steps like
any other exception: they stop their X server (TERM, grace, KILL, reap), remove its files,
and re-raise; a second cancellation during the grace escalates to SIGKILL at once.
"""

from __future__ import annotations

import math
import select
import time
from collections.abc import Callable, Generator

# typing costs the CLI milliseconds at start-up; mypy reads this branch as always taken.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from typing import Any, TypeAlias, TypeVar

    _T = TypeVar("_T")
    # Yields Wait or Offload requests, is sent their results, returns a T.
    Steps: TypeAlias = Generator["Wait | Offload", Any, _T]
else:
    Steps = Generator


class Wait:
    """Resume when one of ``fds`` is readable or at ``deadline`` (time.monotonic(); None: never)."""

    __slots__ = ("deadline", "fds")

    def __init__(self, fds: tuple[int, ...], deadline: float | None):
        self.fds = fds
        self.deadline = deadline

    def __repr__(self) -> str:
        return f"Wait(fds={self.fds}, deadline={self.deadline})"


class Offload:
    """Run blocking ``fn(*args)`` off the event loop: in a worker thread under asyncio
    (``host.steps.run_steps``), inline under ``run_blocking``. The steps are sent its return value,
    or have its exception thrown into them. ``fn`` must not spawn processes: they would die
    with the worker thread (PR_SET_PDEATHSIG, see launch.process.spawn)."""

    __slots__ = ("args", "fn")

    def __init__(self, fn: Callable[..., object], *args: object):
        self.fn = fn
        self.args = args

    def __repr__(self) -> str:
        return f"Offload({getattr(self.fn, '__name__', self.fn)})"

    def call(self) -> object:
        return self.fn(*self.args)


class Events:
    """Things a driver watches besides the steps' own fds (signals, a COMMAND, a watchdog).

    ``handle`` is called with the ready fds among ``fds()`` (possibly none, when ``deadline()``
    has passed); an exception it raises is thrown into the steps, so that their cleanup runs.
    """

    def fds(self) -> tuple[int, ...]:
        return ()

    def deadline(self) -> float | None:
        return None

    def handle(self, ready: set[int]) -> None:
        pass


def _advance(steps: Steps[_T], sent: object, error: BaseException | None) -> tuple[bool, Any]:
    """One move of ``steps`` (both drivers make it): send them ``sent``, or throw ``error``
    into them. (True, their value) once they have ended; else (False, what they ask for)."""
    try:
        return False, steps.throw(error) if error is not None else steps.send(sent)
    except StopIteration as done:
        return True, done.value


def run_blocking(steps: Steps[_T], events: Events | None = None) -> _T:
    """Drive ``steps`` to completion in this thread with poll(2).

    An exception raised while we wait (KeyboardInterrupt, or one raised by ``events``) is
    thrown into the steps, so that their cleanup runs before it propagates.
    """
    sent: object = None  # a fresh generator must first be sent None
    error: BaseException | None = None
    while True:
        done, request = _advance(steps, sent, error)
        if done:
            value: _T = request  # their value
            return value
        error = None
        try:
            if isinstance(request, Offload):
                sent = request.call()
            elif events is not None:
                sent = _wait_with_events(request, events)
            else:
                sent = poll_ready(request)
        except BaseException as exc:  # noqa: BLE001 - handed to the steps, which re-raise it
            error = exc


def _wait_with_events(wait: Wait, events: Events) -> set[int]:
    """Poll until the steps' own fds or deadline are due, handling ``events`` meanwhile."""
    while True:
        own_fds = events.fds()
        own_deadline = events.deadline()
        deadline = wait.deadline
        if own_deadline is not None and (deadline is None or own_deadline < deadline):
            deadline = own_deadline
        ready = poll_ready(Wait(wait.fds + own_fds, deadline))
        mine = ready.intersection(own_fds)
        if mine or (own_deadline is not None and time.monotonic() >= own_deadline):
            events.handle(mine)
        ready -= mine
        if ready or (wait.deadline is not None and time.monotonic() >= wait.deadline):
            return ready


def poll_ready(wait: Wait) -> set[int]:
    """Block until one of the fds is readable or the deadline passes; the readable fds."""
    poller = select.poll()
    for fd in wait.fds:
        poller.register(fd, select.POLLIN)
    if wait.deadline is None:
        timeout_ms = None
    else:
        timeout_ms = max(0, math.ceil((wait.deadline - time.monotonic()) * 1000))
    return {fd for fd, _ in poller.poll(timeout_ms)}


# -- the asyncio driver ------------------------------------------------------------------
async def run_steps(steps: Steps[_T]) -> _T:
    """Run ``steps`` to completion on the running loop; return their value."""
    import asyncio  # here: the CLI's run_blocking path has no use for it

    loop = asyncio.get_running_loop()
    sent: object = None  # a fresh generator must first be sent None
    error: BaseException | None = None
    while True:
        done, request = _advance(steps, sent, error)
        if done:
            value: _T = request  # their value
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
    """Wait on the loop (``add_reader`` and a timer) until one fd is readable or the deadline
    passes; the readable fds."""
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
