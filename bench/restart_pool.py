#!/usr/bin/env python3
"""A SIGKILLed daemon, started again on the same socket (issue 20): how soon are its X servers
gone, and how soon does it serve its first lease? Against a cold start, in one run.

    /work/isolated .venv/bin/python bench/restart_pool.py [--rounds 10]

Each round, with `[pool.default] size = 4` (real Xvfb, the defaults):
- restart: a lessee holds a lease; another leased display's server is SIGKILLed (a lessee's
  crash: counted nowhere); one more lease is taken, so that a refill is in flight; then the
  daemon is SIGKILLed (as the OOM killer would) and started again on the same socket and
  runtime directory (as systemd's Restart= would): time from the kill until every process
  it started is gone, and from the new daemon's spawn until it has served a lease;
- cold: a daemon started on a fresh runtime directory (no ledger, nothing to clear): from its
  spawn until it has served a lease. The rounds alternate, so load hits both alike.

Targets (issue 20): restart -> first lease p50 <= 2 s, max <= 5 s over 10 restarts; servers
gone within 1 s. Needs Xvfb. Run it inside /work/isolated (or any private /tmp), not alongside
the test suite.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from xsupervise.client import Client, XSuperviseError

REPO = Path(__file__).resolve().parent.parent
XSUPERVISE = [sys.executable, "-m", "xsupervise"]


def serve(directory: Path) -> subprocess.Popen:
    runtime = directory / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    config = directory / "config.toml"
    config.write_text("[pool.default]\nsize = 4\n")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "XSUPERVISE_CONFIG": str(config)}
    log = open(directory / "serve.log", "ab")  # noqa: SIM115 - the child holds it
    try:
        return subprocess.Popen(
            [*XSUPERVISE, "serve", "--socket", str(directory / "control.sock")],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
        )
    finally:
        log.close()


def first_lease(directory: Path, limit: float = 30.0) -> float:
    """Seconds from now until a lease of the daemon on ``directory`` has been served."""
    started = time.perf_counter()
    while True:
        try:
            with Client(str(directory / "control.sock"), timeout=limit).connect() as client:
                client.lease("default", wait=limit).release()
                return time.perf_counter() - started
        except XSuperviseError:
            if time.perf_counter() - started > limit:
                raise
            time.sleep(0.005)  # not bound yet


def until_full(directory: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with Client(str(directory / "control.sock"), timeout=10).connect() as client:
                if client.pools()[0]["ready"] == 4:
                    return
        except XSuperviseError:
            pass
        time.sleep(0.02)
    raise RuntimeError("the pool did not fill")


def stop(daemon: subprocess.Popen) -> None:
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(30)


def restart_round(directory: Path, daemon: subprocess.Popen) -> tuple[float, float, object]:
    socket = str(directory / "control.sock")
    until_full(directory)
    holder = Client(socket, timeout=30).connect()
    holder.lease("default")
    with Client(socket, timeout=30).connect() as client:
        crashed = client.lease("default")
        os.kill(crashed["server_pid"], signal.SIGKILL)  # a lessee's crash
        client.lease("default")  # and a refill in flight
        descendants = psutil.Process(daemon.pid).children(recursive=True)
        t0 = time.perf_counter()
        daemon.kill()
        daemon.wait()
        gone = psutil.wait_procs(descendants, timeout=5)[1] == []
        gone_in = time.perf_counter() - t0 if gone else float("inf")
    holder.close()
    for child in psutil.Process().children():  # orphans re-parented to us, if we subreap
        if child.status() == psutil.STATUS_ZOMBIE:
            os.waitpid(child.pid, 0)
    new = serve(directory)
    served_in = first_lease(directory)
    return gone_in, served_in, new


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    rounds = parser.parse_args().rounds
    gone: list[float] = []
    restarted: list[float] = []
    cold: list[float] = []
    with tempfile.TemporaryDirectory(prefix="xs-restart-") as tmp:
        kept = Path(tmp, "kept")
        kept.mkdir()
        daemon = serve(kept)
        first_lease(kept)
        try:
            for index in range(rounds):
                fresh = Path(tmp, f"cold{index}")
                fresh.mkdir()
                started = serve(fresh)
                try:
                    cold.append(first_lease(fresh))
                finally:
                    stop(started)
                gone_in, served_in, daemon = restart_round(kept, daemon)
                gone.append(gone_in)
                restarted.append(served_in)
                print(
                    f"round {index + 1}: gone {gone_in * 1000:.0f} ms, restart -> lease "
                    f"{served_in * 1000:.0f} ms, cold -> lease {cold[-1] * 1000:.0f} ms",
                    file=sys.stderr,
                )
        finally:
            stop(daemon)
    rows = [
        ("cold start -> first lease (base)", cold, ""),
        ("SIGKILL + restart -> first lease", restarted, "p50 <= 2 s, max <= 5 s"),
    ]
    print(f"\n{rounds} rounds, pool of 4 Xvfb (defaults)\n")
    print("| measure | p50 ms | max ms | x base p50 | target |")
    print("|---|--:|--:|--:|---|")
    base = statistics.median(cold)
    for label, values, target in rows:
        p50, top = statistics.median(values), max(values)
        met = ""
        if target:
            met = ": met" if p50 <= 2 and top <= 5 else ": NOT met"
        print(
            f"| {label} | {p50 * 1000:.0f} | {top * 1000:.0f} | {p50 / base:.2f} | {target}{met} |"
        )
    p50, top = statistics.median(gone), max(gone)
    print(
        f"| SIGKILL -> every process it started gone | {p50 * 1000:.0f} | {top * 1000:.0f} |"
        f" | max <= 1 s{': met' if top <= 1 else ': NOT met'} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
