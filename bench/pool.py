#!/usr/bin/env python3
"""Warm pools (issue 12): leased displays against starting one, side by side in one run.

    .venv/bin/python bench/pool.py [--rounds N]

Starts its own `xsupervise serve` (private runtime directory and socket) with `[pool.default]
size = 4`, then prints one table:

- time to a usable display: `Display(pool="default")` (enter -> env) against a raw
  `Xvfb -displayfd` start (p50, p99; targets 0.1x and 0.25x);
- `xsupervise run --pool default -- true` against `xvfb-run -a true`, whole processes
  (target <= 0.6x), interleaved round by round: as the README installs it (a non-editable
  `pip install` into a fresh venv in a temporary directory; its dependencies come from .venv
  through a .pth line, so pip only fetches the build backend), and from the editable .venv,
  whose import hook costs ~20 ms of start-up; beside the floor of the first: its Python
  importing what pip's console-script wrapper imports (`re`) and nothing of ours;
- 100 leases in one burst on the pool of 4: all served, distinct servers, p50/p99 wait;
- the idle daemon: wakeups per second over 10 s (voluntary + involuntary context switches of
  all its threads, from /proc) with no client connected (a connected client that sends
  nothing is dropped after the protocol's 10 s: a wakeup of its own), its RSS, and the X
  servers' RSS. Each spare also wakes it once, reset_after (60 s) after it became ready, to
  record in the pool's budget that it proved stable; then never again while idle.

Needs Xvfb and xvfb-run (Debian: xvfb). Do not run it alongside the test suite.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
XSUPERVISE = str(REPO / ".venv" / "bin" / "xsupervise")
POOL_SIZE = 4


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def raw_xvfb() -> float:
    r, w = os.pipe()
    t0 = time.perf_counter()
    argv = [
        "Xvfb",
        "-displayfd",
        str(w),
        "-nolisten",
        "tcp",
        "-noreset",
        "-screen",
        "0",
        "1280x1024x24",
    ]
    proc = subprocess.Popen(
        argv, pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    os.close(w)
    try:
        line = b""
        while not line.endswith(b"\n"):
            chunk = os.read(r, 64)
            if not chunk:
                raise RuntimeError("Xvfb died")
            line += chunk
        return time.perf_counter() - t0
    finally:
        os.close(r)
        proc.terminate()
        proc.wait(10)


def whole(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    with os.fdopen(os.pidfd_open(proc.pid)) as pidfd:  # no 50 ms polling rounding
        select.select([pidfd], [], [], 60)
    if proc.wait() != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}")
    return time.perf_counter() - t0


def install(tmp: str) -> Path | None:
    """A fresh venv with xsupervise pip-installed (non-editable); its bin directory."""
    venv = Path(tmp, "venv")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps"]
        subprocess.run([*pip, str(REPO)], check=True, stdout=subprocess.DEVNULL)
    except subprocess.CalledProcessError as error:
        print(f"no installed row: {error}", file=sys.stderr)
        return None
    (site,) = venv.glob("lib/python*/site-packages")
    Path(site, "zz-xsupervise-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def settle(client, size: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        (pool,) = client.pools()
        if pool["ready"] == size and pool["leased"] == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"pool not settled: {pool}")
        time.sleep(0.01)


def burst(socket: str, count: int) -> tuple[list[float], set[int], int]:
    from xsupervise.client import Client

    waits: list[float] = []
    pids: set[int] = set()
    errors: list[BaseException] = []
    lock = threading.Lock()
    go = threading.Event()

    def lessee() -> None:
        go.wait()
        try:
            t0 = time.perf_counter()
            with Client(socket, timeout=None) as client, client.lease("default", wait=300) as lease:
                waited = time.perf_counter() - t0
                with lock:
                    waits.append(waited)
                    pids.add(lease["server_pid"])
        except BaseException as error:  # noqa: BLE001 - counted
            errors.append(error)

    threads = [threading.Thread(target=lessee) for _ in range(count)]
    for thread in threads:
        thread.start()
    go.set()
    for thread in threads:
        thread.join()
    if errors:
        print(f"burst errors: {sorted(set(map(repr, errors)))[:3]}", file=sys.stderr)
    return waits, pids, len(errors)


def switches(pid: int) -> int:
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        for line in Path(f"/proc/{pid}/task/{task}/status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle measurement")
    args = parser.parse_args()
    for program in ("Xvfb", "xvfb-run"):
        if shutil.which(program) is None:
            sys.exit(f"{program} is not installed (Debian: apt-get install xvfb)")
    from xsupervise import Display
    from xsupervise.client import Client, DaemonUnavailable

    with tempfile.TemporaryDirectory() as tmp:
        installed = install(tmp)
        runtime = Path(tmp, "run")
        runtime.mkdir(mode=0o700)
        config = Path(tmp, "config.toml")
        config.write_text(f"[pool.default]\nsize = {POOL_SIZE}\n")
        socket = str(Path(tmp, "control.sock"))
        env = {
            **os.environ,
            "XDG_RUNTIME_DIR": str(runtime),
            "XSUPERVISE_CONFIG": str(config),
            "XSUPERVISE_SOCKET": socket,
        }
        os.environ.update(XDG_RUNTIME_DIR=str(runtime), XSUPERVISE_SOCKET=socket)
        daemon = subprocess.Popen(
            [XSUPERVISE, "serve", "--socket", socket], env=env, stderr=subprocess.DEVNULL
        )
        try:
            while True:
                try:
                    client = Client(socket).connect()
                    break
                except DaemonUnavailable:
                    time.sleep(0.01)
            settle(client, POOL_SIZE)
            lease_t, raw_t, pooled_run, xvfb_run = [], [], [], []
            installed_run: list[float] = []
            floor: list[float] = []
            for _ in range(args.rounds):
                raw_t.append(raw_xvfb())
                settle(client, POOL_SIZE)
                t0 = time.perf_counter()
                with Display(pool="default", socket=socket) as display:
                    display.env  # noqa: B018 - usable: what the user waits for
                    lease_t.append(time.perf_counter() - t0)
                settle(client, POOL_SIZE)
                pooled_run.append(
                    whole([XSUPERVISE, "run", "--pool", "default", "--", "true"], env)
                )
                if installed is not None:
                    settle(client, POOL_SIZE)
                    argv = [str(installed / "xsupervise"), "run", "--pool", "default"]
                    installed_run.append(whole([*argv, "--", "true"], env))
                    floor.append(whole([str(installed / "python"), "-c", "import re"], env))
                xvfb_run.append(whole(["xvfb-run", "-a", "true"], env))
            settle(client, POOL_SIZE)
            client.close()  # an idle connection may be dropped to make room for the burst
            waits, pids, failed = burst(socket, 100)
            client = Client(socket).connect()
            settle(client, POOL_SIZE, timeout=120)
            records = client.list()
            leftover = len(records) - POOL_SIZE
            client.close()  # idle means no client: see the docstring
            time.sleep(1.0)  # let the refills' last logging and reaping finish
            before = switches(daemon.pid)
            time.sleep(args.idle)
            wakeups = (switches(daemon.pid) - before) / args.idle
            servers = [record["server_pid"] for record in records]
            daemon_rss = rss_kib(daemon.pid)
            server_rss = sum(rss_kib(pid) for pid in servers)
        finally:
            daemon.terminate()
            daemon.wait(30)

    def row(name: str, values: list[float], base: list[float] | None = None) -> str:
        p50, p99 = pct(values, 0.5) * 1e3, pct(values, 0.99) * 1e3
        ratio = ""
        if base is not None:
            ratio = f"{p50 / (pct(base, 0.5) * 1e3):.3f} | {p99 / (pct(base, 0.99) * 1e3):.3f}"
        else:
            ratio = "1 | 1"
        return f"| {name} | {p50:.2f} | {p99:.2f} | {ratio} |"

    print(f"\n{args.rounds} interleaved rounds; pool of {POOL_SIZE}.\n")
    print("| contender | p50 ms | p99 ms | x base p50 | x base p99 |")
    print("|---|--:|--:|--:|--:|")
    print(row("raw Xvfb -displayfd (base)", raw_t))
    print(row("Display(pool=...) enter -> env", lease_t, raw_t) + " target 0.1 / 0.25")
    print(row("xvfb-run -a true (base)", xvfb_run))
    if installed_run:
        print(
            row("xsupervise run --pool default -- true (installed)", installed_run, xvfb_run)
            + " target 0.6"
        )
        print(row("  floor: its python -c 'import re'", floor, xvfb_run))
    print(row("xsupervise run --pool default -- true (editable .venv)", pooled_run, xvfb_run))
    print(
        f"\n100-lease burst on a pool of {POOL_SIZE}: {len(waits)} served, {failed} failed, "
        f"{len(pids)} distinct X servers; wait p50 {pct(waits, 0.5) * 1e3:.1f} ms, "
        f"p99 {pct(waits, 0.99) * 1e3:.1f} ms; sessions left beyond the spares: {leftover}"
    )
    print(
        f"idle daemon ({POOL_SIZE} spares), {args.idle:g} s: {wakeups:.2f} wakeups/s; "
        f"RSS daemon {daemon_rss / 1024:.1f} MiB, X servers {server_rss / 1024:.1f} MiB "
        f"({len(servers)} of them)"
    )
    ok = len(waits) == 100 and len(pids) == 100 and not failed and leftover == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
