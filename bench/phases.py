#!/usr/bin/env python3
"""Where the time of `xsupervise run -- true` goes, phase by phase.

    .venv/bin/python bench/phases.py [--rounds N]

Each round runs the real CLI in a fresh interpreter, through a wrapper (this file with
``--wrap``) that notes CLOCK_MONOTONIC, shared by all processes, at the boundaries between
phases; the product itself carries no instrumentation. The wrapper's own cost (patching four
functions) is under 0.1 ms. Phases:

- interpreter: our exec to the wrapper's first line (Python's own start, site included);
- import and setup: to the X server's spawn (argument parsing, settings, files, boundary);
- spawn: the fork and exec of the server's boundary;
- server ready: until the server has written its number (what we do meanwhile is hidden);
- handshake: connect, check who serves, the X11 setup with our cookie;
- COMMAND: from ready to COMMAND reaped (its own spawn and run included);
- teardown: SIGTERM to the server, until our process has exited (files removed, all gone).
"""

from __future__ import annotations

import sys
import time

STARTED = time.monotonic()  # first: in the measured process, the end of "interpreter"


def wrap(marks_path: str, argv: list[str]) -> None:
    """In the measured process: note the phase boundaries, then run the CLI as its script.
    Imports nothing the CLI does not (json: its session records)."""
    import json

    marks = {"start": STARTED}
    from xsupervise.launch import launcher, process

    def spawning(function):  # type: ignore[no-untyped-def]
        def spawn(argv, *args, **kwargs):  # type: ignore[no-untyped-def]
            first = "spawn" not in marks and any("Xvfb" in str(a) for a in argv)
            if first:
                marks["spawn"] = time.monotonic()
            result = function(argv, *args, **kwargs)
            if first:
                marks["spawned"] = time.monotonic()
            return result

        return spawn

    def noted(function, before: str, after: str):  # type: ignore[no-untyped-def]
        def steps(*args, **kwargs):  # type: ignore[no-untyped-def]
            marks.setdefault(before, time.monotonic())
            result = yield from function(*args, **kwargs)
            marks.setdefault(after, time.monotonic())
            return result

        return steps

    def term_steps(*args, **kwargs):  # type: ignore[no-untyped-def]
        if "term" not in marks:
            marks["term"] = time.monotonic()
            with open(marks_path, "w") as stream:
                json.dump(marks, stream)
        return (yield from original_term(*args, **kwargs))

    original_term = process.term_steps
    process._spawn_direct = spawning(process._spawn_direct)
    process._popen = spawning(process._popen)
    launcher.read_display_number = noted(launcher.read_display_number, "wait", "ready")
    launcher.verify = noted(launcher.verify, "verify", "verified")
    process.term_steps = term_steps
    from xsupervise.cli.main import console

    sys.argv = ["xsupervise", *argv]
    sys.exit(console())


if __name__ == "__main__" and sys.argv[1:2] == ["--wrap"]:
    wrap(sys.argv[2], sys.argv[3:])

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import select  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

PHASES = ("interpreter", "import and setup", "spawn", "server ready", "handshake", "COMMAND")
PHASES += ("teardown",)


def one_round() -> dict[str, float]:
    with tempfile.NamedTemporaryFile(suffix=".json") as marks_file:
        argv = [sys.executable, __file__, "--wrap", marks_file.name, "run", "--", "true"]
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        with os.fdopen(os.pidfd_open(proc.pid)) as pidfd:
            select.select([pidfd], [], [], 60)
        end = time.monotonic()
        if proc.wait() != 0:
            raise SystemExit(f"xsupervise run -- true failed: exit {proc.returncode}")
        text = Path(marks_file.name).read_text()
        if not text:
            raise SystemExit("xsupervise run -- true never stopped its server: no phases")
        m = json.loads(text)
    points = [t0, m["start"], m["spawn"], m["spawned"], m["ready"], m["verified"], m["term"], end]
    return {
        name: (b - a) * 1000 for name, a, b in zip(PHASES, points[:-1], points[1:], strict=True)
    }


def table(rounds: int) -> str:
    one_round()  # warm caches
    results = [one_round() for _ in range(rounds)]
    lines = ["| phase of `run -- true` | median ms |", "|---|--:|"]
    for name in PHASES:
        lines.append(f"| {name} | {statistics.median(r[name] for r in results):.1f} |")
    total = statistics.median(sum(r.values()) for r in results)
    lines.append(f"| whole process | {total:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    print(table(parser.parse_args().rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
