"""The restart policy as pure functions, with a fake clock (no processes, no sleeping)."""

from __future__ import annotations

from xsupervise.launch.settings import RestartPolicy
from xsupervise.session.session import (
    History,
    begin_start,
    may_start,
    record_death,
    record_failure,
    record_ready,
)

MAX_JITTER = lambda: 1.0  # noqa: E731 - the longest delays
MIN_JITTER = lambda: 0.0  # noqa: E731 - the shortest


def never_alive(_pid, _ticks) -> bool:
    return False


def test_delay_doubles_from_about_one_second_to_a_cap_with_jitter():
    rules = RestartPolicy()
    assert rules.delay(0) == 0.0
    assert [rules.delay(n, MAX_JITTER) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert [rules.delay(n, MIN_JITTER) for n in range(1, 4)] == [0.5, 1, 2]
    assert rules.delay(10_000, MAX_JITTER) == 60


def test_more_than_burst_failures_in_the_window_is_failed():
    rules = RestartPolicy(start_limit_burst=5, start_limit_interval=60)
    history = History()
    for second in range(5):
        record_failure(history, 10.0 * second, rules, "boom", jitter=MIN_JITTER)
    assert history.failed_at is None
    record_failure(history, 50.0, rules, "boom", jitter=MIN_JITTER)
    assert history.failed_at == 50.0
    decision = may_start(history, 51.0, rules, never_alive)
    assert (decision.go, decision.state, decision.until) == (False, "failed", 350.0)


def test_failures_outside_the_window_do_not_count():
    rules = RestartPolicy(start_limit_burst=2, start_limit_interval=10)
    history = History()
    for now in (0.0, 20.0, 40.0, 60.0):
        record_failure(history, now, rules, "boom")
    assert history.failed_at is None and history.failures == [60.0]


def test_backoff_holds_the_next_start_back():
    rules = RestartPolicy()
    history = History()
    record_failure(history, 100.0, rules, "boom", jitter=MAX_JITTER)
    record_failure(history, 101.0, rules, "boom", jitter=MAX_JITTER)
    waiting = may_start(history, 102.0, rules, never_alive)
    assert (waiting.go, waiting.state, waiting.until) == (False, "backoff", 103.0)
    assert may_start(history, 103.0, rules, never_alive).go


def test_a_start_left_in_flight_by_a_dead_supervisor_is_a_failure():
    rules = RestartPolicy()
    history = History()
    begin_start(history, 0.0, "token", pid=4242, ticks=7)
    decision = may_start(history, 5.0, rules, never_alive, jitter=MAX_JITTER)
    assert history.in_flight == {}
    assert history.failures == [0.0] and history.in_a_row == 1
    assert "supervisor pid 4242 was killed" in history.last_failure
    assert (decision.go, decision.until) == (False, 6.0)


def test_a_start_in_flight_of_a_live_supervisor_is_left_alone():
    history = History()
    begin_start(history, 0.0, "token", pid=4242, ticks=7)
    assert may_start(history, 5.0, RestartPolicy(), lambda pid, ticks: True).go
    assert "token" in history.in_flight


def test_after_the_cooldown_one_try_on_probation():
    rules = RestartPolicy(start_limit_burst=1, failed_cooldown=100)
    history = History()
    record_failure(history, 0.0, rules, "boom")
    record_failure(history, 1.0, rules, "boom")
    assert history.failed_at == 1.0
    assert not may_start(history, 100.0, rules, never_alive).go
    assert may_start(history, 101.0, rules, never_alive).go
    record_failure(history, 102.0, rules, "again")
    assert history.failed_at == 102.0  # failed again at once, not after another burst


def test_a_server_that_proved_itself_restarts_at_once():
    rules = RestartPolicy(reset_after=60)
    history = History()
    record_failure(history, 0.0, rules, "boom")
    record_death(history, 100.0, rules, uptime=61.0, reason="died")
    assert history.in_a_row == 0 and history.failures == []
    assert may_start(history, 100.0, rules, never_alive).go
    record_death(history, 110.0, rules, uptime=5.0, reason="died young")
    assert not may_start(history, 110.0, rules, never_alive).go


def simulate_relauncher(seconds: float, kill_after: float, jitter) -> tuple[int, int]:
    """A relauncher that restarts xsupervise the moment it exits and SIGKILLs it after
    ``kill_after`` s, with an X server that never becomes ready: (spawns, launches)."""
    rules = RestartPolicy()
    history = History()
    now, spawns, launches = 0.0, 0, 0
    while now < seconds:
        launches += 1
        me, killed_at = launches, now + kill_after
        alive = lambda pid, ticks, me=me: pid == me  # noqa: E731 - only the current one lives
        while True:
            decision = may_start(history, now, rules, alive, jitter=jitter)
            if decision.go:
                begin_start(history, now, f"t{me}", pid=me, ticks=0)
                spawns += 1
                break  # never ready; killed while waiting for it
            if decision.until >= killed_at:
                break  # killed while waiting for its turn
            now = decision.until
        now = killed_at
    return spawns, launches


def test_a_relauncher_for_ten_minutes_costs_a_bounded_number_of_spawns():
    for jitter in (MIN_JITTER, MAX_JITTER):
        spawns, launches = simulate_relauncher(600, kill_after=5, jitter=jitter)
        assert spawns <= 15, (spawns, jitter())
        assert launches == 120


def test_only_one_try_after_the_cooldown_even_with_many_waiters():
    """Regression (review): every waiter sharing the name used to get the probation try."""
    rules = RestartPolicy(start_limit_burst=1, failed_cooldown=100)
    history = History()
    record_failure(history, 0.0, rules, "boom")
    record_failure(history, 1.0, rules, "boom")
    first = may_start(history, 101.0, rules, lambda pid, ticks: True)
    assert first.go
    begin_start(history, 101.0, "first", pid=1, ticks=1)
    second = may_start(history, 101.5, rules, lambda pid, ticks: True)
    assert (second.go, second.state) == (False, "backoff")
    record_ready(history, "first")
    assert may_start(history, 102.0, rules, lambda pid, ticks: True).go
