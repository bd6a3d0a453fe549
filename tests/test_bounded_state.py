"""Nothing outlives its owner (issue 15): clean sessions leave no ledger files, failing ones
keep their history; the daemon's lock file goes with its socket at a clean stop."""

from __future__ import annotations

import os

from fake_driver import Stop, worlds_fixture  # noqa: F401 - a fixture
from fakes import EXITS, READY, dies

from xsupervise.host.listener import bind
from xsupervise.session.session import Ledger, Mode


def ledger_files(world) -> list[str]:
    directory = os.path.join(world.runtime.path, "ledger")
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def test_two_hundred_clean_sessions_with_unique_names_leave_o1_files(worlds):
    world = worlds([READY])
    for index in range(200):
        run = world.run(world.session(f"unique-{index}", Mode.DAEMON_REQUESTED))
        assert not run.advance(until=world.clock.now + 1.0)  # ready, and running
        assert run.session.state == "ready"
        assert isinstance(run.stop(), Stop)
    assert ledger_files(world) == []
    assert len(os.listdir(world.runtime.path)) <= 4  # the directories, never one per name


def test_a_failure_history_is_kept_and_reset_removes_it(worlds):
    world = worlds([EXITS, READY], backoff_initial=1.0)
    run = world.run(world.session("flaky", Mode.DAEMON_CONFIGURED))
    assert not run.advance(until=world.clock.now + 5.0)  # failed once, then ready
    assert isinstance(run.stop(), Stop)
    assert ledger_files(world) == ["flaky.json", "flaky.lock"]  # in_a_row: the next backoff
    assert Ledger(world.runtime, "flaky").read().in_a_row == 1
    assert Ledger(world.runtime, "flaky").reset()
    assert ledger_files(world) == []


def test_a_server_that_proved_itself_leaves_nothing(worlds):
    world = worlds([dies(3.0), READY], reset_after=2.0)
    run = world.run(world.session("proved", Mode.DAEMON_CONFIGURED))
    assert not run.advance(until=world.clock.now + 10.0)  # died after a stable run: restarted
    assert run.session.restarts == 1
    assert isinstance(run.stop(), Stop)
    assert ledger_files(world) == []


def test_a_lock_removed_by_a_pruner_is_not_trusted(worlds):
    # Whoever holds the lock of an inode the pruner removed must lock the new file instead.
    world = worlds([READY])
    ledger = Ledger(world.runtime, "race")
    with ledger.update() as history:
        history.in_a_row = 1
    stale = os.open(ledger.lock_path, os.O_RDWR)
    try:
        with ledger.update() as history:
            history.in_a_row = 0
        ledger.prune()
        assert ledger_files(world) == []
        fd = ledger._lock()  # a fresh file, not the removed inode `stale` still holds open
        try:
            assert os.fstat(fd).st_ino == os.stat(ledger.lock_path).st_ino
        finally:
            os.close(fd)
    finally:
        os.close(stale)
        Ledger(world.runtime, "race").reset()


def test_the_control_sockets_lock_file_goes_at_a_clean_stop(tmp_path):
    directory = tmp_path / "sock"
    directory.mkdir(mode=0o700)
    listener = bind(str(directory / "control.sock"))
    assert sorted(os.listdir(directory)) == ["control.sock", "control.sock.lock"]
    listener.close()
    assert os.listdir(directory) == []
