"""Warm pools and leases (issue 12): a real daemon, real Xvfb, real sockets and signals."""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import XSUPERVISE, fake_server, read_line, requires_xvfb, start_cli
from xsupervise import AsyncDisplay, Display
from xsupervise.client import Client, ControlError, DaemonUnavailable


def write_pools(path: Path, pools: dict[str, dict[str, object]]) -> Path:
    lines = []
    for name, table in pools.items():
        lines.append(f"[pool.{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class PoolDaemon:
    """`xsupervise serve` with pools, as a child process; stderr in a file."""

    def __init__(self, tmp_path: Path, pools: dict[str, dict[str, object]]):
        self.config = write_pools(tmp_path / "config.toml", pools)
        self.socket = str(tmp_path / "control.sock")
        self.log = tmp_path / "serve.log"
        env = {**os.environ, "XSUPERVISE_CONFIG": str(self.config)}
        with open(self.log, "wb") as stderr:
            self.process = subprocess.Popen(
                [*XSUPERVISE, "serve", "--socket", self.socket],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=env,
            )

    def client(self) -> Client:
        deadline = time.monotonic() + 15
        while True:
            try:
                return Client(self.socket, timeout=30).connect()
            except DaemonUnavailable:  # not bound yet
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.02)

    def pool(self, name: str = "default") -> dict:
        with self.client() as client:
            (pool,) = [pool for pool in client.pools() if pool["name"] == name]
        return pool

    def until(self, check, timeout: float = 10.0, name: str = "default") -> dict:
        """Poll the pool's state until ``check(pool)``: the daemon offers no event for it."""
        deadline = time.monotonic() + timeout
        while True:
            pool = self.pool(name)
            if check(pool):
                return pool
            assert time.monotonic() < deadline, f"pool never got there: {pool}"
            time.sleep(0.02)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture
def pools(tmp_path: Path):
    started: list[PoolDaemon] = []

    def start(**tables: dict[str, object]) -> PoolDaemon:
        daemon = PoolDaemon(tmp_path, tables)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        assert daemon.stop() == 0, daemon.log.read_text()


def xdpyinfo(env: dict[str, str]) -> int:
    return subprocess.run(
        ["xdpyinfo"], env={**os.environ, **env}, capture_output=True, timeout=30
    ).returncode


def gone_within(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` (not ours: the daemon's child) ends within ``timeout``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def ready(size: int):
    return lambda pool: pool["ready"] == size and pool["state"] == "ready"


@requires_xvfb
def test_a_lease_works_with_its_cookie_only_and_each_cookie_is_its_own(pools, tmp_path):
    daemon = pools(default={"size": 2, "screen": "640x480x24"})
    daemon.until(ready(2))
    with daemon.client() as one, daemon.client() as two:
        first, second = one.lease("default"), two.lease("default")
        assert first["display"] != second["display"] and first["lease"] != second["lease"]
        assert first["screen"] == "640x480x24" and first["pool"] == "default"
        assert xdpyinfo(first["env"]) == 0
        empty = tmp_path / "empty.xauth"
        empty.write_bytes(b"")
        assert xdpyinfo({**first["env"], "XAUTHORITY": str(empty)}) != 0
        cookies = [Path(lease["xauthority"]).read_bytes() for lease in (first, second)]
        assert cookies[0] != cookies[1]
        assert os.stat(first["xauthority"]).st_mode & 0o777 == 0o600
        pool = daemon.pool()
        assert pool["leased"] == 2 and pool["size"] == 2
        first.release()
        assert gone_within(first["server_pid"], 5)
        deadline = time.monotonic() + 5  # removed just after the server is reaped
        while Path(first["xauthority"]).exists():
            assert time.monotonic() < deadline, "the lease's cookie file outlived it"
            time.sleep(0.01)
    assert gone_within(second["server_pid"], 5)  # its connection closed: destroyed
    daemon.until(lambda pool: ready(2)(pool) and pool["leased"] == 0)


@requires_xvfb
def test_a_sigkilled_lessee_loses_its_display_within_a_second(pools):
    daemon = pools(default={"size": 1})
    daemon.until(ready(1))
    lessee = start_cli(
        "lease", "default", "--json", "--socket", daemon.socket, stdin=subprocess.PIPE
    )
    try:
        lease = json.loads(read_line(lessee.stdout))
        assert xdpyinfo(lease["env"]) == 0
        lessee.kill()
        assert gone_within(lease["server_pid"], 1.0), "its display outlived the lessee by 1 s"
    finally:
        lessee.kill()
        lessee.wait()
        lessee.stdout.close()
        lessee.stderr.close()
        lessee.stdin.close()
    daemon.until(ready(1))


@requires_xvfb
def test_the_lease_command_holds_until_stdin_closes(pools):
    daemon = pools(default={"size": 1})
    daemon.until(ready(1))
    lessee = start_cli("lease", "--socket", daemon.socket, stdin=subprocess.PIPE)
    display = read_line(lessee.stdout).strip()
    xauthority = read_line(lessee.stdout).strip()
    assert display.startswith("DISPLAY=:") and xauthority.startswith("XAUTHORITY=/")
    env = dict(line.split("=", 1) for line in (display, xauthority))
    assert xdpyinfo(env) == 0
    lessee.stdin.close()
    assert lessee.wait(timeout=10) == 0
    lessee.stdout.close()
    lessee.stderr.close()
    daemon.until(lambda pool: pool["leased"] == 0 and ready(1)(pool))


@requires_xvfb
def test_thirty_concurrent_leases_on_a_pool_of_two(pools):
    daemon = pools(default={"size": 2})
    daemon.until(ready(2))
    leases: list[dict] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def lessee() -> None:
        try:
            with daemon.client() as client, client.lease("default", wait=60) as lease:
                assert xdpyinfo(lease["env"]) == 0
                with lock:
                    leases.append(dict(lease, cookie=Path(lease["xauthority"]).read_bytes()))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=lessee) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert len(leases) == 30
    assert len({lease["server_pid"] for lease in leases}) == 30, "a display was handed out twice"
    assert len({lease["cookie"] for lease in leases}) == 30
    for lease in leases:
        assert gone_within(lease["server_pid"], 5)
    daemon.until(lambda pool: pool["leased"] == 0 and ready(2)(pool))


def test_a_pool_that_cannot_start_is_failed_bounded_and_fails_leases_fast(pools, tmp_path):
    daemon = pools(
        broken={
            "size": 3,
            "server": fake_server("exit"),
            "start_limit_burst": 2,
            "backoff_initial": 0.05,
            "backoff_max": 0.1,
        }
    )
    daemon.until(lambda pool: pool["state"] == "failed", name="broken")
    started = time.monotonic()
    done = subprocess.run(
        [*XSUPERVISE, "run", "--pool", "broken", "--socket", daemon.socket, "--", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert time.monotonic() - started < 5
    assert done.returncode == 7, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pool broken is FAILED" in lines[0], lines
    # What failed, how often, since when (issue 20).
    assert re.search(
        r"is FAILED: \d+ failures \(starts that failed, or spares that died while idle\) in "
        r"60 s \(limit 2\), FAILED since \d\d:\d\d:\d\d, next try at \d\d:\d\d:\d\d\. "
        r"Last failure: .*exited with status 1.* Fix the cause, then run 'xsupervise reset "
        r"pool\.broken' to try at once\.$",
        lines[0],
    ), lines[0]
    with daemon.client() as client:
        with pytest.raises(ControlError) as failed:
            client.lease("broken", wait=10)
        assert failed.value.exit_code == 7
        assert client.ping()["pid"] == daemon.process.pid  # still answering
        # A spare made a moment ago is "starting" until it has asked the budget: then FAILED.
        deadline = time.monotonic() + 10
        while True:
            states = {
                e["state"] for e in client.status("pool.broken") if e["name"] == "pool.broken"
            }
            if states == {"failed"} or time.monotonic() > deadline:
                break
            select.select([], [], [], 0.05)
    # Bounded: the budget allowed at most burst + 1 failures, plus one in flight per spare.
    ledger = json.loads((tmp_path / "run/xsupervise/ledger/pool.broken.json").read_text())
    assert ledger["starts"] <= 2 + 1 + 3, ledger
    assert states == {"failed"}


@requires_xvfb
def test_a_spare_whose_server_is_killed_while_idle_is_replaced(pools):
    daemon = pools(default={"size": 2, "backoff_initial": 0.05, "backoff_max": 0.1})
    daemon.until(ready(2))
    with daemon.client() as client:
        servers = {s["server_pid"] for s in client.list() if s["name"] == "pool.default"}
    victim = min(servers)
    os.kill(victim, signal.SIGKILL)
    assert gone_within(victim, 5)

    def replaced(pool: dict) -> bool:  # the daemon hears of the death a moment later
        with daemon.client() as client:
            pids = {s["server_pid"] for s in client.list() if s["name"] == "pool.default"}
        return ready(2)(pool) and victim not in pids and len(pids) == 2

    daemon.until(replaced)
    with daemon.client() as client, client.lease() as one, client.lease() as two:
        assert victim not in (one["server_pid"], two["server_pid"])
        assert xdpyinfo(one["env"]) == 0 and xdpyinfo(two["env"]) == 0


@requires_xvfb
def test_sighup_resizes_a_pool_without_touching_leased_displays(pools):
    daemon = pools(default={"size": 1})
    daemon.until(ready(1))
    with daemon.client() as client, client.lease() as held:
        write_pools(daemon.config, {"default": {"size": 3}})
        daemon.process.send_signal(signal.SIGHUP)
        daemon.until(lambda pool: ready(3)(pool) and pool["leased"] == 1)
        write_pools(daemon.config, {"default": {"size": 1, "screen": "800x600x24"}})
        daemon.process.send_signal(signal.SIGHUP)
        daemon.until(lambda pool: ready(1)(pool) and pool["refilling"] == 0)
        with daemon.client() as other, other.lease() as fresh:
            assert fresh["screen"] == "800x600x24"
        assert xdpyinfo(held["env"]) == 0  # the leased display was left alone
        write_pools(daemon.config, {})
        daemon.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while client.pools():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert xdpyinfo(held["env"]) == 0


@requires_xvfb
def test_daemon_sigterm_with_live_leases_stops_everything(pools):
    daemon = pools(default={"size": 2})
    daemon.until(ready(2))
    lessees = [
        start_cli("lease", "--json", "--socket", daemon.socket, stdin=subprocess.PIPE)
        for _ in range(2)
    ]
    leases = [json.loads(read_line(lessee.stdout)) for lessee in lessees]
    with daemon.client() as client:
        servers = [s["server_pid"] for s in client.list()]
    assert daemon.stop() == 0
    for lessee in lessees:
        assert lessee.wait(timeout=10) == 1  # it saw its connection close
        assert "closed the connection" in lessee.stderr.read().decode()
        for stream in (lessee.stdin, lessee.stdout, lessee.stderr):
            stream.close()
    for pid in servers + [lease["server_pid"] for lease in leases]:
        assert gone_within(pid, 1)


@requires_xvfb
def test_display_and_async_display_lease_from_a_pool(pools):
    daemon = pools(default={"size": 1})
    daemon.until(ready(1))
    with Display(pool="default", socket=daemon.socket) as display:
        assert display.display.startswith(":") and display.server_pid > 0
        assert xdpyinfo(display.env) == 0
        assert display.facts.width == 1280
        pid = display.server_pid
    assert gone_within(pid, 5)

    async def leased() -> int:
        async with AsyncDisplay(pool="default", socket=daemon.socket) as display:
            assert await asyncio.to_thread(xdpyinfo, display.env) == 0
            return display.server_pid

    assert gone_within(asyncio.run(leased()), 5)


def test_no_daemon_is_exit_5_never_a_private_server(tmp_path):
    done = subprocess.run(
        [
            *XSUPERVISE,
            "run",
            "--pool",
            "default",
            "--socket",
            str(tmp_path / "no.sock"),
            "--",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 5
    assert done.stderr.startswith("xsupervise: cannot lease a display of pool default: no ")
    env = {**os.environ, "XSUPERVISE_POOL": "default", "XSUPERVISE_SOCKET": str(tmp_path / "n")}
    done = subprocess.run([*XSUPERVISE, "run", "--", "true"], env=env, capture_output=True)
    assert done.returncode == 5
    with pytest.raises(DaemonUnavailable):
        Display(pool="default", socket=str(tmp_path / "no.sock")).start()


def test_pool_tables_are_checked(tmp_path, monkeypatch):
    from xsupervise.daemon.pool_spec import load_pool_specs
    from xsupervise.host.errors import UsageError

    config = write_pools(tmp_path / "c.toml", {"ci": {"size": 3, "screen": "800x600x24"}})
    monkeypatch.setenv("XSUPERVISE_CONFIG", str(config))
    (spec,) = load_pool_specs()
    assert (spec.name, spec.size, spec.settings.screen) == ("ci", 3, "800x600x24")
    for bad, why in (({"sise": 3}, r"unknown key\(s\) sise"), ({"size": 0}, "size=0")):
        write_pools(config, {"ci": bad})
        with pytest.raises(UsageError, match=why):
            load_pool_specs()


@requires_xvfb
def test_a_lessee_that_leaves_while_waiting_takes_no_display(pools, tmp_path, monkeypatch):
    report = tmp_path / "x-spawns"
    monkeypatch.setenv("FAKE_X_REPORT", str(report))
    # Spares take 0.3 s to start: the leaver's request and close reach the daemon within
    # milliseconds of the holder's lease, well before the next spare is ready.
    daemon = pools(default={"size": 1, "server": fake_server("slow=0.3")})
    daemon.until(ready(1))
    with daemon.client() as holder:
        held = holder.lease("default")  # the only spare: the next lessee waits for a new one
        leaver = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        leaver.connect(daemon.socket)
        leaver.sendall(b'{"op": "lease", "pool": "default", "wait": 30}\n')
        leaver.close()  # gave up (Ctrl-C) before the next spare was ready
        pool = daemon.until(ready(1), timeout=15)
        assert pool["leased"] == 1  # the new spare waits for a live lessee, untaken...
        spawns = [line for line in report.read_text().splitlines() if line.startswith("pid=")]
        assert len(spawns) == 2  # ...not taken by the one that left, destroyed and made again
        with daemon.client() as other:
            with pytest.raises(ControlError) as refused:  # nor can another release ours
                other.request("release", lease=held["lease"])
            assert refused.value.exit_code == 6
        assert xdpyinfo({"DISPLAY": held["display"], "XAUTHORITY": held["xauthority"]}) == 0


@requires_xvfb
def test_the_lease_command_with_no_stdin_to_watch_holds_until_a_signal(pools):
    # A script's background job, or a unit, gets /dev/null as stdin: its end means nothing.
    daemon = pools(default={"size": 1})
    daemon.until(ready(1))
    lessee = start_cli("lease", "--socket", daemon.socket, stdin=subprocess.DEVNULL)
    display = read_line(lessee.stdout).strip()
    assert display.startswith("DISPLAY=:")
    read_line(lessee.stdout)
    daemon.until(lambda pool: pool["leased"] == 1)
    assert lessee.poll() is None  # still holding it
    lessee.send_signal(signal.SIGTERM)
    assert lessee.wait(timeout=10) == 0
    lessee.stdout.close()
    lessee.stderr.close()
    daemon.until(lambda pool: pool["leased"] == 0)
