"""The event loop never blocks (issue 10, item 3): a 20 ms heartbeat keeps beating while a
server is stopped (SIGSTOP), slow to die, stuck after SIGKILL, or while crash recovery waits
for an abandoned server that resists SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import psutil
import pytest
from heartbeat import Heartbeat

import xsupervise
from conftest import FAKE_X, fake_server, read_report, requires_xvfb

# The kill grace of the servers in these tests. A loop that blocked would block for a whole
# grace (>= GRACE, whatever the load), so any GRACE above MAX_GAP tells the two apart; 0.6 s
# keeps it 1.5 times MAX_GAP without waiting out a full second (or two) per test.
GRACE = 0.6


@pytest.fixture(autouse=True)
def server_as_our_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests stop or hold our child itself (SIGSTOP, a withheld SIGKILL): the X server
    must be that child, as in the fallback boundary (in a PID namespace a shell outside it is,
    and the namespace's init would stop a stopped server itself: tests/test_containment.py)."""
    monkeypatch.setenv("XSUPERVISE_CONTAINMENT", "group")


MAX_GAP = 0.4  # the longest the heartbeat may wait: well under GRACE, which a blocked loop costs


class LogEvent(logging.Handler):
    """Sets ``event`` when the xsupervise logger emits a message containing ``words``."""

    def __init__(self, words: str):
        super().__init__()
        self.words = words
        self.event = asyncio.Event()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.words in record.getMessage():
            self.lines.append(record.getMessage())
            self.event.set()

    def __enter__(self) -> Self:
        logging.getLogger("xsupervise").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("xsupervise").removeHandler(self)


async def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


async def stop_it(pid: int) -> None:
    """SIGSTOP our child ``pid`` and return once it is stopped (waitid, in a thread)."""
    os.kill(pid, signal.SIGSTOP)
    await asyncio.get_running_loop().run_in_executor(
        None, os.waitid, os.P_PID, pid, os.WSTOPPED | os.WNOWAIT
    )


@requires_xvfb
def test_a_stopped_server_is_stopped_and_reaped_without_blocking_the_loop(
    runtime_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="xsupervise")

    async def main() -> tuple[int, float, float]:
        async with Heartbeat() as beat:
            display = await xsupervise.AsyncDisplay(kill_grace=GRACE).start()
            pid = display.server_pid
            await stop_it(pid)  # SIGTERM now stays pending: only the SIGKILL ends it
            beat.reset()
            started = time.monotonic()
            await display.stop()
            return pid, time.monotonic() - started, beat.max_gap

    pid, took, gap = asyncio.run(main())
    assert took >= GRACE, "a stopped server cannot have obeyed SIGTERM"
    assert gap < MAX_GAP, f"the loop was blocked for {gap:.2f} s"
    assert not psutil.pid_exists(pid)
    assert f"did not exit within {GRACE:.1f} s of SIGTERM; sending SIGKILL" in caplog.text
    assert list((runtime_dir / "sessions").iterdir()) == []


@requires_xvfb
def test_a_server_that_outlives_sigkill_is_named_and_awaited_without_blocking(
    runtime_dir: Path,
) -> None:
    """Stuck in the kernel (D state): SIGKILL is pending until it leaves. Simulated by a
    stopped server whose SIGKILL we hold back until the stuck line was logged."""

    async def main() -> tuple[int, float, list[str], int | None]:
        with LogEvent("stuck in the kernel") as stuck:
            async with Heartbeat() as beat:
                display = await xsupervise.AsyncDisplay(kill_grace=GRACE).start()
                server = display._display._server
                assert server is not None
                child, pid = server.child, server.pid
                real_signal = child.signal
                child.signal = lambda signum: (
                    None if signum == signal.SIGKILL else real_signal(signum)
                )  # type: ignore[method-assign]
                await stop_it(pid)
                beat.reset()
                stopping = asyncio.create_task(display.stop())
                await asyncio.wait_for(stuck.event.wait(), 15)  # due 2 * GRACE after the stop
                assert not stopping.done()
                gap = beat.max_gap
                os.kill(pid, signal.SIGKILL)  # it leaves the kernel at last
                await stopping
                return pid, gap, stuck.lines, child.returncode

    pid, gap, lines, status = asyncio.run(main())
    assert gap < MAX_GAP, f"the loop was blocked for {gap:.2f} s"
    assert status == -signal.SIGKILL
    assert not psutil.pid_exists(pid)
    line = (
        f"Xvfb (pid {pid}) has not exited {GRACE:.1f} s after SIGKILL: it is stuck in the "
        "kernel (D state: a hung disk, network filesystem or device); still waiting for it, "
        "without blocking."
    )
    assert lines == [line]
    assert list((runtime_dir / "sessions").iterdir()) == []


def test_a_server_slow_to_die_does_not_block_the_loop(
    tmp_path: Path, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = tmp_path / "report"
    monkeypatch.setenv("FAKE_X_REPORT", str(report))

    async def main() -> tuple[float, float]:
        async with Heartbeat() as beat:
            display = xsupervise.AsyncDisplay(
                server=fake_server("ignore-term"), timeout=30, kill_grace=GRACE
            )
            starting = asyncio.create_task(display.start())
            await wait_until(lambda: "ignoring" in read_report(report))
            beat.reset()
            started = time.monotonic()
            starting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await starting
            return time.monotonic() - started, beat.max_gap

    took, gap = asyncio.run(main())
    assert took >= GRACE, "it ignores SIGTERM: only the SIGKILL after the grace ends it"
    assert gap < MAX_GAP, f"the loop was blocked for {gap:.2f} s"
    assert not psutil.pid_exists(int(read_report(report)["pid"]))
    assert list((runtime_dir / "sessions").iterdir()) == []


def _abandoned_server(tmp_path: Path, runtime_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A server that ignores SIGTERM, recorded by a supervisor that is gone; its record's token."""
    from xsupervise.host.paths import RuntimeDir
    from xsupervise.launch.process import start_ticks
    from xsupervise.launch.server import SessionRecord

    report = tmp_path / "abandoned"
    server = subprocess.Popen(
        [sys.executable, FAKE_X, "-displayfd", "2", "ignore-term"],
        env={**os.environ, "FAKE_X_REPORT": str(report)},
    )
    supervisor = subprocess.Popen(["cat"], stdin=subprocess.PIPE)
    supervisor_ticks = start_ticks(supervisor.pid)  # alive until we close its stdin
    supervisor.communicate()
    deadline = time.monotonic() + 15
    while "ignoring" not in read_report(report):
        assert time.monotonic() < deadline, "the abandoned server never started"
        time.sleep(0.01)
    token = f"{supervisor.pid}.{supervisor_ticks}-0badf00d"
    SessionRecord(
        token=token,
        name="abandoned",
        kind="cli",
        supervisor_pid=supervisor.pid,
        supervisor_ticks=supervisor_ticks,
        server_pid=server.pid,
        server_ticks=start_ticks(server.pid),
    ).save(RuntimeDir.create(str(runtime_dir)))
    return server, token


@requires_xvfb
def test_crash_recovery_during_an_async_start_runs_off_the_loop(
    tmp_path: Path, runtime_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="xsupervise")
    abandoned, token = _abandoned_server(tmp_path, runtime_dir)
    try:

        async def main() -> tuple[float, float, int | None]:
            async with Heartbeat() as beat:
                started = time.monotonic()
                async with xsupervise.AsyncDisplay(
                    kill_grace=GRACE, runtime_dir=str(runtime_dir)
                ) as display:
                    took, gap = time.monotonic() - started, beat.max_gap
                    assert display.server_pid != abandoned.pid
                    return took, gap, abandoned.poll()  # recovery waited for its exit

        took, gap, status = asyncio.run(main())
    finally:
        if abandoned.returncode is None:
            abandoned.kill()
            abandoned.wait()
    assert status == -signal.SIGKILL, "recovery SIGKILLs a server that resists SIGTERM"
    assert took >= GRACE, "the start waited for the recovery"
    assert gap < MAX_GAP, f"the loop was blocked for {gap:.2f} s"
    assert (
        f"stopped X server pid {abandoned.pid} of abandoned: its supervisor pid "
        f"{token.split('.')[0]} is gone."
    ) in caplog.text
    assert list((runtime_dir / "sessions").iterdir()) == []


def _term_pending(pid: int) -> bool:
    """SIGTERM waits in the (stopped) process's shared pending set: it was sent."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("ShdPnd:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def test_a_second_cancel_during_the_grace_kills_at_once(
    tmp_path: Path, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = tmp_path / "report"
    monkeypatch.setenv("FAKE_X_REPORT", str(report))

    async def main() -> tuple[int, float, float]:
        async with Heartbeat() as beat:
            display = xsupervise.AsyncDisplay(server=fake_server("mute"), timeout=60, kill_grace=60)
            starting = asyncio.create_task(display.start())
            # Its number written (a server that has not told it gets no SIGTERM: _teardown).
            await wait_until(lambda: "wrote" in read_report(report))
            pid = int(read_report(report)["pid"])
            await stop_it(pid)  # so that the SIGTERM stays pending, for us to see
            started = time.monotonic()
            starting.cancel()
            await wait_until(lambda: _term_pending(pid))  # now in the 60 s grace
            beat.reset()
            starting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await starting
            return pid, time.monotonic() - started, beat.max_gap

    pid, took, gap = asyncio.run(main())
    assert took < 10, "the second cancel cut the 60 s grace short"
    assert gap < MAX_GAP, f"the loop was blocked for {gap:.2f} s"
    assert not psutil.pid_exists(pid)
    assert list((runtime_dir / "sessions").iterdir()) == []
