"""`serve`'s refusal names who holds the control socket now, from the kernel's tables: never
the dead process that called listen(), never by connecting (which would socket-activate)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import wait_gone
from xsupervise.host.listener import SocketInUse, bind
from xsupervise.host.sockets import describe, holders, listening_inodes

# A process that binds and listens, hands the socket to a `sleep` and exits: SO_PEERCRED would
# still name it (it called listen()), long after it is gone.
HAND_OVER = """
import socket, subprocess, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.bind(sys.argv[1]); sock.listen(8)
keeper = subprocess.Popen(
    ["sleep", "60"], pass_fds=[sock.fileno()], start_new_session=True,
    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
print(keeper.pid, flush=True)
"""


def test_the_listener_that_handed_its_socket_on_is_not_named(tmp_path: Path):
    path = str(tmp_path / "control.sock")
    handed = subprocess.run(
        [sys.executable, "-c", HAND_OVER, path], capture_output=True, text=True, timeout=10
    )
    keeper = int(handed.stdout)
    try:
        with pytest.raises(SocketInUse) as refused:
            bind(path)
        line = str(refused.value)
        assert f"already served by pid {keeper} (sleep 60)" in line, line
        assert "only one may listen on it" in line and os.path.exists(path)
        assert not os.path.exists(path + ".lock")  # our lock went with the refusal
    finally:
        os.kill(keeper, signal.SIGKILL)
        assert wait_gone(keeper, 10)  # kill() returns before its fds are closed
    assert holders(listening_inodes(path)) == []


def test_probing_does_not_connect(tmp_path: Path):
    path = str(tmp_path / "control.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listening:
        listening.bind(path)
        listening.listen(8)
        listening.setblocking(False)
        with pytest.raises(SocketInUse):
            bind(path)
        with pytest.raises(BlockingIOError):
            listening.accept()  # nobody connected: a socket unit would not have been activated


def test_a_listener_reached_through_a_symlinked_directory_is_found(tmp_path: Path):
    # /var/run -> /run: the kernel's table holds the path as it was bound, not as we name it.
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listening:
        listening.bind(str(tmp_path / "real" / "control.sock"))
        listening.listen(8)
        with pytest.raises(SocketInUse) as refused:
            bind(str(tmp_path / "link" / "control.sock"))
        assert f"pid {os.getpid()}" in str(refused.value)
        assert (tmp_path / "real" / "control.sock").exists()  # never unlinked from under it


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate missing"
)
def test_a_socket_activator_is_named_and_not_activated(tmp_path: Path):
    path = str(tmp_path / "control.sock")
    marker = tmp_path / "activated"
    activator = subprocess.Popen(
        ["systemd-socket-activate", "-l", path, "touch", str(marker)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "Listening on" in activator.stderr.readline()  # it listens: probe now
        with pytest.raises(SocketInUse) as refused:
            bind(path)
        assert f"pid {activator.pid} (systemd-socket-activate" in str(refused.value)
        assert not marker.exists()  # a connect() would have run `touch`
    finally:
        activator.terminate()
        activator.wait(timeout=10)
        activator.stderr.close()


def test_systemd_is_named_as_a_socket_unit():
    line = describe([1])
    assert "systemd (PID 1) for a socket unit" in line
    assert "`systemctl status xsupervise.socket`" in line
    assert "another user's" in describe([])


def test_nothing_listening_is_stale(tmp_path: Path):
    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    assert listening_inodes(str(path)) == set()
    listener = bind(str(path))  # the stale file is replaced
    try:
        assert listening_inodes(str(path)) and holders(listening_inodes(str(path))) == [os.getpid()]
    finally:
        listener.close()
    assert os.listdir(tmp_path) == [] or os.listdir(tmp_path) == ["run"]
