"""``xsupervise check [:N|NAME] [--timeout S]``: is this display serving, right now?

A probe for Kubernetes (startupProbe, livenessProbe) and Docker (HEALTHCHECK): exit 0 when
the display completes an authenticated X11 connection setup within the timeout, non-zero
with one line on stderr otherwise. A socket that accepts but never answers (a stopped or
wedged server) fails: the kernel queues the connection without the server, so only the
server's own reply counts.

Exit codes: 0 the display answered; 1 it did not (no socket, refused, too slow, not X11);
2 usage (a display we cannot reach locally, a bad --timeout); 5 the runtime directory or
cookie cannot be read; 6 no session of ours has that display or name.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import time
from collections.abc import Mapping
from typing import Any

from ..host.errors import ExitCode, XSuperviseError
from ..host.paths import RuntimeDir, socket_path
from ..host.processes import run_blocking
from .x11 import (
    cookie_in,
    display_number,
    parse_setup_reply,
    refusal_reason,
    setup_reply_steps,
    setup_request,
)


class Refusal(Exception):
    """Internal: one line and an exit code."""

    def __init__(self, code: int, line: str):
        self.code = code
        super().__init__(line)


def parse_display(value: str) -> int:
    """The number of a local display: ':N', ':N.S' or 'unix:N'. A TCP display is refused:
    probes run beside the server, and a remote answer would prove nothing about it."""
    try:
        return display_number(value)
    except ValueError:
        raise Refusal(
            ExitCode.USAGE,
            f"cannot check display {value!r}: give a local display ':N' (or a session name).",
        ) from None


def read_cookie(path: str, number: int) -> bytes | None:
    """The MIT-MAGIC-COOKIE-1 for display ``number`` in an Xauthority file (None: none)."""
    try:
        with open(path, "rb") as stream:
            return cookie_in(stream.read(), number)
    except OSError as exc:
        raise Refusal(
            ExitCode.ENVIRONMENT, f"cannot read the cookie file {path} ({exc.strerror})."
        ) from None
    except ValueError:
        raise Refusal(
            ExitCode.ENVIRONMENT, f"the cookie file {path} is not an Xauthority file."
        ) from None


def _records(runtime: RuntimeDir | None) -> list[dict[str, Any]]:
    from .server import live_records

    try:
        return [record.as_dict() for record in live_records(runtime or RuntimeDir.discover())]
    except XSuperviseError as error:
        raise Refusal(error.exit_code, str(error)) from None


def resolve(
    target: str | None, runtime: RuntimeDir | None, environ: Mapping[str, str] = os.environ
) -> tuple[int, str | None]:
    """(display number, Xauthority path or None) for ``target``: ':N' or a session name from
    the records in ``runtime``; with no target, DISPLAY/XAUTHORITY, else the only session."""
    if target is None and environ.get("DISPLAY"):
        return parse_display(environ["DISPLAY"]), environ.get("XAUTHORITY")
    records = _records(runtime)
    if target is None:
        if len(records) != 1:
            raise Refusal(
                ExitCode.USAGE,
                f"{len(records)} sessions run here and DISPLAY is not "
                "set: give the display (:N) or session name to check.",
            )
        chosen = records[0]
    elif target.startswith((":", "unix:")):
        number = parse_display(target)
        mine = [record for record in records if record["display"] == f":{number}"]
        if not mine:
            if environ.get("XAUTHORITY"):  # a display of someone else's, with the given cookie
                return number, environ["XAUTHORITY"]
            raise Refusal(
                ExitCode.NO_SUCH_SESSION,
                f"display :{number}: no session of ours runs it and XAUTHORITY is not set.",
            )
        chosen = mine[0]
    else:
        named = [record for record in records if record["name"] == target]
        if not named:
            raise Refusal(
                ExitCode.NO_SUCH_SESSION,
                f"no session named {target!r} runs here; 'xsupervise list' shows what runs.",
            )
        chosen = named[0]
    if not chosen["display"]:
        raise Refusal(
            ExitCode.FAILURE,
            f"session {chosen['name']} has no display now (state {chosen['state']}).",
        )
    return int(chosen["display"][1:]), chosen["xauthority"]


def _connect(sock: socket.socket, path: str) -> None:
    """The server's abstract socket first, as libxcb does: a /tmp cleaner may have deleted the
    file (and someone else may have bound its name since); then the file."""
    try:
        sock.connect("\0" + path)
    except OSError:
        sock.connect(path)


def _refuse_a_stranger(sock: socket.socket, name: str, cookie: bytes | None) -> None:
    """Our cookie goes only to a server of our own uid (or root's): to anyone else listening
    there it would give our display away."""
    from .process import peer_credentials

    pid, uid, _ = peer_credentials(sock)
    if cookie is not None and uid not in (os.getuid(), 0):
        raise Refusal(
            ExitCode.FAILURE,
            f"display {name} is served by pid {pid} of uid {uid}, not by us or root: "
            "refusing to send it our cookie; is the display number right?",
        )


def handshake(number: int, cookie: bytes | None, deadline: float) -> str:
    """Connect to display ``number`` and complete an X11 connection setup by ``deadline``
    (time.monotonic()); what the server said, as a short description."""
    path = socket_path(number)
    name = f":{number}"

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Refusal(
                ExitCode.FAILURE,
                f"display {name} did not answer our X11 connection "
                "in time (stopped or overloaded?).",
            )
        return left

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.settimeout(remaining())
            _connect(sock, path)
            _refuse_a_stranger(sock, name, cookie)
            request = (
                setup_request(cookie)
                if cookie is not None
                else struct.pack("<BxHHHHxx", ord("l"), 11, 0, 0, 0)
            )
            sock.setblocking(False)
            reply = run_blocking(setup_reply_steps(sock, request, deadline))
            assert reply is not None  # (None: a watched fd; none is)
        except EOFError:
            raise Refusal(
                ExitCode.FAILURE, f"display {name} closed our X11 connection without a reply."
            ) from None
        except TimeoutError:
            raise Refusal(
                ExitCode.FAILURE,
                f"display {name} did not answer our X11 connection "
                "in time (stopped or overloaded?).",
            ) from None
        except OSError as exc:
            raise Refusal(
                ExitCode.FAILURE,
                f"display {name}: nothing answers on {path} ({exc.strerror or exc}).",
            ) from None
    reason = refusal_reason(reply)
    if reason is not None:
        raise Refusal(ExitCode.FAILURE, f"display {name} refused our X11 connection: {reason}.")
    try:
        vendor, _, width, height, depth = parse_setup_reply(reply)
    except (struct.error, IndexError) as exc:
        raise Refusal(
            ExitCode.FAILURE,
            f"display {name} answered something that is not an X11 setup reply ({exc}).",
        ) from None
    return f"{vendor} {width}x{height}x{depth}"


def check(target: str | None, timeout: float, runtime: RuntimeDir | None) -> tuple[int, str]:
    """(exit code, one line): does ``target`` answer an authenticated X11 handshake within
    ``timeout`` seconds? ``runtime``: where the session records are (None: discover it)."""
    started = time.monotonic()
    deadline = started + timeout
    try:
        number, auth_path = resolve(target, runtime)
        cookie = read_cookie(auth_path, number) if auth_path else None
        facts = handshake(number, cookie, deadline)
    except Refusal as refusal:
        return refusal.code, str(refusal)
    elapsed = (time.monotonic() - started) * 1000
    return ExitCode.OK, f"display :{number} answers ({facts}) in {elapsed:.0f} ms."


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < 3600:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds (0 < S < 3600)")
    return seconds


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``check`` to the CLI's subcommands (``argparse`` subparsers action)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "check",
        help="exit 0 if a display answers an authenticated X11 handshake (a probe)",
        description="Connect to the display and complete an X11 connection setup with its "
        "cookie: exit 0 if it answers within --timeout, otherwise one line on "
        "stderr and a non-zero exit. For Kubernetes startup/liveness probes and "
        "Docker HEALTHCHECK.",
        epilog="exit codes: 0 it answered; 1 it did not (no socket, refused, too slow); 2 "
        "usage; 5 runtime directory or cookie unreadable; 6 no such session",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "target",
        nargs="?",
        metavar=":N|NAME",
        help="a display or session name of ours (default: $DISPLAY with "
        "$XAUTHORITY, else the only session running)",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=2.0,
        metavar="SECONDS",
        help="how long the whole check may take (default: 2)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    code, line = check(args.target, args.timeout, None)
    if code == ExitCode.OK:
        print(line, flush=True)
    else:
        print(f"xsupervise: {line}", file=sys.stderr, flush=True)
    return code
