"""Steps: slow operations written once, as generators, and the blocking driver that runs them.

A steps generator yields requests and is sent their results:
- ``Wait(fds, deadline)``: "wake me when one of these fds is readable, or at this deadline";
  it is sent the set of readable fds (empty at the deadline).
- ``Offload(fn, *args)``: "run this blocking call where it blocks nobody"; it is sent the
  call's return value, or has its exception thrown in.

``run_blocking`` here drives them with poll(2) (the CLI, ``Display``); ``host.aio.run_steps`` drives
them on an asyncio loop (``AsyncDisplay``, ``serve``), where an Offload runs in a worker thread.
So there is one launch path, and nothing on it may block except through an Offload.
"""

from __future__ import annotations

import math
import select
import time
from collections.abc import Callable, Generator

# typing costs the CLI milliseconds at start-up; mypy reads this branch as always taken.
TYPE_CHECKING = False
if TYPE_CHECKING:
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
    (``host.aio.run_steps``), inline under ``run_blocking``. The steps are sent its return value,
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


def run_blocking(steps: Steps[_T], events: Events | None = None) -> _T:
    """Drive ``steps`` to completion in this thread with poll(2).

    An exception raised while we wait (KeyboardInterrupt, or one raised by ``events``) is
    thrown into the steps, so that their cleanup runs before it propagates.
    """
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
