"""AsyncDisplay: the same launch path on an asyncio loop; concurrency and cancellation."""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from heartbeat import Heartbeat

import xsupervise
from conftest import fake_server, read_report, requires_xvfb, wait_gone

MAX_GAP = 0.25  # seconds without a heartbeat: far less than one start of Xvfb, loaded


async def xdpyinfo(env: dict[str, str]) -> str:
    process = await asyncio.create_subprocess_exec(
        "xdpyinfo", env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    return out.decode()


@requires_xvfb
def test_concurrent_starts_in_one_loop(runtime_dir: Path):
    async def main() -> None:
        displays = [
            xsupervise.AsyncDisplay(":auto", screen=f"{640 + 16 * i}x480x24") for i in range(4)
        ]
        # What a first start imports costs the loop once (~100 ms here), not per start.
        for module in (
            "xsupervise.launch.server",
            "xsupervise.host.sockets",
            "json",
        ):
            importlib.import_module(module)

        async with Heartbeat() as beat:  # proves the loop keeps running while servers start
            await asyncio.gather(*(display.start() for display in displays))
            # Sampled now: a start() that blocked the loop would show as one long gap.
            gap, ticks = beat.max_gap, beat.ticks
        try:
            print(f"heartbeat: {ticks} ticks, longest gap {gap * 1000:.0f} ms")
            assert gap < MAX_GAP, f"the loop was blocked for {gap:.2f} s ({ticks} heartbeats)"
            with pytest.raises(RuntimeError, match="already started"):
                await displays[0].start()
            assert len({display.display for display in displays}) == 4
            infos = await asyncio.gather(*(xdpyinfo(display.env) for display in displays))
            for i, info in enumerate(infos):
                assert f"{640 + 16 * i}x480 pixels" in info
            pids = [display.server_pid for display in displays]
        finally:
            await asyncio.gather(*(display.stop() for display in displays))
        assert not any(psutil.pid_exists(pid) for pid in pids)

    asyncio.run(main())
    assert list((runtime_dir / "sessions").iterdir()) == []


# A start cancelled before its server told its number waits this grace for it, then SIGKILLs:
# the cleanup is tested, not the default grace's length.
GRACE = 0.3


def test_cancellation_mid_start_leaves_nothing(tmp_path: Path, monkeypatch, runtime_dir: Path):
    report = tmp_path / "report"
    monkeypatch.setenv("FAKE_X_REPORT", str(report))

    async def main() -> None:
        display = xsupervise.AsyncDisplay(
            server=fake_server("grandchild"), timeout=30, kill_grace=GRACE
        )
        task = asyncio.create_task(display.start())
        while "grandchild" not in read_report(report):  # started, and not ready
            await asyncio.sleep(0.01)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 5  # the TERM grace, not the 30 s deadline

    asyncio.run(main())
    facts = read_report(report)
    assert not psutil.pid_exists(int(facts["pid"]))  # our child: reaped before we returned
    # The grandchild was orphaned to the test (a subreaper): it must be dead, and is reaped here.
    assert wait_gone(int(facts["grandchild"]), 1.0), "the grandchild survived the cancellation"
    assert list((runtime_dir / "sessions").iterdir()) == []


@requires_xvfb
def test_an_exception_inside_the_block_still_tears_down(runtime_dir: Path):
    async def main() -> int:
        with pytest.raises(RuntimeError, match="boom"):
            async with xsupervise.AsyncDisplay() as display:
                pid = display.server_pid
                await xdpyinfo(display.env)
                raise RuntimeError("boom")
        return pid

    pid = asyncio.run(main())
    assert not psutil.pid_exists(pid)
    assert list((runtime_dir / "sessions").iterdir()) == []


def test_a_failed_start_raises_the_documented_error():
    async def main() -> None:
        with pytest.raises(xsupervise.ServerExited) as failure:
            async with xsupervise.AsyncDisplay(server=fake_server("exit")):
                raise AssertionError("not reached")
        assert "cannot open virtual screen" in failure.value.stderr_tail

    asyncio.run(main())


@requires_xvfb
def test_a_second_start_racing_the_first_is_refused(runtime_dir: Path):
    async def main() -> None:
        display = xsupervise.AsyncDisplay(":auto")
        first, second = await asyncio.gather(
            display.start(), display.start(), return_exceptions=True
        )
        try:
            assert first is display
            assert isinstance(second, RuntimeError) and "already started" in str(second)
        finally:
            await display.stop()

    asyncio.run(main())
    assert list((runtime_dir / "sessions").iterdir()) == []
