#!/usr/bin/env python3
"""Memory of idle spares (issue 20): what a pool of 4 Xvfb spares costs, per variant.

    /work/isolated .venv/bin/python bench/spare_memory.py [--size 4]

For each variant of `[pool.default]` (the default: GLX on, 1280x1024x24; `glx = false`; a
smaller screen, 640x480x24; both), starts `xsupervise serve` with that pool, waits until
every spare is ready and has answered a client, then reads each spare's memory from
/proc/PID/smaps_rollup (psutil): RSS (what `ps` and the issue's 68 MiB show: shared library
pages counted again in every spare), PSS (its fair share: the sum over spares is what they
really take together) and USS (private: what one more spare adds). Prints one table.

Needs Xvfb. Run it inside /work/isolated (or any private /tmp), not alongside the tests.
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

XSUPERVISE = [sys.executable, "-m", "xsupervise"]
VARIANTS = {
    "default (GLX, 1280x1024x24)": {},
    "glx = false": {"glx": "false"},
    'screen = "640x480x24"': {"screen": '"640x480x24"'},
    'glx = false, screen = "640x480x24"': {"glx": "false", "screen": '"640x480x24"'},
}
MIB = 1024 * 1024


def measure(directory: Path, size: int, table: dict[str, str]) -> list:
    runtime = directory / "run"
    runtime.mkdir(mode=0o700)
    config = directory / "config.toml"
    config.write_text(
        "[pool.default]\n" + f"size = {size}\n" + "".join(f"{k} = {v}\n" for k, v in table.items())
    )
    socket = str(directory / "control.sock")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "XSUPERVISE_CONFIG": str(config)}
    daemon = subprocess.Popen(
        [*XSUPERVISE, "serve", "--socket", socket], env=env, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(socket, timeout=10).connect() as client:
                    if client.pools()[0]["ready"] == size:
                        spares = [s for s in client.list() if s["name"] == "pool.default"]
                        break
            except XSuperviseError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the pool did not fill")
            time.sleep(0.05)
        for spare in spares:  # a client has been served (as after a lease's first use)
            subprocess.run(
                ["xdpyinfo"],
                env={**os.environ, "DISPLAY": spare["display"], "XAUTHORITY": spare["xauthority"]},
                stdout=subprocess.DEVNULL,
                check=True,
            )
        time.sleep(1)  # settle
        return [psutil.Process(spare["server_pid"]).memory_full_info() for spare in spares]
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4)
    size = parser.parse_args().size
    rows = []
    with tempfile.TemporaryDirectory(prefix="xs-memory-") as tmp:
        for index, (label, table) in enumerate(VARIANTS.items()):
            directory = Path(tmp, str(index))
            directory.mkdir()
            memory = measure(directory, size, table)
            rows.append((label, memory))
    base_pss = sum(m.pss for m in rows[0][1])
    print(f"\n{size} idle Xvfb spares per variant (MiB; per spare: median)\n")
    print(
        f"| variant | RSS per spare | PSS per spare | USS per spare | {size} spares: "
        "sum of RSS | sum of PSS (what they take) | x default |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|")
    for label, memory in rows:
        rss = statistics.median(m.rss for m in memory) / MIB
        pss = statistics.median(m.pss for m in memory) / MIB
        uss = statistics.median(m.uss for m in memory) / MIB
        total_rss = sum(m.rss for m in memory) / MIB
        total_pss = sum(m.pss for m in memory)
        print(
            f"| {label} | {rss:.1f} | {pss:.1f} | {uss:.1f} | {total_rss:.1f} | "
            f"{total_pss / MIB:.1f} | {total_pss / base_pss:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
