"""Restarts, the restart budget across processes, and crash recovery, with real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import XSUPERVISE, fake_server, read_line, requires_xvfb, start_cli, wait_gone

FAST_POLICY = [
    "--backoff-initial",
    "0.2",
    "--reset-after",
    "30",
    "--start-limit-burst",
    "3",
    "--start-limit-interval",
    "60",
    "--failed-cooldown",
    "300",
]

# The second of two failed starts first backs off (the default 1 s, times a jitter in
# [0.5, 1]); the tests that only need two failures to reach FAILED do not test that wait.
QUICK_RETRY = ["--backoff-initial", "0.1"]


def read_until(stream, pattern: str, seen: list[str], timeout: float = 30) -> re.Match:
    """Read stderr lines (kept in ``seen``) until one matches ``pattern``."""
    deadline = time.monotonic() + timeout
    while True:
        line = read_line(stream, timeout=max(0.1, deadline - time.monotonic()))
        assert line, f"EOF before {pattern!r}; saw: {seen}"
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match


def xdpyinfo_ok(env: dict[str, str]) -> bool:
    return (
        subprocess.run(
            ["xdpyinfo"], env={**os.environ, **env}, capture_output=True, timeout=30
        ).returncode
        == 0
    )


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*XSUPERVISE, *args], capture_output=True, text=True, timeout=60)


@requires_xvfb
def test_killed_server_restarts_on_its_number_then_fails_and_reset_revives_it():
    with start_cli("start", "--json", "--name", "killme", *FAST_POLICY) as process:
        facts = json.loads(read_line(process.stdout))
        env = {"DISPLAY": facts["display"], "XAUTHORITY": facts["xauthority"]}
        pid, seen, delays = facts["server_pid"], [], []
        for restart in (1, 2, 3):
            os.kill(pid, signal.SIGKILL)
            delay = read_until(
                process.stderr, r"backing off: next start at .* \(in ([\d.]+) s\)", seen
            )
            delays.append(float(delay.group(1)))
            match = read_until(
                process.stderr, r"X server restarted on (:\d+) \(pid (\d+), restart (\d+)\)", seen
            )
            assert match.group(1) == facts["display"]  # the same number: clients reconnect
            assert int(match.group(3)) == restart
            pid = int(match.group(2))
            assert xdpyinfo_ok(env)  # ...and the same cookie
        assert delays == sorted(delays) and delays[-1] > delays[0], delays
        status = json.loads(cli("status", "killme", "--json").stdout)
        assert [(entry["state"], entry["restarts"]) for entry in status] == [("ready", 3)]
        os.kill(pid, signal.SIGKILL)  # the 4th failure within the window: more than the burst
        assert process.wait(timeout=30) == 7
        last = process.stderr.read().decode()
        assert "session killme is FAILED: 4 failed starts in 60 s (limit 3)" in last
        assert "xsupervise reset killme" in last
    held = json.loads(cli("status", "killme", "--json").stdout)
    assert [(entry["state"], entry["supervisor_pid"]) for entry in held] == [("failed", None)]
    refused = cli("start", "--name", "killme", "--no-wait", *FAST_POLICY)
    assert refused.returncode == 7 and "is FAILED" in refused.stderr
    assert "killme: restart history cleared" in cli("reset", "killme").stdout
    with start_cli("start", "--name", "killme", *FAST_POLICY) as revived:
        assert read_line(revived.stdout).startswith("DISPLAY=")
        revived.send_signal(signal.SIGTERM)
        assert revived.wait(timeout=30) == 0


@pytest.mark.realtime
def test_a_relauncher_cannot_make_a_storm(tmp_path: Path, monkeypatch):
    """jupyter-server-proxy style: relaunch at once on exit, SIGKILL after a timeout; with real
    supervisors and a never-ready server. The policy's arithmetic over a minute with the
    default policy is test_session_machine.py's; this one keeps it end to end, so with a small
    budget: 2 failed starts allowed, the 3rd makes the name FAILED.

    The times are half what they were (a 0.25 s X deadline, a 0.1 s backoff), so that a
    storm's pace doubles as the window shrinks: without the budget a server would be spawned
    every ~0.3 s, 7 or more in the 2.5 s, well above the bound of 3. The deadline need not be
    generous (the server never answers: only its expiry is waited for); the relauncher's
    1 s must be, as a supervisor has to start and spawn its server within it (~0.15 s)."""
    report = tmp_path / "spawns"
    monkeypatch.setenv("FAKE_X_REPORT", str(report))
    argv = [
        *XSUPERVISE,
        "start",
        "--server",
        fake_server("never"),
        "--timeout",
        "0.25",
        "--backoff-initial",
        "0.1",
        "--start-limit-burst",
        "2",
    ]
    end = time.monotonic() + 2.5  # the 3rd failure (FAILED) comes within ~1.5 s; then only waits
    launches = 0
    while time.monotonic() < end:
        launches += 1
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process.wait(timeout=min(1.0, max(0.1, end - time.monotonic())))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    spawned = [
        int(line.split("=")[1])
        for line in report.read_text().splitlines()
        if line.startswith("pid=")
    ]
    assert 2 <= len(spawned) <= 3, spawned
    assert launches < 25, launches
    for pid in spawned:  # servers of SIGKILLed supervisors died with them (orphaned to us)
        assert wait_gone(pid, timeout=5)
    assert cli("clean").returncode == 0  # reclaims what the SIGKILLed supervisors left


@requires_xvfb
def test_waiting_supervisor_is_released_by_reset():
    failed = cli(
        "start",
        "--name",
        "flaky",
        "--server",
        fake_server("exit"),
        "--start-limit-burst",
        "1",
        *QUICK_RETRY,
        "--no-wait",
    )
    assert failed.returncode == 3
    assert (
        cli(
            "start",
            "--name",
            "flaky",
            "--server",
            fake_server("exit"),
            "--start-limit-burst",
            "1",
            *QUICK_RETRY,
            "--no-wait",
        ).returncode
        == 3
    )
    # Two failures, limit 1: FAILED for the default 300 s cool-down. A start that waits...
    with start_cli("start", "--name", "flaky", "--start-limit-burst", "1") as waiting:
        seen: list[str] = []
        read_until(waiting.stderr, r"session flaky is FAILED, cooling down", seen)
        assert cli("reset", "flaky").returncode == 0
        # ...notices the reset within a second and starts.
        assert read_line(waiting.stdout, timeout=10).startswith("DISPLAY=")
        waiting.send_signal(signal.SIGTERM)
        assert waiting.wait(timeout=30) == 0


@requires_xvfb
def test_sigterm_while_backing_off_exits_cleanly():
    with start_cli("start", "--json", "--name", "patient", "--backoff-initial", "30") as process:
        facts = json.loads(read_line(process.stdout))
        os.kill(facts["server_pid"], signal.SIGKILL)
        read_until(process.stderr, r"session patient is backing off", [])
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_supervisors_killed_while_waiting_leave_no_files(runtime_dir: Path):
    for _ in range(2):  # two failures with a limit of 1: FAILED for 300 s
        cli(
            "start",
            "--name",
            "held",
            "--server",
            fake_server("exit"),
            "--start-limit-burst",
            "1",
            *QUICK_RETRY,
            "--no-wait",
        )
    # A supervisor only waiting for the budget has created nothing: killing it leaves nothing.
    for _ in range(3):
        with start_cli("start", "--name", "held", "--start-limit-burst", "1") as waiting:
            read_until(waiting.stderr, r"session held is FAILED, cooling down", [])
            assert list((runtime_dir / "sessions").iterdir()) == []
            waiting.kill()
        assert list((runtime_dir / "sessions").iterdir()) == []
    status = cli("status", "held")
    assert "held" in status.stdout and "failed until" in status.stdout, status.stdout


@requires_xvfb
def test_whatever_a_dead_server_left_in_its_group_is_killed(tmp_path: Path):
    """Regression (review): the group was only SIGKILLed if the server was not reaped yet."""
    wrapper = tmp_path / "Xwrapped"
    wrapper.write_text('#!/bin/sh\nsleep 300 &\nexec Xvfb "$@"\n')
    wrapper.chmod(0o755)
    with start_cli(
        "start", "--json", "--server", str(wrapper), "--backoff-initial", "0.1"
    ) as process:
        first = json.loads(read_line(process.stdout))["server_pid"]
        first_sleeper = _children(first)[0]
        os.kill(first, signal.SIGTERM)
        second = int(read_until(process.stderr, r"X server restarted on .* \(pid (\d+)", [])[1])
        assert wait_gone(first_sleeper, timeout=5)
        second_sleeper = _children(second)[0]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    assert wait_gone(second_sleeper, timeout=5)


def _children(pid: int) -> list[int]:
    """The children of ``pid`` as we see them (inside a PID namespace `$!` differs)."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_a_missing_server_binary_does_not_spend_the_budget():
    """Regression (review): the start stayed 'in flight' and was later counted as a crash."""
    for _ in range(2):
        result = cli("run", "--server", "/nonexistent/Xfoo", "--", "true")
        assert result.returncode == 5
        assert "'/nonexistent/Xfoo' does not exist" in result.stderr
        assert "killed while starting" not in result.stderr and "backing off" not in result.stderr
