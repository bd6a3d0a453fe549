"""``xsupervise record :N|NAME -o PATH [--duration S]``: a video of a running display of ours.

The display is found as ``screenshot`` finds it (a session of ours by number or name, else
DISPLAY/XAUTHORITY, else the only session running). The recorder (launch/recording.py) runs in a
boundary of its own until SIGINT/SIGTERM/SIGHUP or ``--duration``; then the file is
finished. If this command is SIGKILLed, the recorder goes with it and the file stays
playable. A recorder that fails: its one line, exit 1.
"""

from __future__ import annotations

import argparse
import sys
import time

from ..host.errors import ExitCode

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 86400:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds above 0")
    return seconds


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "record",
        help="record a video of a display until stopped (or for --duration)",
        description="Record a video (a fragmented MP4, H.264) of a display of ours until "
        "SIGINT/SIGTERM, or for --duration seconds. A frame is taken only when the screen "
        "changed (at most --fps a second); needs ffmpeg.",
        epilog="exit codes: 0 recorded; 1 the recorder failed (its reason is printed); "
        "2 usage (e.g. a path that cannot be written); 5 ffmpeg is missing; 6 no such session",
    )
    parser.add_argument(
        "target",
        nargs="?",
        metavar=":N|NAME",
        help="a display or session name of ours (default: $DISPLAY with $XAUTHORITY, else "
        "the only session running)",
    )
    parser.add_argument(
        "-o", "--output", required=True, metavar="PATH", help="the video file to write (.mp4)"
    )
    parser.add_argument(
        "--duration", type=_seconds, metavar="S", help="stop after S seconds (default: on a signal)"
    )
    parser.add_argument(
        "--fps",
        type=float,
        default=None,
        metavar="N",
        help="the highest frame rate (XSUPERVISE_RECORD_FPS; default: 15)",
    )


def record(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..host.paths import new_token
    from ..host.processes import SignalInbox, Wait, poll_ready, run_blocking
    from ..launch.check import Refusal, resolve
    from ..launch.recording import READY_WAIT, start_recording
    from ..launch.settings import load_settings

    settings = load_settings({"record_fps": args.fps})
    try:
        number, xauthority = resolve(args.target, None)
    except Refusal as refusal:
        print(f"xsupervise: {refusal}", file=sys.stderr, flush=True)
        return refusal.code
    with SignalInbox() as inbox:
        started = time.monotonic()
        recording = start_recording(
            number, xauthority or "", args.output, settings.record_fps, f"{new_token()}-rec"
        )
        # --duration counts from the first frame, not from ffmpeg's start-up.
        if run_blocking(recording.ready_steps(READY_WAIT)):
            started = time.monotonic()
        deadline = started + args.duration if args.duration else None
        ended = False
        while not inbox.drain():
            ready = poll_ready(Wait((inbox.read_fd, recording.pidfd), deadline))
            if recording.pidfd in ready:
                ended = True
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
        status = run_blocking(recording.finish_steps(settings.kill_grace))
    if ended or status != 0:
        print(f"xsupervise: {recording.death_line(status)}", file=sys.stderr, flush=True)
        return ExitCode.FAILURE
    print(f"{args.output}: {time.monotonic() - started:.1f} s of :{number}", flush=True)
    return ExitCode.OK
