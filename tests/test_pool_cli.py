"""Pools from the command line (issue 12, second part): `run --pool`'s fast path behaves as the
full CLI does, pools in `list --json`/`status --json`, `stop :N` of a leased display, and a
lease refused to another uid. A real daemon and real Xvfb, as in test_pool.py."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_pool import PoolDaemon, gone_within, ready

from conftest import XSUPERVISE, ask_as, read_line, requires_xvfb
from xsupervise.cli.pool_run import run_pool_fast
from xsupervise.client import ControlError

# The full CLI without the fast path (what `run --pool` did before it, and still does for
# any other form of the command).
FULL = [sys.executable, "-c", "import sys; from xsupervise.cli.main import main; sys.exit(main())"]

CATCHER = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(9))\n"
    "print('ready', flush=True)\n"
    "time.sleep(30)\n"
)


@pytest.fixture
def pools(tmp_path: Path):
    """As test_pool's: start(**pools) -> a daemon with those pools, stopped cleanly after."""
    started: list[PoolDaemon] = []

    def start(**tables: dict[str, object]) -> PoolDaemon:
        started.append(PoolDaemon(tmp_path, tables))
        return started[-1]

    yield start
    for daemon in started:
        assert daemon.stop() == 0, daemon.log.read_text()


def both(*args: str, **popen) -> list[subprocess.CompletedProcess]:
    """The same command through the fast path and through the full CLI."""
    return [
        subprocess.run([*cli, *args], capture_output=True, text=True, timeout=60, **popen)
        for cli in (XSUPERVISE, FULL)
    ]


@requires_xvfb
def test_the_fast_path_and_the_full_cli_agree(pools, tmp_path):
    daemon = pools(default={"size": 2})
    daemon.until(ready(2))
    run = ["run", "--pool", "default", "--socket", daemon.socket, "--"]
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\nexit 0\n")  # not executable
    held = "import os; print(os.environ['DISPLAY']); os.kill(os.getpid(), 15)"
    cases = [
        ([*run, "sh", "-c", 'xdpyinfo >/dev/null && [ "$XAUTHORITY" ] && exit 3'], 3, ""),
        ([*run, sys.executable, "-c", held], 128 + 15, ""),
        ([*run, "no-such-command-xsupervise"], 127, "was not found"),
        ([*run, str(script)], 126, "is not executable"),
        (["run", "--pool", "nope", "--socket", daemon.socket, "--", "true"], 6, "no pool named"),
        (["run", "--pool", "default", "--socket", str(tmp_path / "no"), "--", "true"], 5, "no "),
    ]
    for argv, code, says in cases:
        fast, full = both(*argv)
        assert fast.returncode == full.returncode == code, (argv, fast, full)
        assert fast.stderr == full.stderr and says in fast.stderr, (argv, fast, full)
        assert fast.stdout.startswith(":") == full.stdout.startswith(":")
    daemon.until(lambda pool: ready(2)(pool) and pool["leased"] == 0)


@requires_xvfb
def test_the_fast_path_forwards_signals_holds_the_lease_and_closes_fds(pools):
    daemon = pools(default={"size": 1})
    daemon.until(ready(1))
    for cli in (XSUPERVISE, FULL):
        argv = [*cli, "run", "--pool", "default", "--socket", daemon.socket, "--"]
        process = subprocess.Popen(
            [*argv, sys.executable, "-c", CATCHER], stdout=subprocess.PIPE, bufsize=0
        )
        try:
            assert read_line(process.stdout).strip() == "ready"
            assert daemon.pool()["leased"] == 1  # held while COMMAND runs
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 9
        finally:
            process.stdout.close()
        daemon.until(lambda pool: pool["leased"] == 0)
        # A descriptor we inherited is not COMMAND's (subprocess's close_fds=True).
        read_fd, write_fd = os.pipe()
        try:
            probe = f"import os; os.fstat({write_fd})"
            done = subprocess.run(
                [*argv, sys.executable, "-c", probe], pass_fds=(write_fd,), capture_output=True
            )
        finally:
            os.close(read_fd)
            os.close(write_fd)
        assert done.returncode == 1 and b"Bad file descriptor" in done.stderr, done


def test_the_fast_path_takes_only_the_plain_form(monkeypatch, tmp_path):
    monkeypatch.delenv("XSUPERVISE_POOL", raising=False)
    nowhere = str(tmp_path / "none.sock")
    for argv in (
        ["run", "--screen", "800x600x24", "--pool", "p", "--", "true"],
        ["run", "--pool", "", "--", "true"],  # argparse's: a private server
        ["run", "--pool", "p", "--"],  # a usage error, said by argparse
        ["run", "--poo", "p", "--", "true"],
        ["-v", "run", "--pool", "p", "--", "true"],
        ["run", "--", "true"],  # no pool
        ["run", "--pool", "p", "--socket", nowhere, "--", "true"],  # no daemon: full CLI says
    ):
        assert run_pool_fast(argv) is None, argv
    monkeypatch.setenv("NOTIFY_SOCKET", "/nowhere")  # systemd: the full CLI's checks
    assert run_pool_fast(["run", "--pool", "p", "--socket", nowhere, "--", "true"]) is None


@requires_xvfb
def test_list_and_status_json_show_pools_as_entries_of_their_own(pools):
    daemon = pools(default={"size": 1})
    daemon.until(ready(1))
    for command in ("list", "status"):
        done = subprocess.run(
            [*XSUPERVISE, command, "--json", "--socket", daemon.socket],
            capture_output=True,
            text=True,
            check=True,
        )
        entries = json.loads(done.stdout)
        (pool,) = [entry for entry in entries if entry.get("kind") == "pool"]
        assert pool["name"] == "default" and pool["display"] is None
        assert (pool["size"], pool["ready"], pool["leased"], pool["state"]) == (1, 1, 0, "ready")
        (spare,) = [entry for entry in entries if entry.get("kind") != "pool"]
        assert spare["name"] == "pool.default" and spare["display"].startswith(":")


@requires_xvfb
def test_stop_of_a_leased_display_revokes_its_lease(pools):
    daemon = pools(default={"size": 1})
    daemon.until(ready(1))
    with daemon.client() as client:
        (spare,) = client.list()
    refused = subprocess.run(
        [*XSUPERVISE, "stop", spare["display"], "--socket", daemon.socket],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "is a spare of pool default" in refused.stderr
    with daemon.client() as client, client.lease("default") as lease:
        done = subprocess.run(
            [*XSUPERVISE, "stop", lease["display"], "--socket", daemon.socket],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        assert f"lease {lease['lease']} of pool default, held by pid {os.getpid()}" in done.stdout
        assert gone_within(lease["server_pid"], 0.1)  # stop waited for it
        assert daemon.pool()["leased"] == 0
        # Its lessee is told (issue 20), then its connection closes.
        select.select([client._connected()], [], [], 10)
        ended = lease.ended
        assert ended is not None and ended["reason"] == "revoked", ended
        assert ended["message"] == (
            f"display {lease['display']} (lease {lease['lease']} of pool default) revoked by "
            "'xsupervise stop'."
        )
        with pytest.raises(ControlError, match="closed the connection"):
            client.ping()
    daemon.until(lambda pool: ready(1)(pool) and pool["leased"] == 0)


@pytest.mark.root("it acts as another uid")
@requires_xvfb
@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another uid")
def test_another_uid_gets_no_lease(pools):
    # Root's daemon serves root only (and a user's daemon, that user and root): the lessee of
    # a cookie is always the daemon's uid or root, so its 0600 file in the daemon's private
    # directory is readable by the lessee and by nobody else.
    shared = Path(tempfile.mkdtemp(prefix="xsupervise-test-"))
    try:
        shared.chmod(0o755)
        daemon = pools(default={"size": 1})
        daemon.until(ready(1))
        link = shared / "control.sock"
        os.link(daemon.socket, link)  # the same socket, where uid 65534 can reach it
        os.chmod(link, 0o666)
        refused = ask_as(65534, str(link), {"op": "lease", "pool": "default"})
        assert refused["ok"] is False and "uid 65534 may not use this daemon" in refused["error"]
        assert daemon.pool()["leased"] == 0
        with daemon.client() as client, client.lease("default") as lease:
            cookie = os.stat(lease["xauthority"])
            assert (cookie.st_uid, cookie.st_mode & 0o777) == (os.getuid(), 0o600)
    finally:
        shutil.rmtree(shared)


@pytest.mark.parametrize("cli", [XSUPERVISE, FULL], ids=["fast-path", "full-cli"])
def test_a_lease_that_ends_within_its_reply_is_told_and_command_runs_on(cli, tmp_path):
    """A display that dies as it is leased: the reply and the lease's end arrive in one read.
    Both paths say so at once, in one line, and COMMAND's status stands. (The fast path took
    the two lines for a reply it could not parse and went on to lease a second display.)"""
    import socket
    import threading

    path = str(tmp_path / "control")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    leases = []

    def serve() -> None:  # a daemon, as far as one lease goes (daemon.protocol)
        listener.settimeout(30)
        with listener.accept()[0] as connection:
            request = json.loads(connection.recv(65536))
            leases.append(request["op"])
            env = {"DISPLAY": ":99", "XAUTHORITY": str(tmp_path / "auth")}
            reply = {"ok": True, "lease": "l1", "display": ":99", "env": env}
            ended = {"event": "lease-ended", "lease": "l1", "reason": "died"}
            ended["message"] = "display :99 died: its X server was killed."
            connection.sendall(f"{json.dumps(reply)}\n{json.dumps(ended)}\n".encode())

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        result = subprocess.run(
            [*cli, "run", "--pool", "default", "--socket", path, "--", "sh", "-c", "exit 3"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        thread.join(30)
        listener.close()
    assert result.returncode == 3, result.stderr
    told = "xsupervise: display :99 died: its X server was killed. (under COMMAND, which runs on)"
    assert result.stderr.splitlines() == [told]
    assert leases == ["lease"]  # one lease asked for, not a second one
