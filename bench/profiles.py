"""Time to a ready display per server profile: xsupervise against the same server by hand.

    .venv/bin/python bench/startup.py --profiles [--rounds N]

For each installed profile (and xvfb with glx = false): ``xsupervise.Display.start()`` (ready:
-displayfd, then an X11 handshake with our cookie; xwayland: weston's socket first) against
the very argv and environment xsupervise would use (built by the same code, launch.profiles.
plan_launch), spawned by hand with subprocess and ready when its number arrives on -displayfd
(xwayland: weston started by hand first, its socket polled every millisecond). Rounds are
interleaved in a fresh random order. Xephyr nests into an Xvfb started here (untimed).
"""

from __future__ import annotations

import os
import random
import select
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

import xsupervise
from xsupervise.host.paths import RuntimeDir
from xsupervise.launch.compositor import Weston
from xsupervise.launch.profiles import PROFILES, plan_launch
from xsupervise.launch.server import SessionFiles
from xsupervise.launch.settings import Settings

SCREEN = "1280x1024x24"
VARIANTS = {  # label -> settings
    "xvfb": Settings(server=("xvfb",)),
    "xvfb glx=false": Settings(server=("xvfb",), glx=False),
    "xephyr": Settings(server=("xephyr",)),
    "xvnc": Settings(server=("xvnc",)),
    "xorg-dummy": Settings(server=("xorg-dummy",)),
    "xwayland": Settings(server=("xwayland",)),
}


def installed(settings: Settings) -> bool:
    name = settings.server[0]
    return PROFILES[name].binary() is not None and (
        name != "xwayland" or shutil.which("weston") is not None
    )


def with_xsupervise(settings: Settings) -> float:
    display = xsupervise.Display(settings=settings)
    t0 = time.perf_counter()
    try:
        display.start()
        return time.perf_counter() - t0
    finally:
        display.stop()


def _wait_exit(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def by_hand(settings: Settings) -> float:
    """The same argv and environment, spawned with subprocess; ready = number on -displayfd."""
    runtime = RuntimeDir.create(os.path.join(os.environ["XDG_RUNTIME_DIR"], "xsupervise"))
    files = SessionFiles(runtime, "bench-by-hand", "api")
    r, w = os.pipe()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        plan = plan_launch(settings, None, w, files)
        env = {**os.environ, **plan.env}
        t0 = time.perf_counter()
        if plan.companion is not None:  # weston, as launch.compositor.Weston runs it
            weston = plan.companion
            assert isinstance(weston, Weston)
            socket_path = os.path.join(weston.runtime, "wayland-0")
            os.makedirs(weston.runtime, mode=0o700, exist_ok=True)
            weston_env = {**os.environ, "XDG_RUNTIME_DIR": weston.runtime}
            weston_env.pop("WAYLAND_DISPLAY", None)
            procs.append(
                subprocess.Popen(
                    weston.argv(),
                    env=weston_env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            while not os.path.exists(socket_path):
                time.sleep(0.001)
        procs.append(
            subprocess.Popen(
                plan.argv,
                env=env,
                pass_fds=(w,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        os.close(w)
        w = -1
        line = b""
        while not line.endswith(b"\n"):
            if not select.select([r], [], [], 30)[0]:
                raise RuntimeError(f"{plan.argv[0]} wrote no display number in 30 s")
            chunk = os.read(r, 64)
            if not chunk:
                raise RuntimeError(f"{plan.argv[0]} closed -displayfd (exit {procs[-1].poll()})")
            line += chunk
        return time.perf_counter() - t0
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
        for proc in reversed(procs):  # the server, then its compositor
            _wait_exit(proc)
        files.remove()


def run(rounds: int) -> int:
    """Print the table; 0 if every start worked."""
    own_runtime = None
    if not os.environ.get("XDG_RUNTIME_DIR"):
        own_runtime = tempfile.mkdtemp(prefix="xs-")
        os.environ["XDG_RUNTIME_DIR"] = own_runtime
    variants = {label: s for label, s in VARIANTS.items() if installed(s)}
    host = None
    if "xephyr" in variants:
        host = xsupervise.Display(settings=Settings(server=("xvfb",)))
        os.environ.update(host.start().env)
    contenders: dict[tuple[str, str], Callable[[], float]] = {}
    for label, settings in variants.items():
        contenders[label, "xsupervise"] = lambda s=settings: with_xsupervise(s)
        contenders[label, "by hand"] = lambda s=settings: by_hand(s)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in contenders}
    errors: list[str] = []
    try:
        for round_no in range(rounds + 1):  # round 0 warms caches and is not recorded
            order = list(contenders)
            random.shuffle(order)
            for key in order:
                try:
                    elapsed = contenders[key]()
                except Exception as exc:  # noqa: BLE001 - record and carry on
                    errors.append(f"{key[0]} {key[1]}: {type(exc).__name__}: {exc}")
                    continue
                if round_no:
                    times[key].append(elapsed * 1000)
    finally:
        if host is not None:
            host.stop()
        if own_runtime:
            shutil.rmtree(own_runtime, ignore_errors=True)
    print(f"\nTime to ready per profile ({SCREEN}), median of {rounds} interleaved rounds, ms")
    print(f"({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f})\n")
    print("| profile | xsupervise | by hand (same argv) | × by hand | xsupervise min–max |")
    print("|---|--:|--:|--:|--:|")
    for label in variants:
        ours, hand = times[label, "xsupervise"], times[label, "by hand"]
        if not ours or not hand:
            print(f"| {label} | n/a | n/a | | |")
            continue
        mo, mh = statistics.median(ours), statistics.median(hand)
        print(
            f"| {label} | {mo:.1f} | {mh:.1f} | {mo / mh:.2f} | {min(ours):.1f}–{max(ours):.1f} |"
        )
    missing = [label for label in VARIANTS if label not in variants]
    if missing:
        print(f"\n- not installed, skipped: {', '.join(missing)}")
    for message in sorted(set(errors)):
        print(f"- FAILURE ({errors.count(message)}×): {message}")
    return 1 if errors else 0
