"""A fake launcher for the daemon's own logic (pools, leases, refills, budget, reload), on a
real asyncio loop in real time, in milliseconds: its servers are pipes, not processes.

A ``PipeServer`` is what a launcher returns (see session.session.LaunchedServer). Its "pidfd" is
the read end of a pipe: it becomes readable (the server "died") once the write end is closed,
by ``die()`` (a test's SIGKILL) or by its own ``stop_steps`` (a SIGTERM, obeyed at once). So
the daemon's code waits on it with the real driver (host.processes.run_steps), unchanged.

    launcher = PipeLauncher(starts_in=0.005)        # every server ready 5 ms after its spawn
    launcher = PipeLauncher(fails=lambda i: i >= 2)   # the third start on fails (exit 1)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator
from typing import Any

from xsupervise.host import errors
from xsupervise.host.processes import Wait
from xsupervise.launch.x11 import ServerFacts

FAKE_PIDS = 2_000_000  # above any real pid (pid_max is at most 4194304): never signalled


class PipeChild:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.pidfd, self._write_end = os.pipe2(os.O_CLOEXEC)

    def end(self) -> None:
        if self._write_end >= 0:
            os.close(self._write_end)
            self._write_end = -1

    def close(self) -> None:
        self.end()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


class PipeServer:
    def __init__(self, pid: int, number: int, files: Any) -> None:
        self.child = PipeChild(pid)
        self.pid = pid
        self.number: int | None = number
        self.files = files
        self.facts: ServerFacts | None = ServerFacts("Fake", 1, 640, 480, 24, 0)
        self.output_tail = ""
        self.output_reason = ""
        self.exit_status: int | None = None
        self.status = -15  # how it ends: SIGTERM unless killed first

    def __repr__(self) -> str:
        return f"<PipeServer :{self.number} pid {self.pid}>"

    @property
    def display(self) -> str | None:
        return f":{self.number}"

    @property
    def auth_path(self) -> str:
        return str(self.files.auth_path)

    @property
    def env(self) -> dict[str, str]:
        return {"DISPLAY": f":{self.number}", "XAUTHORITY": self.auth_path}

    @property
    def alive(self) -> bool:
        return self.exit_status is None and self.child._write_end >= 0

    def die(self) -> None:
        """What a SIGKILL of the server does: its pidfd becomes readable."""
        self.status = -9
        self.child.end()

    def stop_steps(self) -> Generator[Wait, Any, int]:
        if self.exit_status is None:
            self.child.end()  # SIGTERM: obeyed at once
            yield Wait((self.child.pidfd,), time.monotonic() + 1.0)
            self.exit_status = self.status
            self.child.close()
            self.output_tail = f"fake server pid {self.pid} output"
        return self.exit_status

    def kill_now(self) -> None:
        if self.exit_status is None:
            self.status = -9
            self.exit_status = -9
            self.child.close()


class PipeLauncher:
    """A launcher whose servers are pipes. ``fails(i)``: the i-th start (from 0) exits 1
    before it is ready, a start that failed."""

    def __init__(
        self, starts_in: float = 0.002, fails: Callable[[int], bool] = lambda _index: False
    ) -> None:
        self.starts_in = starts_in
        self.fails = fails
        self.spawned: list[PipeServer] = []
        self._next_number = 500

    def __call__(
        self,
        settings: Any,
        runtime: Any,
        number: int | None,
        *,
        files: Any = None,
        kind: str = "api",
        reclaim: bool = True,
    ) -> Generator[Wait, Any, PipeServer]:
        assert files is not None, "sessions always pass their files"
        files.create()  # as the real launcher does, just before the spawn
        index = len(self.spawned)
        if number is None:
            number, self._next_number = self._next_number, self._next_number + 1
        server = PipeServer(FAKE_PIDS + index, number, files)
        self.spawned.append(server)
        files.save(server_pid=server.pid, server_ticks=None, display=None)
        try:
            yield Wait((), time.monotonic() + self.starts_in)
        except BaseException:
            yield from server.stop_steps()
            raise
        if self.fails(index):
            server.status = 1
            yield from server.stop_steps()
            raise errors.ServerExited(
                "exited with status 1 before it wrote a display number",
                server="Xfake",
                pid=server.pid,
                elapsed=self.starts_in,
                stderr_tail="fake: no",
            )
        files.save(display=server.display)
        return server

    def alive(self) -> list[PipeServer]:
        return [server for server in self.spawned if server.alive]

    def close(self) -> None:
        for server in self.spawned:
            server.child.close()
