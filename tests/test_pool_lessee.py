"""Pools that survive their users (issue 20), end to end: a real daemon, real Xvfb. A leased
display's death is its lessee's (the pool stays ready, with no backoff), the lessee is told
(`lease` exits 1 with one line, `run --pool` says one line and keeps COMMAND's status,
``Display.alive``), and a SIGKILLed daemon, started again, clears what it left and serves."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from test_pool import PoolDaemon, ready
from test_pool_cli import FULL

from conftest import XSUPERVISE, fake_server, read_line, requires_xvfb, start_cli, wait_gone
from xsupervise import Display
from xsupervise.session.session import holds_nothing, read_history


@pytest.fixture
def pools(tmp_path: Path):
    """As test_pool's: start(**pools) -> a daemon with those pools, stopped cleanly after."""
    started: list[PoolDaemon] = []

    def start(**tables: dict[str, object]) -> PoolDaemon:
        started.append(PoolDaemon(tmp_path, tables))
        return started[-1]

    yield start
    for daemon in started:
        assert daemon.stop() in (0, -signal.SIGKILL), daemon.log.read_text()


def ledger(tmp_path: Path, name: str = "pool.default"):
    return read_history(str(tmp_path / "run" / "xsupervise" / "ledger" / f"{name}.json"))


def ended(lease, timeout: float = 10.0) -> dict:
    """The lease's end, as its connection tells it (waiting on that socket, not sleeping)."""
    deadline = time.monotonic() + timeout
    while (event := lease.ended) is None:
        assert time.monotonic() < deadline, "the lessee was never told"
        select.select([lease.client._connected()], [], [], deadline - time.monotonic())
    return event


@requires_xvfb
def test_fifty_leased_server_deaths_leave_the_pool_ready_with_no_backoff(pools, tmp_path):
    daemon = pools(default={"size": 2})
    daemon.until(ready(2))
    started = time.monotonic()
    for _ in range(50):
        with daemon.client() as client:
            lease = client.lease("default", wait=30)
            os.kill(lease["server_pid"], signal.SIGKILL)  # a GUI test crashes its X server
            event = ended(lease)
            assert event["reason"] == "died", event
            assert event["message"].startswith(
                f"display {lease['display']} (lease {lease['lease']} of pool default) died: "
                f"X server {lease['display']} (pid {lease['server_pid']}) was killed by SIGKILL"
            ), event
    assert time.monotonic() - started < 60  # the scenario: 50 deaths within a minute
    pool = daemon.until(ready(2))
    assert (pool["state"], pool["last_failure"]) == ("ready", None)
    assert holds_nothing(ledger(tmp_path)), ledger(tmp_path).as_dict()  # no failure, no backoff
    with daemon.client() as client:
        states = {entry["state"] for entry in client.status("pool.default")}
    assert states == {"ready"}


@requires_xvfb
def test_the_lease_command_says_in_one_line_that_its_display_died(pools):
    daemon = pools(default={"size": 1})
    daemon.until(ready(1))
    lessee = start_cli("lease", "--json", "--socket", daemon.socket, stdin=subprocess.PIPE)
    try:
        lease = json.loads(read_line(lessee.stdout))
        os.kill(lease["server_pid"], signal.SIGKILL)
        assert lessee.wait(timeout=10) == 1
        lines = lessee.stderr.read().decode().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(
            f"xsupervise: display {lease['display']} (lease {lease['lease']} of pool default) "
            f"died: X server {lease['display']} (pid {lease['server_pid']}) was killed by SIGKILL"
        ), lines
    finally:
        lessee.kill()
        lessee.wait()
        for stream in (lessee.stdin, lessee.stdout, lessee.stderr):
            stream.close()
    daemon.until(lambda pool: ready(1)(pool) and pool["leased"] == 0)


@requires_xvfb
def test_run_pool_says_at_once_that_the_display_died_and_keeps_commands_status(pools):
    daemon = pools(default={"size": 1})
    daemon.until(ready(1))
    python = [sys.executable, "-c"]
    command = "import os, sys; print(os.environ['DISPLAY'], flush=True); sys.stdin.read(); exit(3)"
    for cli in (XSUPERVISE, FULL):
        process = subprocess.Popen(
            [*cli, "run", "--pool", "default", "--socket", daemon.socket, "--", *python, command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        try:
            display = read_line(process.stdout).strip()
            with daemon.client() as client:
                (server,) = [s["server_pid"] for s in client.list() if s["display"] == display]
            os.kill(server, signal.SIGKILL)
            line = read_line(process.stderr)  # said while COMMAND still runs
            assert line.startswith(f"xsupervise: display {display} (lease "), line
            assert "died: X server" in line and line.endswith("(under COMMAND, which runs on)\n")
            assert process.poll() is None
            process.stdin.close()
            assert process.wait(timeout=10) == 3  # COMMAND's status stands
            assert process.stderr.read() == b""  # one line, no more
        finally:
            process.kill()
            process.wait()
            process.stdout.close()
            process.stderr.close()
        daemon.until(lambda pool: ready(1)(pool) and pool["leased"] == 0)


@requires_xvfb
def test_a_pool_display_knows_whether_it_is_alive(pools):
    daemon = pools(default={"size": 1})
    daemon.until(ready(1))
    with Display(pool="default", socket=daemon.socket) as display:
        assert display.alive
        os.kill(display.server_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while display.alive:
            assert time.monotonic() < deadline, "the display never learnt of its death"
            select.select([display._server.client._connected()], [], [], 1)
    assert not display.alive
    with Display(pool="default", socket=daemon.socket) as display:
        assert display.alive  # a new one, from the refilled pool
    assert not display.alive


@requires_xvfb
def test_a_sigkilled_daemon_started_again_clears_what_it_left_and_serves(pools, tmp_path):
    # Spares that take 0.3 s to start: when the daemon is killed, starts are in flight (the
    # holder's lease began one a few milliseconds before the ledger is read). Each pool waits
    # for such starts three times, so their length is the test's.
    tables = {"default": {"size": 2, "server": fake_server("slow=0.3")}}
    old = pools(**tables)
    old.until(ready(2), timeout=20)
    with old.client() as client:
        lease = client.lease("default")
        os.kill(lease["server_pid"], signal.SIGKILL)  # a leased death: counts nowhere
        assert ended(lease)["reason"] == "died"
    holder = start_cli("lease", "--socket", old.socket, stdin=subprocess.PIPE)
    try:
        read_line(holder.stdout)
        in_flight = ledger(tmp_path).in_flight
        assert in_flight and all(start.get("daemon") for start in in_flight.values())
        servers = psutil.Process(old.process.pid).children(recursive=True)
        old.process.kill()  # as the OOM killer would; systemd's Restart= starts it again
        old.process.wait()
        for server in servers:  # its X servers (and starting ones) die with it
            assert wait_gone(server.pid, 1.0), f"{server} outlived the daemon by 1 s"
        assert holder.wait(timeout=10) == 1  # its lessee is told the daemon is gone
        assert "closed the connection" in holder.stderr.read().decode()
    finally:
        holder.kill()
        holder.wait()
        for stream in (holder.stdin, holder.stdout, holder.stderr):
            stream.close()
    new = pools(**tables)
    with new.client() as client, client.lease("default", wait=10) as fresh:
        assert fresh["display"].startswith(":")
    history = ledger(tmp_path)
    assert history.failures == [] and history.in_a_row == 0, history.as_dict()
    new.until(ready(2), timeout=20)
    assert "abandoned by dead supervisor" in new.log.read_text()  # it cleared the old files
