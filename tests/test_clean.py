"""`xsupervise clean`: stale X sockets and locks, judged from the kernel, removed safely."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import xsupervise
from conftest import XSUPERVISE, free_display_number, requires_xvfb
from xsupervise.host.paths import lock_path, socket_path
from xsupervise.host.sockets import check_shared_dir, unlink_if_same

NOBODY = 65534
AN_HOUR_AGO = time.time() - 3600


def stale_socket(number: int, owner: int = 0) -> str:
    """A socket file with nothing behind it, as a SIGKILLed server leaves it."""
    path = socket_path(number)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.close()
    os.chown(path, owner, owner)
    os.utime(path, (AN_HOUR_AGO, AN_HOUR_AGO))  # not a server that is still starting
    return path


def stale_lock(number: int, pid: int, owner: int = 0) -> str:
    path = lock_path(number)
    Path(path).write_text(f"{pid:10d}\n")
    os.chown(path, owner, owner)
    return path


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def clean(*args: str, as_user: tuple[list[str], dict[str, str]] | None = None):
    """`xsupervise clean --json ARGS`, as root or (as_user: the as_other_user fixture) uid 65534."""
    argv = [*XSUPERVISE, "clean", "--json", *args]
    env = dict(os.environ)
    runtime = None
    if as_user is not None:
        # Outside pytest's 0700 tree, which the other user could not traverse.
        runtime = tempfile.mkdtemp(prefix="xsupervise-other-")
        os.chown(runtime, NOBODY, NOBODY)
        prefix, staged = as_user
        env = {**staged, "XDG_RUNTIME_DIR": runtime, "HOME": runtime}
        argv = [*prefix, "-m", "xsupervise", "clean", "--json", *args]
    try:
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    finally:
        if runtime:
            shutil.rmtree(runtime)


def entries_by_path(result: subprocess.CompletedProcess) -> dict[str, dict]:
    return {entry["path"]: entry for entry in json.loads(result.stdout)}


@pytest.fixture
def numbers():
    """Two display numbers nobody uses; whatever a test leaves there is removed."""
    first = free_display_number(start=700)
    chosen = [first, free_display_number(start=first + 1)]
    yield chosen
    for number in chosen:
        for path in (socket_path(number), lock_path(number)):
            if os.path.lexists(path):
                os.unlink(path)


@pytest.mark.root("it chowns its stale files to root")
def test_own_stale_socket_and_lock_are_removed_and_dry_run_changes_nothing(numbers):
    sock, lock = stale_socket(numbers[0]), stale_lock(numbers[1], dead_pid())
    dry = clean("--dry-run")
    assert dry.returncode == 0
    found = entries_by_path(dry)
    assert found[sock]["verdict"] == "stale" and found[sock]["action"] == "would-remove"
    assert found[lock]["verdict"] == "stale" and "gone or not an X server" in found[lock]["reason"]
    assert os.path.lexists(sock) and os.path.exists(lock)
    done = clean()
    assert done.returncode == 0
    assert entries_by_path(done)[sock]["action"] == "removed"
    assert not os.path.lexists(sock) and not os.path.exists(lock)


@pytest.mark.root("it runs clean as uid 65534 and as root")
@pytest.mark.skipif(os.getuid() != 0 or not shutil.which("setpriv"), reason="needs root, setpriv")
def test_another_users_stale_files_are_reported_by_them_and_removed_by_root(numbers, as_other_user):
    sock = stale_socket(numbers[0], owner=0)
    lock = stale_lock(numbers[1], dead_pid(), owner=0)
    as_nobody = clean(as_user=as_other_user)
    assert as_nobody.returncode == 1, as_nobody.stderr
    found = entries_by_path(as_nobody)
    for path in (sock, lock):
        assert found[path]["verdict"] == "inaccessible"
        assert found[path]["owner"] == "root"
        assert f"'sudo rm {path}'" in found[path]["reason"]
    assert os.path.lexists(sock) and os.path.exists(lock)
    os.chown(sock, NOBODY, NOBODY, follow_symlinks=False)
    os.chown(lock, NOBODY, NOBODY)
    as_root = clean()
    assert as_root.returncode == 0
    assert {entries_by_path(as_root)[p]["action"] for p in (sock, lock)} == {"removed"}


@pytest.mark.root("it chowns a lock file to root")
@requires_xvfb
def test_live_server_whose_socket_file_was_deleted_is_left_alone(numbers):
    with xsupervise.Display() as display:
        os.unlink(socket_path(display.number))  # a /tmp cleaner went by
        lock = stale_lock(display.number, display.server_pid)
        result = clean()
        assert result.returncode == 0
        assert entries_by_path(result)[lock]["verdict"] == "live"
        assert os.path.exists(lock)
        os.unlink(lock)
        # Still served through its abstract socket, and never killed.
        assert (
            subprocess.run(
                ["xdpyinfo"], env={**os.environ, **display.env}, capture_output=True
            ).returncode
            == 0
        )


def test_planted_symlink_is_never_followed(numbers, tmp_path: Path):
    target = tmp_path / "precious"
    target.write_text("keep me")
    link = socket_path(numbers[0])
    os.symlink(target, link)
    lock_link = lock_path(numbers[1])
    os.symlink(target, lock_link)
    result = clean()
    found = entries_by_path(result)
    for path in (link, lock_link):
        assert found[path]["verdict"] == "suspicious" and found[path]["action"] == "none"
        assert os.path.islink(path)
    assert target.read_text() == "keep me"


@pytest.mark.root("it chowns a lock file to root")
def test_lock_held_by_a_process_that_is_not_an_x_server_is_stale(numbers):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = stale_lock(numbers[0], other.pid)
        result = clean("--dry-run")
        assert entries_by_path(result)[lock]["verdict"] == "stale"
    finally:
        other.kill()
        other.wait()


@pytest.mark.root("it chowns to uid 65534 and expects root-owned directories")
def test_unsafe_shared_directories_are_refused(tmp_path: Path):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    assert "writable by others but not sticky" in check_shared_dir(str(open_dir))
    owned = tmp_path / "owned"
    owned.mkdir(mode=0o1777)
    os.chown(owned, NOBODY, NOBODY)
    assert "not root" in check_shared_dir(str(owned))
    link = tmp_path / "link"
    link.symlink_to(open_dir)
    assert "not a directory" in check_shared_dir(str(link))
    assert check_shared_dir("/tmp") is None


def test_a_file_replaced_after_it_was_judged_is_not_removed(tmp_path: Path):
    """The race a pool met: a dead server's socket file judged stale, then replaced by the
    next server's (same number) before the unlink. Only the judged inode may go; the new
    file stays, listening, and nothing is left aside."""
    shared = tmp_path / "x11-unix"
    shared.mkdir()
    dead = shared / "X7"
    dead.write_bytes(b"")
    judged = dead.stat().st_ino
    dead.rename(tmp_path / "kept")  # kept alive, so that tmpfs cannot give its inode away
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(shared / "X7"))  # the next server's file, same name
    live.listen()
    tmp_path = shared
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert unlink_if_same(dir_fd, "X7", judged) is False
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(str(tmp_path / "X7"))  # still served under its name
        probe.close()
        assert unlink_if_same(dir_fd, "X7", os.stat(tmp_path / "X7").st_ino) is True
        with pytest.raises(FileNotFoundError):
            unlink_if_same(dir_fd, "X7", judged)
    finally:
        os.close(dir_fd)
        live.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_reused_inode_number_on_a_served_display_is_not_taken_for_the_dead_file(tmp_path):
    """On ext4 a new server's socket file may get the inode number of the dead one's file it
    replaced: the number alone then says "same". On a display that something serves, the file
    aside goes back if it is listening (a new server's), and goes if it is not (the dead
    one's, while a new server on that number binds its own): nothing is left aside."""
    number = free_display_number(start=700)
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(f"\0/tmp/.X11-unix/X{number}")  # the new server serves the display
    abstract.listen()
    shared = tmp_path / "x11-unix"
    shared.mkdir()
    name = shared / f"X{number}"
    new_file = socket.socket(socket.AF_UNIX)
    new_file.bind(str(name))  # its file, with the number the dead one's had
    new_file.listen()
    reused = name.stat().st_ino
    dir_fd = os.open(shared, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert unlink_if_same(dir_fd, name.name, reused, number) is False
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(str(name))  # put back, and still served under its name
        probe.close()
        new_file.close()  # now a dead server's file, on a display still served
        assert unlink_if_same(dir_fd, name.name, reused, number) is True
    finally:
        os.close(dir_fd)
        new_file.close()
        abstract.close()
    assert list(shared.iterdir()) == []
