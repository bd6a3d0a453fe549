"""What a pool's restart budget counts (issue 20), in simulated time: a leased display is its
lessee's, so its death counts nowhere; the budget counts starts that fail and spares that die
while idle; a spare handed over restarts the backoff; a start left in flight by a killed
daemon counts as nothing. The same, end to end with a real daemon: tests/test_pool_lessee.py."""

from __future__ import annotations

from fake_driver import worlds_fixture  # noqa: F401 - the fixture
from fakes import NEVER, READY, Behaviour, dies

from xsupervise.launch.process import same_process
from xsupervise.session.session import Mode, holds_nothing, may_start, record_handed_over

POOL = "pool.default"


def hand_over(session) -> None:
    """What daemon.pool.Pool.take does to a ready spare it hands to a lessee."""
    session.mode = Mode.DAEMON_LEASED
    with session.ledger.update() as history:
        record_handed_over(history)


def test_fifty_leased_server_deaths_in_sixty_seconds_spend_no_budget(worlds):
    # Every server dies 1.1 s after it is ready: 50 lessees crash their X servers in 60 s.
    world = worlds([dies(1.1)], start_limit_burst=5, start_limit_interval=60.0)
    for index in range(50):
        session = world.session(POOL, Mode.DAEMON_POOL)
        run = world.run(session)
        assert not run.advance(until=world.clock.now + 0.06)  # ready, idle
        assert session.state == "ready"
        hand_over(session)
        assert run.advance(until=world.clock.now + 2.0), f"lease {index} did not end"
        assert run.error is None  # it ended, quietly: its lessee is told (the daemon's part)
        assert "killed by SIGKILL" in (session.last_failure or "")
    assert world.clock.now <= 60.0
    history = world.ledger(POOL).read()
    assert holds_nothing(history), history.as_dict()  # no failure, no backoff, not FAILED
    assert may_start(history, world.clock.wall(), world.settings.policy(), same_process).go


def test_a_spare_that_dies_idle_counts_and_a_handover_restarts_the_backoff(worlds):
    # Spares that die 0.5 s after every start (idle) are the pool's failure: backoff, then
    # FAILED at the start limit; a handover of a good spare resets the backoff, not the limit.
    world = worlds([dies(0.5)], start_limit_burst=3, backoff_initial=1.0, backoff_max=60.0)
    session = world.session(POOL, Mode.DAEMON_POOL)
    run = world.run(session)
    assert not run.advance(until=world.clock.now + 0.6)  # died idle: a failure
    history = world.ledger(POOL).read()
    assert (len(history.failures), history.in_a_row) == (1, 1)
    assert history.next_start_at > world.clock.wall()
    hand_over_history = history
    record_handed_over(hand_over_history)
    assert (len(hand_over_history.failures), hand_over_history.in_a_row) == (1, 0)
    assert hand_over_history.next_start_at == 0.0
    assert not run.advance(until=world.clock.now + 30.0)
    assert session.state == "failed"  # burst 3: the fourth idle death within 60 s
    run.stop()


def test_a_start_left_in_flight_by_a_killed_daemon_counts_as_nothing(worlds):
    world = worlds([NEVER, READY])
    session = world.session(POOL, Mode.DAEMON_POOL)
    killed = world.run(session)
    assert not killed.advance(until=1.0)  # its spare is starting...
    killed.kill()  # ...when the daemon is SIGKILLed (systemd restarts it)
    (start,) = world.ledger(POOL).read().in_flight.values()
    assert start["daemon"] is True
    again = world.session(POOL, Mode.DAEMON_POOL)
    run = world.run(again)
    assert not run.advance(until=world.clock.now + 0.1)
    assert again.state == "ready"  # at once: no backoff
    history = world.ledger(POOL).read()
    assert history.failures == [] and history.in_a_row == 0
    run.stop()


def test_a_cli_start_left_in_flight_still_counts_as_the_failure_it_was(worlds):
    # The relauncher's case (issue 4) is unchanged: a killed supervisor's start is a failure.
    world = worlds([Behaviour(ready_after=None), READY])
    killed = world.run(world.session("cli", Mode.CLI))
    assert not killed.advance(until=1.0)
    killed.kill()
    run = world.run(world.session("cli", Mode.CLI))
    assert not run.advance(until=world.clock.now + 0.01)
    history = world.ledger("cli").read()
    assert len(history.failures) == 1 and "was killed while starting" in history.last_failure
    run.stop()


def test_a_spare_that_died_idle_is_restarted_on_any_free_number(worlds):
    # Found by the chaos test: a spare restarted on its old number found it taken by another
    # spare meanwhile, failed, and failed again until the pool was FAILED.
    world = worlds([dies(0.5), READY], backoff_initial=0.01, backoff_max=0.01)
    session = world.session(POOL, Mode.DAEMON_POOL)
    run = world.run(session)
    assert not run.advance(until=world.clock.now + 1.0)
    first, second = world.launcher.spawned
    assert session.state == "ready" and second.number != first.number
    run.stop()
