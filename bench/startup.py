#!/usr/bin/env python3
"""Time to a ready display: xsupervise against raw Xvfb, PyVirtualDisplay, xvfbwrapper, xvfb-run.

    .venv/bin/python bench/startup.py [--rounds N]
    .venv/bin/python bench/startup.py --profiles [--rounds N]   (per server profile: profiles.py)

It ends with the phases of `run -- true` (bench/phases.py) and the teardown of an idle session.

xsupervise.Display and `xsupervise run -- true` also run under each containment mechanism
this machine offers (XSUPERVISE_CONTAINMENT=group, pidns, cgroup), side by side: the
containment table compares each with "group", the process group of before containment.

Each round runs every contender once, in a fresh random order, so that the noise of a busy
machine falls on all of them alike instead of on whichever happened to run during a burst.
In-process contenders time start() only (teardown is untimed); the whole-process ones time the
complete command, teardown included, on both sides of their comparison.

Everything started here must be gone afterwards: we make ourselves a child subreaper, so any
Xvfb orphaned by a contender is re-parented to us and found among our descendants, killed by
pid and reported as a failure (exit status 1). X socket/lock files a contender leaves behind
are removed after it and reported (a failure for xsupervise, a note for the others).
"""

from __future__ import annotations

import argparse
import compileall
import ctypes
import os
import random
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
XSUPERVISE = str(REPO / ".venv" / "bin" / "xsupervise")
PR_SET_CHILD_SUBREAPER = 36
LEAK_GRACE = 2.0  # s a dying Xvfb may take to go (xvfb-run sends TERM and does not wait)


def raw_xvfb() -> float:
    """The floor: Xvfb itself, ready when it writes its number to -displayfd."""
    r, w = os.pipe()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [
            "Xvfb",
            "-displayfd",
            str(w),
            "-nolisten",
            "tcp",
            "-noreset",
            "-screen",
            "0",
            "1280x1024x24",
        ],
        pass_fds=(w,),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(w)  # so that read() sees EOF if Xvfb dies instead of blocking forever
    try:
        line = b""
        while not line.endswith(b"\n"):
            chunk = os.read(r, 64)
            if not chunk:
                raise RuntimeError(f"Xvfb closed -displayfd after {line!r} (exit {proc.poll()})")
            line += chunk
        return time.perf_counter() - t0
    finally:
        os.close(r)
        proc.terminate()
        proc.wait(10)


def xsupervise_display() -> float:
    import xsupervise

    d = xsupervise.Display(":auto")
    t0 = time.perf_counter()
    try:
        d.start()  # returns after -displayfd *and* an X11 handshake with our cookie
        return time.perf_counter() - t0
    finally:
        d.stop()


def xsupervise_teardown() -> float:
    """An idle session's teardown: stop() asked -> every process gone, every file removed
    (stop() returns only then). Start-up is untimed."""
    import xsupervise

    d = xsupervise.Display(":auto")
    d.start()
    t0 = time.perf_counter()
    d.stop()
    return time.perf_counter() - t0


def pyvirtualdisplay() -> float:
    from pyvirtualdisplay import Display

    d = Display(backend="xvfb", size=(1280, 1024))  # runs `Xvfb -help` once: untimed
    t0 = time.perf_counter()
    try:
        d.start()
        return time.perf_counter() - t0
    finally:
        d.stop()  # also after a failed start: it kills the Xvfb it spawned


def xvfbwrapper() -> float:
    from xvfbwrapper import Xvfb

    x = Xvfb(width=1280, height=1024)
    t0 = time.perf_counter()
    try:
        x.start()
        return time.perf_counter() - t0
    finally:
        x.stop()


def whole_process(*argv: str):
    def contender() -> float:
        # stderr to a file, not a pipe: a leaked Xvfb holding a pipe would hang us.
        with tempfile.TemporaryFile() as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )
            # Wait on a pidfd: subprocess's own wait(timeout) polls with sleeps growing to
            # 50 ms, which rounds every whole-process time up to 63.5, 113.5, 163.5 ms...
            with os.fdopen(os.pidfd_open(proc.pid)) as pidfd:
                if not select.select([pidfd], [], [], 60)[0]:
                    proc.kill()
            proc.wait()
            elapsed = time.perf_counter() - t0
            err.seek(0)
            text = err.read().decode(errors="replace").strip()
        if proc.returncode or text:  # both are silent on success: anything said is a problem
            raise RuntimeError(f"exit {proc.returncode}: {text[-300:]}")
        return elapsed

    return contender


# The least any Python tool can do for `run -- true` while waiting for the teardown: start
# the interpreter, fork+exec Xvfb (bare os calls: not even subprocess is imported), read its
# number, fork+exec the command, SIGTERM Xvfb and wait for it. No cookie, no verification,
# no error handling. Its ratio to xvfb-run (a shell script) is what the interpreter and the
# wait for Xvfb's exit cost before xsupervise does anything at all.
PYTHON_FLOOR = """
import os, signal
r, w = os.pipe()
os.set_inheritable(w, True)
xvfb = os.fork()
if xvfb == 0:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    os.execvp("Xvfb", ["Xvfb", "-displayfd", str(w), "-nolisten", "tcp", "-noreset",
                       "-screen", "0", "1280x1024x24"])
os.close(w)
os.read(r, 16)
command = os.fork()
if command == 0:
    os.execvp("true", ["true"])
os.waitpid(command, 0)
os.kill(xvfb, signal.SIGTERM)
os.waitpid(xvfb, 0)
"""

# name -> (function, what "ready" means for it)
CONTENDERS = {
    "raw Xvfb -displayfd": (raw_xvfb, "number on -displayfd"),
    "xsupervise.Display": (xsupervise_display, "-displayfd + X11 handshake"),
    "PyVirtualDisplay": (pyvirtualdisplay, "number on -displayfd"),
    "xvfbwrapper": (xvfbwrapper, "socket file exists"),
    "xsupervise run -- true": (whole_process(XSUPERVISE, "run", "--", "true"), "whole process"),
    "xsupervise.Display stop()": (xsupervise_teardown, "idle session stopped: all gone"),
    "xvfb-run -a true": (whole_process("xvfb-run", "-a", "true"), "whole process"),
    "python floor (run -- true)": (
        whole_process(sys.executable, "-c", PYTHON_FLOOR),
        "whole process, bare os calls, no checks",
    ),
}
BASE, RUN, XVFB_RUN = "raw Xvfb -displayfd", "xsupervise run -- true", "xvfb-run -a true"
FLOOR = "python floor (run -- true)"
DISPLAY = "xsupervise.Display"
TEARDOWN = "xsupervise.Display stop()"
# Issue 22's targets, same-run ratios of medians.
TARGETS = {"pidns": 1.03, "cgroup": 1.08, "display": 1.08, "run": 1.5, "teardown ms": 10.0}


def contained(kind: str, contender):
    """``contender`` with XSUPERVISE_CONTAINMENT=kind (in-process and in the CLI it starts)."""

    def run() -> float:
        before = os.environ.get("XSUPERVISE_CONTAINMENT")
        os.environ["XSUPERVISE_CONTAINMENT"] = kind
        try:
            return contender()
        finally:
            if before is None:
                del os.environ["XSUPERVISE_CONTAINMENT"]
            else:
                os.environ["XSUPERVISE_CONTAINMENT"] = before

    return run


def mechanisms() -> list[str]:
    """The containment mechanisms this machine offers; "group" (a process group and session,
    what xsupervise did before containment) is the baseline the others are measured against."""
    from xsupervise.launch import containment as _cgroup
    from xsupervise.launch import containment as _containment

    kinds = ["group"]
    if _containment._can_unshare_directly() or _containment._namespace_prefix() is not None:
        kinds.append("pidns")
    if _cgroup.cgroup_base() is not None:
        kinds.append("cgroup")
    return kinds


KINDS = mechanisms()
for _kind in KINDS:  # the containment column: both xsupervise contenders under each mechanism
    for _name in (DISPLAY, RUN):
        _function, _ready = CONTENDERS[_name]
        CONTENDERS[f"{_name} [{_kind}]"] = (contained(_kind, _function), _ready)


def stray_xvfbs() -> list[psutil.Process]:
    """Our live Xvfb descendants, after reaping the orphans that have already exited."""
    while True:  # only orphans are unreaped here: every contender waits for its own children
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.name() == "Xvfb" and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def kill_strays(who: str, leaks: list[str]) -> None:
    deadline = time.monotonic() + LEAK_GRACE
    while (strays := stray_xvfbs()) and time.monotonic() < deadline:
        time.sleep(0.01)
    for p in strays:
        leaks.append(f"{who}: Xvfb pid {p.pid} still running after teardown; killed")
        try:
            p.kill()
            p.wait(5)
        except psutil.NoSuchProcess:
            pass
    stray_xvfbs()  # reap what we just killed


def x11_files() -> dict[str, str]:
    """/tmp/.X11-unix/X<n> and /tmp/.X<n>-lock files -> "X<n>"."""
    files = {str(p): p.name for p in Path("/tmp/.X11-unix").glob("X*")}
    return files | {str(p): p.name[1:-5] for p in Path("/tmp").glob(".X*-lock")}


def remove_stale_x11_files(before: dict[str, str]) -> list[str]:
    """Remove X files that appeared since ``before`` and belong to no live server; list them.

    A live X server on Linux binds the abstract socket @/tmp/.X11-unix/X<n>, which the kernel
    drops when it dies: a file whose display has none is a leftover (e.g. of a SIGKILLed server).
    """
    with open("/proc/net/unix") as table:
        live = {line.rsplit(None, 1)[-1].removeprefix("@/tmp/.X11-unix/") for line in table}
    stale = [
        path for path, display in x11_files().items() if path not in before and display not in live
    ]
    for path in stale:
        Path(path).unlink(missing_ok=True)
    return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--profiles",
        action="store_true",
        help="time each server profile (and xvfb with glx = false) against the same server "
        "started by hand with the same flags",
    )
    args = parser.parse_args()
    if args.profiles:
        sys.path.insert(0, str(Path(__file__).parent))
        from profiles import run as run_profiles

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        return run_profiles(args.rounds)

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    # A pip-installed package has its bytecode compiled at install time; an editable checkout
    # with PYTHONDONTWRITEBYTECODE set (as here) would recompile every module on every run.
    compileall.compile_dir(str(REPO / "xsupervise"), quiet=1)
    own_runtime = None
    if not os.environ.get("XDG_RUNTIME_DIR"):  # else xsupervise warns and uses a fallback dir
        own_runtime = tempfile.mkdtemp(prefix="xsupervise-bench-")  # mode 0700
        os.environ["XDG_RUNTIME_DIR"] = own_runtime
    sessions = Path(os.environ["XDG_RUNTIME_DIR"], "xsupervise", "sessions")
    files_before = set(sessions.glob("*")) if sessions.exists() else set()

    times: dict[str, list[float | None]] = {name: [] for name in CONTENDERS}
    errors: dict[str, list[str]] = {name: [] for name in CONTENDERS}
    left_x11: dict[str, list[str]] = {name: [] for name in CONTENDERS}
    leaks: list[str] = []
    try:
        for round_no in range(args.rounds + 1):  # round 0 warms caches and is not recorded
            order = list(CONTENDERS)
            random.shuffle(order)
            for name in order:
                x11_before = x11_files()
                try:
                    elapsed = CONTENDERS[name][0]()
                except Exception as exc:  # noqa: BLE001 - record and carry on
                    elapsed = None
                    errors[name].append(f"{type(exc).__name__}: {exc}")
                kill_strays(name, leaks)
                left_x11[name] += remove_stale_x11_files(x11_before)
                if round_no:
                    times[name].append(elapsed)
        sys.path.insert(0, str(Path(__file__).parent))
        from phases import table as phase_table  # the same job, phase by phase (phases.py)

        phases = phase_table(args.rounds)
        kill_strays("phases", leaks)
    finally:
        kill_strays("end of run", leaks)
        files_after = set(sessions.glob("*")) if sessions.exists() else set()
        left_files = sorted(map(str, files_after - files_before))
        if own_runtime:
            shutil.rmtree(own_runtime, ignore_errors=True)

    def ms(name: str) -> list[float]:
        return [t * 1000 for t in times[name] if t is not None]

    def median(name: str) -> float | None:
        return statistics.median(ms(name)) if ms(name) else None

    def paired(a: str, b: str) -> float | None:
        """Median of per-round ratios: each pair shares a round's machine conditions."""
        pairs = [x / y for x, y in zip(times[a], times[b], strict=True) if x and y]
        return statistics.median(pairs) if pairs else None

    def fmt(x: float | None, spec: str = ".2f") -> str:
        return "n/a" if x is None else format(x, spec)

    print(
        f"\nTime to a ready display, {args.rounds} interleaved rounds "
        f"({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f})\n"
    )
    print("| contender | ready means | median ms | min–max ms | × raw | × xvfb-run | errors |")
    print("|---|---|--:|--:|--:|--:|--:|")
    base, xrun = median(BASE), median(XVFB_RUN)
    for name, (_, ready) in CONTENDERS.items():
        m, values = median(name), ms(name)
        span = f"{min(values):.1f}–{max(values):.1f}" if values else "n/a"
        vs_raw = fmt(m / base) if m and base and name != TEARDOWN else ""
        vs_xrun = fmt(m / xrun) if m and xrun and name in (RUN, XVFB_RUN, FLOOR) else ""
        print(
            f"| {name} | {ready} | {fmt(m, '.1f')} | {span} | {vs_raw} | {vs_xrun} | "
            f"{len(errors[name])} |"
        )

    print("\n| containment | Display median ms | × group | `run -- true` median ms | × group |")
    print("|---|--:|--:|--:|--:|")
    for kind in KINDS:
        d, r = median(f"{DISPLAY} [{kind}]"), median(f"{RUN} [{kind}]")
        d0, r0 = median(f"{DISPLAY} [group]"), median(f"{RUN} [group]")
        print(
            f"| {kind} | {fmt(d, '.1f')} | {fmt(d / d0 if d and d0 else None, '.3f')} | "
            f"{fmt(r, '.1f')} | {fmt(r / r0 if r and r0 else None, '.3f')} |"
        )

    ok = True
    print()
    for kind in KINDS[1:]:
        a, b = f"{DISPLAY} [{kind}]", f"{DISPLAY} [group]"
        ma, mb = median(a), median(b)
        ratio = ma / mb if ma and mb else None
        target = TARGETS[kind]
        verdict = "n/a" if ratio is None else ("met" if ratio <= target else "NOT met")
        print(
            f"- containment {kind} / group, time to ready: {fmt(ratio, '.3f')} (median of "
            f"per-round ratios {fmt(paired(a, b), '.3f')}); target ≤ {target}: **{verdict}**"
        )
    for label, a, b, target in (
        ("xsupervise.Display / raw Xvfb", "xsupervise.Display", BASE, TARGETS["display"]),
        ("xsupervise run / xvfb-run", RUN, XVFB_RUN, TARGETS["run"]),
        ("python floor / xvfb-run", FLOOR, XVFB_RUN, None),
    ):
        ma, mb = median(a), median(b)
        ratio = ma / mb if ma and mb else None
        if target is None:
            print(f"- {label}: {fmt(ratio)} (median of per-round ratios {fmt(paired(a, b))})")
            continue
        verdict = "n/a" if ratio is None else ("met" if ratio <= target else "NOT met")
        print(
            f"- {label}: {fmt(ratio)} (median of per-round ratios {fmt(paired(a, b))}); "
            f"target ≤ {target}: **{verdict}**"
        )
    p50 = median(TEARDOWN)
    verdict = "n/a" if p50 is None else ("met" if p50 <= TARGETS["teardown ms"] else "NOT met")
    print(
        f"- teardown of an idle Xvfb session (stop asked -> all gone, files removed): p50 "
        f"{fmt(p50, '.1f')} ms; target ≤ {TARGETS['teardown ms']:g} ms: **{verdict}**"
    )
    for name, messages in errors.items():
        for message in sorted(set(messages)):
            ok = False
            print(f"- FAILURE {name} ({messages.count(message)}×): {message}")
    for leak in leaks:
        ok = False
        print(f"- FAILURE leak: {leak}")
    for path in left_files:
        ok = False
        print(f"- FAILURE file left in the runtime directory: {path}")
    for name, paths in left_x11.items():  # xsupervise promises to leave none; others do not
        if paths:
            ok = ok and not name.startswith("xsupervise")
            kind = "FAILURE" if name.startswith("xsupervise") else "note"
            print(
                f"- {kind} {name} left {len(paths)} stale X file(s) (removed): "
                + ", ".join(f"{path} ×{paths.count(path)}" for path in sorted(set(paths)))
            )
    if ok:
        print("- no errors; no Xvfb left running; xsupervise left no files behind")
    print(f"\n{phases}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
