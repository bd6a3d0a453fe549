"""A session's states, the events that move it, the one transition table, and its modes.

``session.session.Session`` runs the steps; this module says what they may do. ``State`` is a
``StrEnum``, so that records on disk, JSON replies and log fields keep the plain strings
("ready", "backoff"...) and ``State.READY == "ready"``.
"""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    STARTING = "starting"  # launching an X server (or about to ask the budget for the first)
    READY = "ready"  # a verified server runs; watching it
    BACKOFF = "backoff"  # a start failed or the server died: waiting for the next start
    FAILED = "failed"  # the start limit was reached: cooling down, or giving up
    STOPPING = "stopping"  # stopping the server, then the session ends
    # Never a live session's: a record's, once its supervisor has died (list/status show it,
    # the next start clears it; see session.local_ops).
    ABANDONED = "abandoned"


class Event(enum.Enum):
    START = "start"  # the budget allows a start: launch
    BACKOFF = "backoff"  # the budget says wait (backoff) before the next start
    COOL_DOWN = "cool-down"  # the budget says FAILED: wait for the cool-down
    GIVE_UP = "give-up"  # the budget says FAILED and this session does not wait: it ends
    VERIFIED = "verified"  # the server was launched and verified ready
    START_FAILED = "start-failed"  # the launch failed (and was counted against the budget)
    DIED = "died"  # the ready server died
    STOP = "stop"  # a stop (or an error) while a server runs: stop it, then end
    ENDED = "ended"  # the session's steps are over, however they ended (told, not a transition)


_S, _R, _B, _F = State.STARTING, State.READY, State.BACKOFF, State.FAILED
# The table of ``transition``'s docstring (a test checks that the two agree).
_NEXT: dict[State, dict[Event, State]] = {
    State.STARTING: {
        Event.START: _S,
        Event.BACKOFF: _B,
        Event.COOL_DOWN: _F,
        Event.GIVE_UP: _F,
        Event.VERIFIED: _R,
        Event.START_FAILED: _B,
    },
    State.BACKOFF: {Event.START: _S, Event.BACKOFF: _B, Event.COOL_DOWN: _F, Event.GIVE_UP: _F},
    State.FAILED: {Event.START: _S, Event.BACKOFF: _B, Event.COOL_DOWN: _F, Event.GIVE_UP: _F},
    State.READY: {Event.DIED: _B, Event.STOP: State.STOPPING},
    State.STOPPING: {},
    State.ABANDONED: {},
}


class ImpossibleTransition(RuntimeError):
    """A bug: the session did something its table does not allow."""


def transition(state: State, event: Event) -> State:
    """The state after ``event`` in ``state``; an impossible pair raises ImpossibleTransition.

    ::

        state/event START    BACKOFF COOL_DOWN GIVE_UP VERIFIED START_FAILED DIED    STOP     ENDED
        starting    starting backoff failed    failed  ready    backoff      -       -        -
        ready       -        -       -         -       -        -            backoff stopping -
        backoff     starting backoff failed    failed  -        -            -       -        -
        failed      starting backoff failed    failed  -        -            -       -        -
        stopping    -        -       -         -       -        -            -       -        -
        abandoned   -        -       -         -       -        -            -       -        -

    - A session is born ``starting`` and asks the budget (ledger + policy) before each start:
      START launches; BACKOFF / COOL_DOWN wait (asked again at least every second, so a
      ``reset`` is seen); GIVE_UP ends the session with SessionFailed.
    - From ``ready`` only the server's death (DIED) or a stop leaves: a death goes through
      ``backoff`` even when the policy lets it restart at once (it proved itself).
    - ENDED is told (``on_event``) when the steps are over, however they ended; it moves
      no state.
    - A stop while no server runs (starting, backoff, failed) is no transition: the launch
      path cleans up after itself, and the steps end in the state they were in. ``stopping``
      is final: the steps end once the server is reaped.
    """
    try:
        return _NEXT[state][event]
    except KeyError:
        raise ImpossibleTransition(
            f"a session cannot go from {state.value} on {event.name}; this is a bug in xsupervise."
        ) from None


class PoolState(enum.StrEnum):
    """A warm pool's state, derived from its spares' (see daemon.pool.Pool.state)."""

    READY = "ready"  # every spare is ready
    REFILLING = "refilling"  # some spare is starting
    FAILED = "failed"  # a spare's budget is spent: the pool is cooling down
    STOPPED = "stopped"  # the daemon is stopping it


class Mode(enum.Enum):
    """Who runs a session, which decides how it treats failures.

    Separate from ``--no-wait`` (``Session(no_wait=True)``): a session that must not wait
    out a FAILED budget, in any mode.
    """

    CLI = "cli"  # xsupervise start / run, in the foreground
    RELAUNCHED = "relaunched"  # start / run --relaunched: a relauncher restarts us on every exit
    DAEMON_CONFIGURED = "daemon-configured"  # a [session.NAME] in the daemon's config
    DAEMON_REQUESTED = "daemon-requested"  # a `start` op sent to the daemon
    DAEMON_POOL = "daemon-pool"  # a spare display of a [pool.NAME]
    DAEMON_LEASED = "daemon-leased"  # a pool's display handed to a lessee: theirs now

    @property
    def kind(self) -> str:
        """What the session's record says started it: "cli" or "daemon"."""
        return "cli" if self in (Mode.CLI, Mode.RELAUNCHED) else "daemon"

    @property
    def ends_with_its_server(self) -> bool:
        """Its server's death ends the session, counted in no budget: a leased display
        belongs to its lessee, and what the lessee does to it (a GUI test that crashes its
        X server) says nothing about whether the pool can make spares. The lessee is told."""
        return self is Mode.DAEMON_LEASED

    @property
    def restarts_on_its_number(self) -> bool:
        """A dead server is restarted on the same display number, so that its clients can
        reconnect. Not a pool's spare: no client knows its number yet, and the number its
        death freed may be taken by another spare meanwhile (a restart on it would then fail
        again and again, spending the pool's budget until the pool is FAILED)."""
        return self is not Mode.DAEMON_POOL

    @property
    def retries_first_start(self) -> bool:
        """A failed first start is retried by the policy, not raised; and once ready, a FAILED
        budget is waited out rather than ending the session. A configured session must come
        up by itself (a mount or package may not be there yet at boot); so must a pool's
        spares, which are refilled under the pool name's budget."""
        return self in (Mode.DAEMON_CONFIGURED, Mode.DAEMON_POOL)

    @property
    def reclaims(self) -> bool:
        """Clears what killed supervisors left, itself (blocking for up to twice the kill
        grace); the daemon does that in a thread of its own instead."""
        return self in (Mode.CLI, Mode.RELAUNCHED)

    @property
    def counts_environment_problems(self) -> bool:
        """E.g. a missing server binary spends the budget even though it ends the session:
        something restarts us whenever we exit, so every exit must count."""
        return self is Mode.RELAUNCHED

    @property
    def counts_app_failures(self) -> bool:
        """A COMMAND that fails on the display spends the budget like a death of the server:
        the relauncher would otherwise restart it, with a fresh X server, at once."""
        return self is Mode.RELAUNCHED

    def counts_failed_start(self, crashed: bool) -> bool:
        """Whether a failed start spends the budget: a server that did not become ready
        (StartError) always; an EnvironmentProblem (e.g. no such server binary) only where it
        is retried, or where every exit of ours is followed by a relaunch."""
        return crashed or self.retries_first_start or self.counts_environment_problems

    def retries_failed_start(self, crashed: bool, first: bool) -> bool:
        """Whether a failed start is retried by the policy, rather than ending the session with
        its error: a restart's (a display was ready), and every one of a configured daemon
        session, which retries by the policy, and says so, rather than giving up because a
        mount or package was not there yet at boot. The CLI reports an EnvironmentProblem
        (exit 5) and a failed first start (exit 3 or 4) at once."""
        return self.retries_first_start or (crashed and not first)

    def gives_up_when_failed(self, no_wait: bool, ready_once: bool) -> bool:
        """Whether a FAILED budget ends the session (SessionFailed) rather than waiting out the
        cool-down: with --no-wait; or, except for a configured daemon session, once its display
        has been ready (restarts that reach the start limit end a CLI session with exit 7).
        A session not yet ready waits (unless --no-wait)."""
        return no_wait or (ready_once and not self.retries_first_start)
