"""Restart storms in simulated time (tests/fakes.py), with the default policy: relaunchers
that restart xsupervise at once and SIGKILL it at their timeout, for minutes. The real-time,
end-to-end versions (smaller policies, seconds) are in test_restart.py and
test_jupyter_launcher.py, marked realtime."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from fake_driver import Run, Stop, World, worlds_fixture  # noqa: F401 - a fixture
from fakes import MISSING, NEVER, READY

from xsupervise.host.errors import ReadyTimeout
from xsupervise.launch.server import load_records
from xsupervise.session.session import Event, Mode, Session


def relaunch(
    world: World, make: Callable[[], Session], seconds: float, kill_after: float = float("inf")
) -> list[Run]:
    """A relauncher: starts a supervisor again the moment one ends, and SIGKILLs one still
    running ``kill_after`` s after it started; for ``seconds``. The runs, in order."""
    runs: list[Run] = []
    end = world.clock.now + seconds
    while world.clock.now < end:
        run = world.run(make())
        runs.append(run)
        if not run.advance(until=min(end, world.clock.now + kill_after)):
            if world.clock.now >= end:
                break
            run.kill()
    return runs


@pytest.mark.parametrize("jitter", [0.0, 1.0, None])
def test_a_relauncher_cannot_make_a_storm(worlds, monkeypatch, jitter):
    """jupyter-server-proxy style: relaunch at once on exit, SIGKILL after 5 s; for a minute.
    The never-ready server times out after 2 s; with the default policy 5 failures are allowed
    per minute, the 6th makes the name FAILED for 300 s."""
    if jitter is not None:
        monkeypatch.setattr(random, "random", lambda: jitter)
    world = worlds([NEVER], displayfd_timeout=2.0)
    runs = relaunch(world, lambda: world.session("storm", Mode.CLI), 60.0, kill_after=5.0)
    spawned = world.launcher.spawned
    assert 3 <= len(spawned) <= 6, spawned
    assert len(runs) < 40, len(runs)
    assert all(isinstance(run.error, ReadyTimeout) for run in runs if run.ended)
    assert all(server.dead_by(world.clock.now) for server in spawned)
    # What the killed supervisors left was reclaimed by the next one that waited.
    live = {run.session.files.token for run in runs if not (run.killed or run.ended)}
    assert {record.token for record in load_records(world.runtime)} <= live


def test_supervisors_killed_while_starting_spend_the_budget(worlds):
    """Killed while its server is still starting (the relauncher's timeout is shorter than the
    X deadline): the start left in flight counts as the failure it was."""
    world = worlds([NEVER], displayfd_timeout=10.0)
    runs = relaunch(world, lambda: world.session("inflight", Mode.CLI), 600.0, kill_after=5.0)
    assert len(runs) == 120 and all(run.killed for run in runs[:-1])  # the last: at the end
    assert len(world.launcher.spawned) <= 15
    with world.ledger("inflight").update() as history:
        assert "was killed while starting its X server" in history.last_failure


def test_an_app_that_crashes_at_once_spends_the_budget(worlds):
    """--relaunched with a COMMAND that exits 1 as soon as it starts: each failure backs off
    (1, 2, 4, 8 s times a jitter in [0.5, 1]): at most 5 starts in 10 s."""
    world = worlds([READY])

    def crash(session: Session, event: Event) -> None:
        if event is Event.VERIFIED:  # what ForegroundSupervisor does when COMMAND fails
            session.record_app_failure("COMMAND 'sh' (pid 1) exited with status 1")
            raise Stop

    runs = relaunch(world, lambda: world.session("crash", Mode.RELAUNCHED, on_event=crash), 10.0)
    assert 2 <= len(world.launcher.spawned) <= 5, world.launcher.spawned
    assert all(isinstance(run.error, Stop) for run in runs if run.ended)


def test_a_missing_x_server_spends_the_budget_too(worlds):
    world = worlds([MISSING])
    runs = relaunch(world, lambda: world.session("nox", Mode.RELAUNCHED), 10.0)
    assert 2 <= len(runs) <= 6, len(runs)


def test_a_never_ready_x_server_cannot_storm_through_jupyter(worlds):
    """test_jupyter_launcher.py's minute of requests, in simulated time: each request starts
    the launcher (relaunched at once on exit) and gives up on it at the proxy's timeout
    (backoff_max + X deadline + 30 s); the X server never answers within its 1 s."""
    world = worlds([NEVER], displayfd_timeout=1.0, backoff_max=4.0)
    proxy_timeout = 4.0 + 1.0 + 30.0
    launches = gave_up = 0
    end = 60.0
    while world.clock.now < end:
        request_end = min(end, world.clock.now + proxy_timeout)
        while world.clock.now < request_end:
            launches += 1
            run = world.run(world.session("jupyter-xinfo", Mode.RELAUNCHED))
            if not run.advance(until=request_end):
                if world.clock.now >= end:
                    break
                run.kill()
                gave_up += 1
    budget = world.settings.start_limit_burst + 1
    assert 1 <= len(world.launcher.spawned) <= budget
    assert launches >= 3 and gave_up >= 1
