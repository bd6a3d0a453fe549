#!/usr/bin/env python3
"""``xsupervise view`` in a real headless Chromium: first frame, frame rate, CPU.

    .venv/bin/python bench/view.py [--rounds N] [--seconds S]

1. From ``xsupervise view`` started to the first frame drawn in the browser: the display
   shows a known colour (``xsetroot -solid``); Chromium (already running) opens the printed
   URL, and a script in the page samples noVNC's canvas on every animation frame until that
   colour is there. For an xvfb session (a VNC server is attached) and an xvnc session (its
   own socket), interleaved, N rounds each: median and max.
2. A 1280x1024 window redrawing itself as fast as it can (bench/redraw.py: flat colours, and
   random pixels a VNC encoder cannot compress), viewed for S seconds: frames per second
   seen in the browser (changes of the canvas's pixel at a quarter of its size, sampled on
   each animation frame), the app's own rate, and the CPU (% of one core) of the VNC
   server (the attached X0tigervnc, or Xvnc itself: X server and VNC encoder in one) and
   of the view process (tornado: noVNC's files and the WebSocket bridge).

Needs Xvfb, Xvnc, x0vncserver, xsetroot, novnc, chromium-driver, selenium and tornado (the
test extras). Run it in /work/isolated or alone: it uses /tmp/.X11-unix.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).parent
XSUPERVISE = [sys.executable, "-m", "xsupervise"]
sys.path.insert(0, str(HERE.parent / "tests"))
from browser import chromium  # noqa: E402

COLOUR = (0x12, 0xA4, 0xC8)
# Resolves with Date.now() once the canvas's pixel at (w/4, h/4) is `colour` (the middle
# of the screen has the pointer).
FIRST_FRAME_JS = """
const [r, g, b, done] = arguments;
function look() {
  const c = document.querySelector('#screen canvas');
  if (c && c.width > 1) {
    const p = c.getContext('2d').getImageData(c.width >> 2, c.height >> 2, 1, 1).data;
    if (p[0] === r && p[1] === g && p[2] === b) { done(Date.now()); return; }
  }
  requestAnimationFrame(look);
}
look();
"""
# Counts the changes of the canvas's pixel at (w/4, h/4) over `seconds`, sampled on each animation
# frame; resolves with [changes, animation frames].
RATE_JS = """
const [seconds, done] = arguments;
const c = document.querySelector('#screen canvas');
const ctx = c.getContext('2d');
let last = null, changes = 0, frames = 0;
const end = performance.now() + seconds * 1000;
function look() {
  const p = ctx.getImageData(c.width >> 2, c.height >> 2, 1, 1).data.join(',');
  if (last !== null && p !== last) changes++;
  last = p; frames++;
  if (performance.now() < end) requestAnimationFrame(look); else done([changes, frames]);
}
look();
"""


def start_session(server: str) -> tuple[subprocess.Popen, dict[str, str]]:
    supervisor = subprocess.Popen(
        [*XSUPERVISE, "start", ":auto", "--json", "--server", server, "--name", f"bench-{server}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    return supervisor, json.loads(supervisor.stdout.readline())


def start_view(target: str) -> tuple[subprocess.Popen, str, float]:
    started = time.time()
    view = subprocess.Popen([*XSUPERVISE, "view", target], stdout=subprocess.PIPE, text=True)
    return view, view.stdout.readline().strip(), started


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    if process.stdout:
        process.stdout.close()


def first_frame(driver, server: str, env: dict[str, str], display: str) -> float:
    subprocess.run(
        ["xsetroot", "-solid", "#{:02x}{:02x}{:02x}".format(*COLOUR)], env=env, check=True
    )
    view, url, started = start_view(display)
    try:
        driver.set_script_timeout(30)
        driver.get(url)
        shown = driver.execute_async_script(FIRST_FRAME_JS, *COLOUR) / 1000
        return shown - started
    finally:
        stop(view)


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def frame_rate(driver, server: str, env: dict[str, str], display: str, kind: str, seconds: float):
    app = subprocess.Popen(
        [sys.executable, str(HERE / "redraw.py"), kind], env=env, stdout=subprocess.PIPE, text=True
    )
    assert app.stdout.readline() == "ready\n"
    drawn = [(time.monotonic(), 0)]  # (when, frames drawn so far), as the app reports it

    def read_counts() -> None:
        for line in app.stdout:
            drawn.append((time.monotonic(), int(line.split()[1])))

    threading.Thread(target=read_counts, daemon=True).start()
    view, url, _ = start_view(display)
    try:
        driver.set_script_timeout(seconds + 30)
        driver.get(url)
        driver.execute_async_script(  # connected and drawing
            "const done = arguments[0]; (function look() {"
            "const c = document.querySelector('#screen canvas');"
            "if (c && c.width > 1) done(); else requestAnimationFrame(look); })();"
        )
        family = psutil.Process(view.pid).children(recursive=True)
        scrapers = [p for p in family if p.name() == "X0tigervnc"]
        if not scrapers:  # xvnc: the VNC server is the X server itself
            scrapers = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "Xvnc"]
        bridge = psutil.Process(view.pid)
        before = (cpu_seconds(scrapers), cpu_seconds([bridge]), time.monotonic())
        drawn_before = drawn[-1]
        changes, animation_frames = driver.execute_async_script(RATE_JS, seconds)
        drawn_after = drawn[-1]
        elapsed = time.monotonic() - before[2]
        vnc_cpu = (cpu_seconds(scrapers) - before[0]) / elapsed * 100
        bridge_cpu = (cpu_seconds([bridge]) - before[1]) / elapsed * 100
        return (
            changes / seconds,
            animation_frames / seconds,
            (drawn_after[1] - drawn_before[1]) / (drawn_after[0] - drawn_before[0]),
            vnc_cpu,
            bridge_cpu,
        )
    finally:
        stop(view)
        app.kill()
        app.wait()
        app.stdout.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="xs-bench-", dir="/tmp"))
    sessions = {server: start_session(server) for server in ("xvfb", "xvnc")}
    try:
        with chromium() as driver:
            firsts: dict[str, list[float]] = {server: [] for server in sessions}
            for _ in range(args.rounds):
                for server, (_, facts) in sessions.items():
                    env = dict(os.environ, DISPLAY=facts["display"], XAUTHORITY=facts["xauthority"])
                    firsts[server].append(first_frame(driver, server, env, facts["display"]))
            print(f"\n1. view started -> first frame in Chromium ({args.rounds} rounds)\n")
            print("| session | VNC endpoint | median ms | max ms |")
            print("|---|---|--:|--:|")
            for server, values in firsts.items():
                endpoint = "attached X0tigervnc" if server == "xvfb" else "Xvnc's own socket"
                print(
                    f"| {server} | {endpoint} | {statistics.median(values) * 1000:.0f} "
                    f"| {max(values) * 1000:.0f} |"
                )
            print(f"\n2. a 1280x1024 window redrawing continuously, {args.seconds:g} s each\n")
            print(
                "| session | content | browser fps | rAF/s | app fps | VNC server CPU % "
                "| view (bridge) CPU % |"
            )
            print("|---|---|--:|--:|--:|--:|--:|")
            for server, (_, facts) in sessions.items():
                env = dict(os.environ, DISPLAY=facts["display"], XAUTHORITY=facts["xauthority"])
                for kind in ("flat", "noise"):
                    fps, raf, app, vnc, bridge = frame_rate(
                        driver, server, env, facts["display"], kind, args.seconds
                    )
                    print(
                        f"| {server} | {kind} | {fps:.1f} | {raf:.0f} | {app:.1f} | {vnc:.0f} "
                        f"| {bridge:.0f} |"
                    )
    finally:
        for supervisor, _ in sessions.values():
            stop(supervisor)
    return 0


if __name__ == "__main__":
    sys.exit(main())
