"""A session's restart budget: wait until the ledger allows a start, record a failed one.

Functions of a ``Session`` (``_session.py``), kept apart so that the state machine's class
stays readable: they read and write its ledger, files and state (through ``transition``).
"""

from __future__ import annotations

from . import _policy as policy
from ._clock import clock_time
from ._errors import SessionFailed
from ._process import Offload, Wait, same_process
from ._records import own_identity
from ._recovery import reclaim_abandoned
from ._states import Event, State

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._session import Session
    from ._steps import Steps

_LEDGER_RECHECK = 1.0  # seconds: 'xsupervise reset' is noticed this fast by a waiting session


def await_budget(session: Session) -> Steps[None]:
    """Return when the ledger allows a start (and has noted it as in flight)."""
    announced = None
    give_up = session.mode.gives_up_when_failed(session.no_wait, session.ready_once)
    while True:
        now = session.clock.wall()
        with session.ledger.update() as history:
            decision = policy.may_start(history, now, session.policy, same_process)
            if decision.go:
                daemon = session.mode.kind == "daemon"
                policy.begin_start(history, now, session.files.token, *own_identity(), daemon)
                session.next_retry_at = None
                return
        if decision.state == State.FAILED and give_up:
            session._go(Event.GIVE_UP)
            raise SessionFailed(_failed_line(session, history, decision))
        if (decision.state, decision.until) != announced:
            if announced is None and session.mode.reclaims:
                # A start that goes ahead reclaims what killed supervisors left, once its
                # server is spawned; one that waits must do it now, or every supervisor
                # a relauncher kills while it waits would leave its files.
                yield Offload(reclaim_abandoned, session.runtime, session.settings.kill_grace)
            announced = (decision.state, decision.until)
            session._go(Event.COOL_DOWN if decision.state == State.FAILED else Event.BACKOFF)
            session.next_retry_at = decision.until
            session.last_failure = decision.reason or session.last_failure
            session.files.save(
                state=session.state, next_retry_at=decision.until, last_failure=decision.reason
            )
            what = "FAILED, cooling down" if session.state == State.FAILED else "backing off"
            session._log(
                "warning",
                "session %s is %s: next start at %s (in %.2f s). Last failure: %s",
                session.name,
                what,
                clock_time(decision.until),
                decision.until - now,
                decision.reason or "(none)",
            )
            session.on_event(session, "waiting")
        # Ask the ledger again at least every second: 'xsupervise reset' may have cleared it.
        wake_at = min(decision.until, now + _LEDGER_RECHECK)
        yield Wait((), session.clock.monotonic() + max(0.0, wake_at - session.clock.wall()))


def record_failure(session: Session, reason: str) -> None:
    with session.ledger.update() as history:
        policy.record_failure(
            history, session.clock.wall(), session.policy, reason, token=session.files.token
        )
    session._go(Event.START_FAILED)
    session.last_failure = reason
    session.files.save(state=session.state, last_failure=reason)


def _failed_line(session: Session, history: policy.History, decision: policy.Decision) -> str:
    rules = session.policy
    return (
        f"session {session.name} is FAILED: {len(history.failures)} failed starts in "
        f"{rules.start_limit_interval:g} s (limit {rules.start_limit_burst}), FAILED since "
        f"{clock_time(history.failed_at)}; next try allowed at {clock_time(decision.until)}. "
        f"Last failure: {decision.reason or '(unknown)'} Fix the cause, then run "
        f"'xsupervise reset {session.name}' to try at once."
    )
