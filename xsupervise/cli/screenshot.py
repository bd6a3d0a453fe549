"""``xsupervise screenshot [:N|NAME] [-o FILE.png] [--window ID]``: a PNG of a display.

The display is found as ``check`` finds it (a session of ours by number or name, else
DISPLAY/XAUTHORITY, else the only session running) and captured over a connection
authenticated with its cookie (``media.screenshot.capture``).
"""

from __future__ import annotations

import argparse
import sys

from ..host.errors import ExitCode

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _window_id(value: str) -> int:
    try:
        return int(value, 0)  # xwininfo and xdotool print hex (0x...) or decimal ids
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a window id (e.g. 0x400001)") from None


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "screenshot",
        help="save a PNG of a display (or of one window on it)",
        description="Save a PNG of a display of ours, or of one window on it, taken over a "
        "connection authenticated with the display's cookie.",
        epilog="exit codes: 0 saved; 1 not taken (no such window, display not answering, "
        "cookie refused, file not writable); 2 usage; 6 no such session",
    )
    parser.add_argument(
        "target",
        nargs="?",
        metavar=":N|NAME",
        help="a display or session name of ours (default: $DISPLAY with $XAUTHORITY, else "
        "the only session running)",
    )
    parser.add_argument(
        "-o",
        "--output",
        default="screenshot.png",
        metavar="FILE.png",
        help="where to write the PNG (default: screenshot.png)",
    )
    parser.add_argument(
        "--window", type=_window_id, metavar="ID", help="capture only this window (its id)"
    )


def run(args: argparse.Namespace) -> int:
    from ..launch.check import Refusal, resolve
    from ..media.screenshot import capture

    try:
        number, xauthority = resolve(args.target, None)
    except Refusal as refusal:
        print(f"xsupervise: {refusal}", file=sys.stderr, flush=True)
        return refusal.code
    width, height = capture(f":{number}", xauthority or "", args.output, args.window)
    print(f"{args.output}: {width}x{height} PNG of :{number}", flush=True)
    return ExitCode.OK
