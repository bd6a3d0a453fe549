"""The daemon's logic on its seam (issue 21): pools (leases, refills, the budget, reload,
stop) and sessions (restarts, FAILED, requests), with a fake launcher whose servers are pipes
(tests/pipe_servers.py), on a real event loop, in milliseconds. The same behaviour end to
end, with real daemons and Xvfb: test_pool.py, test_pool_lessee.py, test_pool_chaos.py and
test_serve.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pipe_servers import PipeLauncher

from xsupervise.daemon.pool_spec import PoolSpec
from xsupervise.daemon.pools import LeaseTimeout, Pools
from xsupervise.daemon.registry import Registry
from xsupervise.host.errors import SessionFailed
from xsupervise.host.log import Notifier
from xsupervise.host.paths import RuntimeDir
from xsupervise.launch.settings import SessionSpec, Settings
from xsupervise.session.session import Ledger, PoolState, State, holds_nothing

FAST = {"backoff_initial": 0.01, "backoff_max": 0.02, "start_limit_interval": 60.0}


def spec(size: int, name: str = "default", **settings: object) -> PoolSpec:
    return PoolSpec(name, size, Settings(**{**FAST, **settings}))  # type: ignore[arg-type]


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Yield to the loop until ``check()``: the pool's tasks run meanwhile."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "never got there"
        await asyncio.sleep(0.001)


@pytest.fixture
def world(runtime_dir: Path):
    """run(test) runs ``test(pools, launcher, told)`` on a fresh loop with a fresh Pools; every
    pool is stopped after, and every fake server must be gone by then."""
    runtime = RuntimeDir.discover()  # the test's own (see conftest's isolated)
    launchers: list[PipeLauncher] = []

    def run(test, launcher: PipeLauncher | None = None) -> None:
        launcher = launcher or PipeLauncher()
        launchers.append(launcher)
        told: list[tuple[str, dict]] = []

        async def main() -> None:
            pools = Pools(runtime, lambda: None, launcher)
            pools.tell = lambda lease, event: told.append((lease.id, event))
            try:
                await test(pools, launcher, told)
            finally:
                await pools.stop()
            assert launcher.alive() == [], "a server outlived the pools' stop"

        asyncio.run(main())

    yield run
    for launcher in launchers:
        launcher.close()


def test_a_lease_is_handed_out_at_once_and_the_pool_refills(world):
    async def test(pools: Pools, launcher: PipeLauncher, told) -> None:
        pools.apply([spec(2)])
        pools.begin()
        await until(lambda: pools.pools["default"].ready() == 2)
        lease = await pools.lease("default", wait=0)
        assert lease.entry.session.display is not None
        await until(lambda: pools.pools["default"].ready() == 2)  # its replacement
        assert len(launcher.spawned) == 3 and pools.leased("default") == 1
        assert pools.pools["default"].state == PoolState.READY

    world(test)


def test_a_leased_display_that_dies_ends_its_lease_and_spends_no_budget(world):
    async def test(pools: Pools, launcher: PipeLauncher, told) -> None:
        pools.apply([spec(1, start_limit_burst=2)])
        pools.begin()
        for _ in range(10):  # five times the start limit: a lessee's crash is not the pool's
            await until(lambda: pools.pools["default"].ready() == 1)
            lease = await pools.lease("default", wait=1)
            server = next(s for s in launcher.spawned if s.pid == lease.entry.session.server.pid)
            server.die()
            await until(lambda lease=lease: any(t[0] == lease.id for t in told))
        assert [event["reason"] for _, event in told] == ["died"] * 10
        assert "killed by SIGKILL" in told[-1][1]["message"]
        await until(lambda: pools.pools["default"].ready() == 1)  # no start in flight
        history = Ledger(pools.runtime, "pool.default").read()
        assert holds_nothing(history), history.as_dict()
        assert pools.pools["default"].state != PoolState.FAILED

    world(test)


def test_starts_that_fail_make_the_pool_failed_and_a_lease_says_why(world):
    async def test(pools: Pools, launcher: PipeLauncher, told) -> None:
        pools.apply([spec(1, start_limit_burst=3)])
        pools.begin()
        await until(lambda: pools.pools["default"].state == PoolState.FAILED)
        with pytest.raises(SessionFailed, match="pool default is FAILED: 4 failures"):
            await pools.lease("default", wait=1)
        assert len(launcher.spawned) == 4  # past the start limit (3), and not one start more

    world(test, PipeLauncher(fails=lambda _index: True))


def test_a_spare_that_dies_idle_is_replaced_and_counted(world):
    async def test(pools: Pools, launcher: PipeLauncher, told) -> None:
        pools.apply([spec(1, start_limit_burst=5)])
        pools.begin()
        await until(lambda: pools.pools["default"].ready() == 1)
        launcher.spawned[0].die()
        await until(lambda: len(launcher.spawned) == 2 and pools.pools["default"].ready() == 1)
        history = Ledger(pools.runtime, "pool.default").read()
        assert len(history.failures) == 1  # an idle spare's death says spares cannot be kept

    world(test)


def test_release_destroys_the_display_and_a_lease_waits_for_the_next_spare(world):
    async def test(pools: Pools, launcher: PipeLauncher, told) -> None:
        pools.apply([spec(1)])
        pools.begin()
        first = await pools.lease("default", wait=1)  # waits for the first spare
        server = first.entry.session.server
        assert pools.release(first.id) is first
        await until(lambda: not server.alive)
        assert told == []  # a release is the lessee's own: nothing to tell
        with pytest.raises(LeaseTimeout, match="no display of pool default became ready"):
            await pools.lease("default", wait=0)  # its replacement is still starting
        second = await pools.lease("default", wait=1)
        assert second.entry.session.server is not server

    world(test, PipeLauncher(starts_in=0.05))


def test_a_reload_grows_shrinks_and_removes_pools_without_touching_leases(world):
    async def test(pools: Pools, launcher: PipeLauncher, told) -> None:
        pools.apply([spec(1), spec(1, name="other")])
        pools.begin()
        await until(lambda: all(pool.ready() == 1 for pool in pools.pools.values()))
        lease = await pools.lease("other", wait=1)
        pools.apply([spec(3)])  # default grows; other goes, its leased display stays
        await until(lambda: pools.pools["default"].ready() == 3)
        assert "other" not in pools.pools and lease.entry.session.server.alive
        pools.apply([spec(1)])
        await until(lambda: len(launcher.alive()) == 1 + 1)  # one spare, and the lease's
        assert pools.release(lease.id) is lease

    world(test)


# -- the daemon's sessions (daemon/registry.py), on the same seam ---------------------------------


def registry_world(test, launcher: PipeLauncher) -> None:
    """Run ``test(registry, launcher)`` with a Registry whose sessions use ``launcher``; every
    session is stopped after, and every fake server must be gone by then."""

    async def main() -> None:
        registry = Registry(RuntimeDir.discover(), Notifier({}), launcher)
        try:
            await test(registry, launcher)
        finally:
            await registry.stop(list(registry))
        assert launcher.alive() == [] and len(registry) == 0

    try:
        asyncio.run(main())
    finally:
        launcher.close()


def test_a_configured_session_that_dies_comes_back_on_its_number(runtime_dir):
    async def test(registry: Registry, launcher: PipeLauncher) -> None:
        entry = registry.start(SessionSpec("main", 42, Settings(**FAST)), "config")
        await until(lambda: entry.session.state == State.READY)
        assert registry.status_line() == "1 display ready (:42)"
        launcher.spawned[0].die()
        await until(lambda: entry.session.restarts == 1 and entry.session.state == State.READY)
        assert launcher.spawned[1].number == 42  # its clients can reconnect
        assert not launcher.spawned[0].alive

    registry_world(test, PipeLauncher())


def test_a_configured_session_that_cannot_start_is_failed_not_a_storm(runtime_dir):
    async def test(registry: Registry, launcher: PipeLauncher) -> None:
        settings = Settings(**{**FAST, "start_limit_burst": 2})
        entry = registry.start(SessionSpec("broken", None, settings), "config")
        await until(lambda: entry.session.state == State.FAILED)
        assert registry.status_line() == "0 displays ready, 1 FAILED (broken)"
        assert len(launcher.spawned) == 3  # past the start limit (2), then no more
        assert entry.session.next_retry_at - time.time() > 250  # cooling down: 300 s

    registry_world(test, PipeLauncher(fails=lambda _index: True))


def test_a_requested_session_that_cannot_start_ends_with_its_error(runtime_dir):
    async def test(registry: Registry, launcher: PipeLauncher) -> None:
        entry = registry.start(SessionSpec("once", None, Settings(**FAST)), "request")
        await until(lambda: entry.running.done())
        assert "exited with status 1" in str(entry.error)
        assert len(launcher.spawned) == 1 and len(registry) == 0  # tried once, as `start` is

    registry_world(test, PipeLauncher(fails=lambda _index: True))
