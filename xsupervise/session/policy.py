"""Restart policy: pure functions of the restart history and the clock. No processes here.

- Backoff: the n-th consecutive failure makes the next start wait ``initial * 2**(n-1)``,
  capped at ``max_delay``, times a jitter factor in [0.5, 1] (so that many sessions failing
  together do not retry in lock-step). A server that was up ``reset_after`` seconds has
  proven itself: the count starts again and its restart is immediate.
- Start limit: more than ``burst`` failed starts within ``interval`` seconds puts the session
  in FAILED. A FAILED session gets one new try after ``cooldown``; if that fails, it is
  FAILED again at once.

Every start is counted as a failure *before* it is made, and cleared only when it succeeds:
so a supervisor killed in the middle of a start (by a relauncher's timeout) still spends
its budget, and nothing that restarts xsupervise can turn into a storm.
"""

from __future__ import annotations

from collections.abc import Callable

from ..launch.settings import RestartPolicy
from .states import State

TYPE_CHECKING = False  # typing costs the CLI milliseconds to import: only for the checker
if TYPE_CHECKING:
    from typing import Any, ClassVar, NotRequired, TypedDict

    class InFlight(TypedDict):
        pid: int
        ticks: int | None
        at: float
        daemon: NotRequired[bool]  # started by xsupervise serve (see may_start)


class History:
    """The restart history of one session name, as kept in the ledger (plain, JSON-ready data).

    Several sessions may share a name (parallel `xsupervise run`s share the default one): they
    share its budget, and each start in flight is listed under its session's token.
    """

    FIELDS: ClassVar[dict[str, Any]] = {
        "failures": [],  # wall times of failed starts, newest last, pruned to the window
        "in_a_row": 0,  # consecutive failed starts since a server last proved itself
        "next_start_at": 0.0,  # no start before this wall time
        "failed_at": None,  # FAILED since this wall time, or None
        "on_probation": False,  # the one try after a cool-down: a failure is FAILED at once
        "last_failure": None,  # one line: what went wrong last
        "in_flight": {},  # token -> {"pid", "ticks", "at"}: starts not known to succeed yet
        "starts": 0,  # every start made under this name since the last reset
        "name": None,  # the session name (the file name may have been sanitised)
    }
    __slots__ = tuple(FIELDS)
    failures: list[float]
    in_a_row: int
    next_start_at: float
    failed_at: float | None
    on_probation: bool
    last_failure: str | None
    in_flight: dict[str, InFlight]
    starts: int
    name: str | None

    def __init__(self, **values: Any) -> None:
        for name, default in self.FIELDS.items():
            value = values.get(name, default)
            copied = type(default)(value) if isinstance(default, list | dict) else value
            setattr(self, name, copied)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}

    def failed_until(self, policy: RestartPolicy) -> float | None:
        return None if self.failed_at is None else self.failed_at + policy.failed_cooldown


class Decision:
    """What ``may_start`` answers: go now, or not before ``until`` (and why)."""

    __slots__ = ("go", "until", "state", "reason")

    def __init__(
        self, go: bool, until: float = 0.0, state: State | None = None, reason: str = ""
    ) -> None:
        self.go, self.until, self.state, self.reason = go, until, state, reason

    def __repr__(self) -> str:
        return "Decision(go)" if self.go else f"Decision({self.state} until {self.until:.1f})"


def record_failure(
    history: History,
    now: float,
    policy: RestartPolicy,
    reason: str,
    *,
    token: str | None = None,
    at: float | None = None,
    jitter: Callable[[], float] | None = None,
) -> None:
    """A start failed, or a server died before it proved itself."""
    if token is not None:
        history.in_flight.pop(token, None)
    history.in_a_row += 1
    history.failures.append(now if at is None else at)
    history.failures = [t for t in history.failures if t > now - policy.start_limit_interval]
    history.last_failure = reason
    history.next_start_at = max(history.next_start_at, now + policy.delay(history.in_a_row, jitter))
    if history.on_probation or len(history.failures) > policy.start_limit_burst:
        history.failed_at = now
        history.on_probation = False


def may_start(
    history: History,
    now: float,
    policy: RestartPolicy,
    supervisor_alive: Callable[[int, int | None], bool],
    jitter: Callable[[], float] | None = None,
) -> Decision:
    """Whether a start may happen now.

    A start left in flight by a supervisor that is gone (killed by a relauncher's timeout,
    say) counts as the failure it was: that is what keeps relaunchers from storming. Except
    a daemon's: the daemon bounds every start by its own timeout and records how it went,
    so a start it left in flight was cut short by the daemon's death (systemd's restart of
    it, an OOM kill), not failed by its X server; it counts as nothing.
    """
    for token, start in list(history.in_flight.items()):
        if supervisor_alive(start["pid"], start["ticks"]):
            continue
        if start.get("daemon"):
            history.in_flight.pop(token)
        else:
            record_failure(
                history,
                now,
                policy,
                f"supervisor pid {start['pid']} was killed while starting its X server",
                token=token,
                at=start["at"],
                jitter=jitter,
            )
    if history.failed_at is not None:
        until = history.failed_at + policy.failed_cooldown
        if now < until:
            return Decision(False, until, State.FAILED, history.last_failure or "")
        # The cool-down is over: one new try, on probation. Everyone else sharing the name
        # waits (another cool-down at most) until that try is ready or has failed.
        history.failed_at = None
        history.on_probation = True
        history.failures = []
        history.next_start_at = now + policy.failed_cooldown
        return Decision(True)
    if now < history.next_start_at:
        return Decision(False, history.next_start_at, State.BACKOFF, history.last_failure or "")
    return Decision(True)


def begin_start(
    history: History, now: float, token: str, pid: int, ticks: int | None, daemon: bool = False
) -> None:
    history.in_flight[token] = {"pid": pid, "ticks": ticks, "at": now}
    if daemon:
        history.in_flight[token]["daemon"] = True
    history.starts += 1


def record_handed_over(history: History) -> None:
    """A pool's spare was handed to a lessee: spares can be made, and live until used. The
    consecutive count (the backoff) starts again; the start limit still counts the failures
    in its window, so spares that die soon after every start still make the pool FAILED."""
    if history.failed_at is None and not history.on_probation:
        history.in_a_row = 0
        history.next_start_at = 0.0


def record_ready(history: History, token: str) -> None:
    history.in_flight.pop(token, None)
    if history.on_probation:  # the try after a cool-down worked: others may start again
        history.on_probation = False
        history.next_start_at = 0.0


def record_stable(history: History) -> None:
    """A server stayed up ``reset_after``: it has proven itself; forget the failures."""
    history.in_a_row = 0
    history.failures = []
    history.on_probation = False
    history.failed_at = None
    history.next_start_at = 0.0


def record_death(
    history: History,
    now: float,
    policy: RestartPolicy,
    uptime: float,
    reason: str,
    jitter: Callable[[], float] | None = None,
) -> None:
    """A ready server died. After a stable run it restarts at once; before, it is a failure."""
    if uptime >= policy.reset_after:
        record_stable(history)
        history.last_failure = reason
    else:
        record_failure(history, now, policy, reason, jitter=jitter)
