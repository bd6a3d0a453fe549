"""A pool under fire (issue 20): lessees loop on leases and mark their displays while random
SIGKILLs hit lessees, leased X servers and now and then an idle spare, and the daemon itself
is SIGKILLed and started again (as systemd's Restart= would) at least twice.

It must hold: no display is shared or handed out twice; every lessee failure falls within a
fault's window; the pool never goes FAILED; after each daemon SIGKILL its servers are gone
within 1 s and a lease is served again within the target (5 s, the issue's maximum; the
figures are bench/restart_pool.py's); nothing is left at the end (conftest's check).

About 60 s. ``XSUPERVISE_CHAOS_SECONDS=600`` makes it a 10-minute run (with a daemon SIGKILL
every minute); ``XSUPERVISE_CHAOS_SEED`` replays a run's faults; ``-s`` shows its figures.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from test_pool import write_pools

from conftest import TESTS, XSUPERVISE, requires_xvfb, wait_gone
from xsupervise.client import Client, XSuperviseError

# Read now: the autouse fixture clears XSUPERVISE_* from the environment of each test.
SECONDS = float(os.environ.get("XSUPERVISE_CHAOS_SECONDS", "60"))
SEED = int(os.environ.get("XSUPERVISE_CHAOS_SEED", str(random.randrange(1 << 30))))
LESSEES = 3
POOL = {"size": 3, "glx": False, "screen": "800x600x24"}
GONE_WITHIN = 1.0  # s after a daemon's SIGKILL, for every process it started
SERVED_WITHIN = 5.0  # s from a daemon's restart to its first lease (the maximum)
SPARE_KILL_EVERY = 15.0  # s at least between idle-spare kills: 4 a minute, under the limit
SLACK = 2.0  # s after a restarted daemon served its first lease, for lessees to notice


class Chaos:
    """The daemon, the lessees, and every fault done to them (with its time)."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.socket = str(tmp_path / "control.sock")
        self.config = write_pools(tmp_path / "config.toml", {"default": POOL})
        self.daemon: subprocess.Popen | None = None
        self.lessees: dict[str, subprocess.Popen] = {}
        self.killed_servers: dict[int, float] = {}  # server pid -> when
        self.faults: dict[str, int] = {"lessee": 0, "leased server": 0, "idle spare": 0}
        self.restarts: list[dict[str, float]] = []  # t0 (kill), t1 (first lease), gone_in
        self.states: set[str] = set()
        self.ours: set[int] = set()  # pids we Popen'ed (the others we reap are orphans)

    # -- processes -------------------------------------------------------------------------
    def start_daemon(self) -> None:
        env = {**os.environ, "XSUPERVISE_CONFIG": str(self.config)}
        with open(self.tmp / "serve.log", "ab") as log:
            self.daemon = subprocess.Popen(
                [*XSUPERVISE, "serve", "--socket", self.socket],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
            )
        self.ours.add(self.daemon.pid)

    def start_lessee(self, name: str) -> None:
        log = self.tmp / f"{name}.jsonl"
        self.lessees[name] = process = subprocess.Popen(
            [sys.executable, str(TESTS / "chaos_lessee.py"), self.socket, name, str(log)],
            stdout=subprocess.DEVNULL,
        )
        self.ours.add(process.pid)

    def reap_orphans(self) -> None:
        """Orphans re-parented to us (pytest is a subreaper): a SIGKILLed lessee's xprop, a
        SIGKILLed daemon's servers. Reaped once dead; never one we Popen'ed (Popen does)."""
        for child in psutil.Process().children():
            if child.pid not in self.ours:
                try:
                    if child.status() == psutil.STATUS_ZOMBIE:
                        os.waitpid(child.pid, 0)
                except (psutil.NoSuchProcess, ChildProcessError):
                    pass

    # -- what the test observes ------------------------------------------------------------
    def records(self) -> list[dict]:
        lines = []
        for name in sorted(self.lessees):
            path = self.tmp / f"{name}.jsonl"
            for line in path.read_text().splitlines() if path.exists() else []:
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    pass  # a line cut short by a SIGKILL
        return lines

    def held(self) -> dict[int, dict]:
        """The leases held now, by server pid: a lease line with no ok/fail after it."""
        held: dict[str, dict] = {}
        for record in self.records():
            if record["kind"] == "lease":
                held[record["lessee"]] = record
            elif record["kind"] in ("ok", "fail"):
                held.pop(record["lessee"], None)
        return {record["server_pid"]: record for record in held.values()}

    def wait_until_full(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                with Client(self.socket, timeout=5).connect() as client:
                    if all(pool["state"] == "ready" for pool in client.pools()):
                        return
            except XSuperviseError:
                pass  # not bound yet
            assert time.monotonic() < deadline, "the pool never filled"
            time.sleep(0.05)

    def pool_state(self) -> None:
        try:
            with Client(self.socket, timeout=5).connect() as client:
                self.states.update(pool["state"] for pool in client.pools())
        except XSuperviseError:
            pass  # the daemon is being restarted

    # -- faults ----------------------------------------------------------------------------
    def kill_lessee(self, rng: random.Random) -> None:
        name = rng.choice(sorted(self.lessees))
        process = self.lessees[name]
        process.kill()
        process.wait()
        self.faults["lessee"] += 1
        self.start_lessee(name)

    def kill_server(self, pid: int, kind: str) -> None:
        self.killed_servers[pid] = time.time()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.faults[kind] += 1

    def kill_leased_server(self, rng: random.Random) -> None:
        held = self.held()
        if held:
            self.kill_server(rng.choice(sorted(held)), "leased server")

    def kill_idle_spare(self, rng: random.Random) -> bool:
        try:
            with Client(self.socket, timeout=5).connect() as client:
                spares = [
                    s["server_pid"]
                    for s in client.list()
                    if s["name"] == "pool.default" and s["state"] == "ready"
                ]
        except XSuperviseError:
            return False
        idle = sorted(set(spares) - set(self.held()))
        if not idle:
            return False
        self.kill_server(rng.choice(idle), "idle spare")
        return True

    def kill_daemon(self) -> None:
        assert self.daemon is not None
        servers = psutil.Process(self.daemon.pid).children(recursive=True)
        t0 = time.time()
        self.daemon.kill()
        self.daemon.wait()
        for process in servers:
            assert wait_gone(process.pid, GONE_WITHIN), f"{process} outlived the daemon"
        gone_in = time.time() - t0
        self.start_daemon()
        started = time.monotonic()
        while True:  # the first lease the new daemon serves (to us)
            try:
                with Client(self.socket, timeout=30).connect() as client:
                    client.lease("default", wait=SERVED_WITHIN).release()
                    break
            except XSuperviseError:
                assert time.monotonic() - started < SERVED_WITHIN, "no lease after restart"
                time.sleep(0.02)  # not bound yet
        served_in = time.monotonic() - started
        self.restarts.append(
            {"t0": t0, "t1": time.time(), "gone_in": gone_in, "served_in": served_in}
        )

    # -- the verdict -----------------------------------------------------------------------
    def explained(self, failure: dict) -> bool:
        """A fault's window holds it: its server was killed before it, or a daemon was down
        then, or its display died with a daemon SIGKILLed while it held it."""
        at = failure["t"]
        killed = self.killed_servers.get(failure.get("server_pid", -1))
        if killed is not None and killed <= at:
            return True
        for restart in self.restarts:
            if restart["t0"] <= at <= restart["t1"] + SLACK:
                return True
            if failure.get("leased_at", at) <= restart["t0"] <= at:
                return True
        return False


@pytest.mark.chaos
@requires_xvfb
def test_a_pool_under_fire_never_shares_never_fails_and_comes_back(tmp_path):
    rng = random.Random(SEED)
    chaos = Chaos(tmp_path)
    kills = max(2, int(SECONDS // 60))  # the daemon's SIGKILLs, evenly spread
    restarts_at = [SECONDS * (i + 1) / (kills + 1) for i in range(kills)]
    chaos.start_daemon()
    chaos.wait_until_full()  # before: a lessee's failure would be no fault's
    for index in range(LESSEES):
        chaos.start_lessee(f"lessee{index}")
    began = time.monotonic()
    last_spare_kill = began
    try:
        while (elapsed := time.monotonic() - began) < SECONDS:
            if restarts_at and elapsed >= restarts_at[0]:
                restarts_at.pop(0)
                chaos.kill_daemon()
                continue
            time.sleep(rng.uniform(0.3, 0.9))  # the pace of the faults, not a wait for one
            roll = rng.random()
            if time.monotonic() - last_spare_kill > SPARE_KILL_EVERY and roll < 0.15:
                if chaos.kill_idle_spare(rng):
                    last_spare_kill = time.monotonic()
            elif roll < 0.35:
                chaos.kill_lessee(rng)
            else:
                chaos.kill_leased_server(rng)
            chaos.pool_state()
            chaos.reap_orphans()
    finally:
        for process in chaos.lessees.values():
            process.send_signal(signal.SIGTERM)
        for process in chaos.lessees.values():
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if chaos.daemon is not None:
            chaos.daemon.send_signal(signal.SIGTERM)
            assert chaos.daemon.wait(timeout=30) == 0
        chaos.reap_orphans()

    records = chaos.records()
    leases = [r for r in records if r["kind"] == "lease"]
    failures = [r for r in records if r["kind"] == "fail"]
    unexplained = [f for f in failures if not chaos.explained(f)]
    served = [r["served_in"] for r in chaos.restarts]
    print(
        f"\nchaos {SECONDS:g} s, seed {SEED}: {len(leases)} leases, "
        f"{sum(r['kind'] == 'ok' for r in records)} ok; faults {chaos.faults}, "
        f"{len(chaos.restarts)} daemon SIGKILLs; {len(failures)} lessee failures, "
        f"{len(failures) - len(unexplained)} inside a fault's window, {len(unexplained)} not; "
        f"servers gone after a daemon SIGKILL within max "
        f"{max(r['gone_in'] for r in chaos.restarts):.2f} s; first lease after a restart: "
        f"p50 {statistics.median(served):.2f} s, max {max(served):.2f} s; pool states seen: "
        f"{sorted(chaos.states)}"
    )
    assert [r for r in records if r["kind"] in ("reused", "shared")] == []
    pids = [lease["server_pid"] for lease in leases]
    assert len(pids) == len(set(pids)), "an X server was handed out twice"
    assert unexplained == [], unexplained[:5]
    assert "failed" not in chaos.states
    assert "is FAILED" not in (tmp_path / "serve.log").read_text()
    assert len(chaos.restarts) >= 2 and len(leases) >= SECONDS  # it did something
    assert min(chaos.faults.values()) >= 1, chaos.faults
    assert all(r["served_in"] <= SERVED_WITHIN for r in chaos.restarts), chaos.restarts
