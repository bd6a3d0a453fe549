#!/usr/bin/env python3
"""Recording: what it costs, and what a SIGKILL leaves.

    .venv/bin/python bench/record.py [--seconds 30] [--rounds 15]

1. CPU of the recorder (its processes: the recorder and its ffmpeg, % of one core) and of
   the X server, at 15 fps on a 1280x1024 display, averaged over --seconds (after 2 s of
   warm-up), side by side with ffmpeg's own x11grab (the baseline command of the product
   brief), for two screens: a small window redrawing once a second (``xclock -update 1``)
   and a full-screen window redrawing continuously (a Tk canvas, 60 Hz); the file size per
   minute and ffprobe's duration against the wall time.
2. ``xsupervise run --record FILE -- true`` against ``run -- true``: interleaved rounds,
   medians and the difference.
3. The supervisor SIGKILLed 5 s into a recording: how long until ffmpeg is gone, how much of
   the 5 s the file covers (ffprobe), and which files are left.

Needs Xvfb, ffmpeg, xclock and tkinter. Do not run it alongside the test suite.
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
import time
from pathlib import Path

import psutil

from xsupervise import Display
from xsupervise.host.processes import run_blocking
from xsupervise.launch.recording import start_recording

XSUPERVISE = [sys.executable, "-m", "xsupervise"]
SCREEN = "1280x1024x24"
BUSY = """
import random, tkinter
root = tkinter.Tk()
w, h = root.winfo_screenwidth(), root.winfo_screenheight()
root.geometry(f"{w}x{h}+0+0")
canvas = tkinter.Canvas(root, width=w, height=h, highlightthickness=0)
canvas.pack()
rng = random.Random(1)
items = [canvas.create_rectangle(0, 0, 0, 0, fill=f"#{rng.randrange(1 << 24):06x}", outline="")
         for _ in range(60)]
t = [0]
def tick():
    t[0] += 1
    canvas.configure(bg=f"#{(t[0] * 7) % 256:02x}{(t[0] * 3) % 256:02x}80")
    for i, item in enumerate(items):
        x = (i * 97 + t[0] * (3 + i % 5)) % w
        y = (i * 53 + t[0] * (2 + i % 3)) % h
        canvas.coords(item, x, y, x + 200, y + 150)
    root.after(16, tick)
tick()
root.mainloop()
"""
SCENES = {
    "xclock -update 1": ["xclock", "-update", "1"],
    "full-screen redraw (Tk, 60 Hz)": [sys.executable, "-c", BUSY],
}


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def duration(path: Path) -> float:
    shown = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        return float(json.loads(shown.stdout)["format"]["duration"])
    except (KeyError, ValueError):
        return float("nan")


def measure(scene: list[str], contender: str, seconds: float, scratch: Path) -> dict[str, float]:
    path = scratch / f"{contender}.mp4"
    with Display(screen=SCREEN) as display:
        env = {**os.environ, **display.env}
        client = subprocess.Popen(scene, env=env)
        time.sleep(1.0)  # the scene is up
        started = time.monotonic()
        if contender == "x11grab":
            encoder = subprocess.Popen(
                ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-f", "x11grab",
                 "-framerate", "15", "-video_size", "1280x1024", "-i", display.display,
                 "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
                 "-pix_fmt", "yuv420p", "-movflags", "+frag_keyframe+empty_moov",
                 "-f", "mp4", "-y", str(path)],
                env=env,
            )  # fmt: skip
            pid = encoder.pid
        else:
            recording = start_recording(
                display.number, display.xauthority, str(path), 15, f"bench-{os.getpid()}"
            )
            pid = recording.child.pid
        time.sleep(2.0)  # warm-up: start-up costs are not the steady state
        processes, server = tree(pid), psutil.Process(display.server_pid)
        before, server_before, at = cpu_seconds(processes), cpu_seconds([server]), time.monotonic()
        time.sleep(seconds)
        used = cpu_seconds(processes) - before
        server_used = cpu_seconds([server]) - server_before
        elapsed = time.monotonic() - at
        if contender == "x11grab":
            encoder.send_signal(signal.SIGINT)
            encoder.wait(30)
        else:
            run_blocking(recording.finish_steps(5.0))
        wall = time.monotonic() - started
        client.terminate()
        client.wait(10)
    return {
        "cpu": 100 * used / elapsed,
        "server": 100 * server_used / elapsed,
        "mb_per_min": path.stat().st_size / 1e6 * 60 / wall,
        "duration": duration(path),
        "wall": wall,
    }


def bench_cpu(seconds: float, scratch: Path) -> None:
    print(f"\n## CPU at 15 fps on {SCREEN}, over {seconds:g} s (% of one core)\n")
    print(
        "| screen | recorder | recorder CPU % | X server CPU % | MB per minute "
        "| ffprobe s / wall s |"
    )
    print("|---|---|--:|--:|--:|--:|")
    for name, scene in SCENES.items():
        for contender in ("x11grab", "xsupervise"):
            row = measure(scene, contender, seconds, scratch)
            print(
                f"| {name} | {'ffmpeg x11grab' if contender == 'x11grab' else 'xsupervise'} | "
                f"{row['cpu']:.1f} | {row['server']:.1f} | {row['mb_per_min']:.2f} | "
                f"{row['duration']:.1f} / {row['wall']:.1f} |",
                flush=True,
            )


def bench_run_true(rounds: int, scratch: Path) -> None:
    times: dict[str, list[float]] = {"run -- true": [], "run --record FILE -- true": []}
    for _ in range(rounds):
        for label in times:
            extra = ["--record", str(scratch / "true.mp4")] if "record" in label else []
            start = time.perf_counter()
            subprocess.run([*XSUPERVISE, "run", *extra, "--", "true"], check=True)
            times[label].append(time.perf_counter() - start)
    plain = statistics.median(times["run -- true"])
    print(f"\n## `run --record` against `run`, {rounds} interleaved rounds\n")
    print("| command | median ms | min-max ms | added ms (median) |")
    print("|---|--:|--:|--:|")
    for label, values in times.items():
        median = statistics.median(values)
        print(
            f"| `{label}` | {median * 1000:.1f} | {min(values) * 1000:.1f}-{max(values) * 1000:.1f}"
            f" | {(median - plain) * 1000:.1f} |"
        )


def bench_sigkill(scratch: Path) -> None:
    directory = scratch / "killed"
    directory.mkdir()
    video = directory / "killed.mp4"
    supervisor = subprocess.Popen(
        [*XSUPERVISE, "start", "--json", "--screen", SCREEN, "--record", str(video)],
        stdout=subprocess.PIPE,
    )
    assert supervisor.stdout is not None
    facts = json.loads(supervisor.stdout.readline())
    env = {**os.environ, "DISPLAY": facts["display"], "XAUTHORITY": facts["xauthority"]}
    clock = subprocess.Popen(["xclock", "-update", "1"], env=env)
    ffmpeg = [
        p for p in psutil.Process(supervisor.pid).children(recursive=True) if p.name() == "ffmpeg"
    ]
    time.sleep(5.0)
    supervisor.kill()
    killed = time.monotonic()
    gone = psutil.wait_procs(ffmpeg, timeout=5)[0]
    after = time.monotonic() - killed
    supervisor.wait()
    clock.kill()
    clock.wait()
    subprocess.run([*XSUPERVISE, "clean"], check=False, capture_output=True)
    print("\n## The supervisor SIGKILLed 5 s into a recording\n")
    print("| ffmpeg gone after | file covers (ffprobe) | files left |")
    print("|--:|--:|---|")
    print(
        f"| {after * 1000:.0f} ms{'' if gone else ' (NOT gone)'} "
        f"| {duration(video):.2f} s of 5 s | "
        f"{', '.join(sorted(p.name for p in directory.iterdir()))} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        bench_cpu(args.seconds, Path(scratch))
        bench_run_true(args.rounds, Path(scratch))
        bench_sigkill(Path(scratch))


if __name__ == "__main__":
    main()
