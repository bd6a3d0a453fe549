"""Stops that race a start (issue 19): the socket file that outlived its server.

The race: a stop asked for while a server is still starting (the daemon stopping with a spare
half-started, a pool refilling) sent its SIGTERM before the PID namespace's init had its
trap, or before the init had started the server. An init ignores every signal it has no
handler for, so the SIGTERM was lost; the server came up, the grace ran out, and SIGKILL left
/tmp/.X11-unix/X<n> behind, the number never reported to us. Now the stop sends SIGTERM once
more when the server writes its number, and a server SIGKILLed before it told its number has
the socket files it listened on removed all the same.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_pool import PoolDaemon, ready

from conftest import X11_UNIX, XSUPERVISE, fake_server, read_report, requires_xvfb
from xsupervise import _containment


@pytest.fixture(params=["auto", "group"])
def containment(request, monkeypatch) -> str:
    if request.param == "auto" and _containment._namespace_prefix() is None:
        pytest.skip("no PID namespace can be made here")
    monkeypatch.setenv("XSUPERVISE_CONTAINMENT", request.param)
    return request.param


@requires_xvfb
@pytest.mark.parametrize("round_", range(5))
def test_a_daemon_stopped_while_a_spare_starts_stops_it_with_sigterm(tmp_path, round_, containment):
    # Lease and release the pool's only spare: the daemon starts its replacement at once,
    # and is told to stop while that one starts. Before the fix 5 runs in 6 took the whole
    # grace here, then SIGKILLed the server and left its socket file.
    daemon = PoolDaemon(tmp_path, {"default": {"size": 1, "kill_grace": 20}})
    try:
        daemon.until(ready(1))
        with daemon.client() as client, client.lease("default"):
            pass
    finally:
        started = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=60) == 0, daemon.log.read_text()
    assert "did not exit within" not in daemon.log.read_text()
    assert time.monotonic() - started < 10, "the stop waited out the grace"
    assert not [name for name in os.listdir(X11_UNIX) if name.startswith("X")]


def test_a_server_killed_before_it_told_its_number_leaves_no_socket_file(tmp_path, containment):
    # A server stuck after making its sockets (Xvfb makes them well before it writes its
    # number) and deaf to SIGTERM: the deadline passes, SIGKILL follows, and the files it
    # listened on go with it. (The leak check would find one left, too.)
    report = tmp_path / "report"
    result = subprocess.run(
        [
            *XSUPERVISE,
            "run",
            "--server",
            fake_server("listen-stuck"),
            "--timeout",
            "1",
            "--kill-grace",
            "0.2",
            "--",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "FAKE_X_REPORT": str(report)},
    )
    assert result.returncode == 4, result.stderr
    made = read_report(report)["socket"]
    assert made.startswith(f"{X11_UNIX}/X")
    assert not Path(made).exists(), f"{made} outlived its server"


class _SignalsItself:
    """A boundary whose enter() (run in the child between fork and exec) sends the child a
    SIGTERM: the moment a stop reaches a server that has not exec'd yet."""

    kind, cgroup, namespace, init_pidfd = "group", None, None, -1

    def argv(self, argv):
        return list(argv)

    def enter(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    def spawned(self, popen) -> None:
        pass

    def remove(self) -> None:
        pass


def test_a_stop_signal_before_exec_stops_the_child_not_its_parent():
    # Our handler in a child that has not exec'd yet would write to our wakeup fd: a daemon
    # then saw a second stop signal it was never sent (and cut every grace short).
    from xsupervise._process import spawn

    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    previous_fd = signal.set_wakeup_fd(write_end)
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        child = spawn(["sleep", "30"], boundary=_SignalsItself())
        status = child.reap_within(10)
        assert status == -signal.SIGTERM  # it stopped, as a stop should
        with pytest.raises(BlockingIOError):
            os.read(read_end, 16)  # and nothing reached us
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.set_wakeup_fd(previous_fd)
        os.close(read_end)
        os.close(write_end)
