"""The ``xsupervise`` command line's parsers: one builder per subcommand (see cli.main.SUBCOMMANDS).

Only the named subcommand's parser is built on a run: building them costs milliseconds.
"""

from __future__ import annotations

import argparse

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs the CLI time
if TYPE_CHECKING:
    from typing import TypeAlias

    Subparsers: TypeAlias = "argparse._SubParsersAction[Parser]"


class Parser(argparse.ArgumentParser):
    """argparse's parser, with the help's width read without importing shutil. argparse
    imports it for get_terminal_size(), and shutil imports its compression modules: 2 ms on
    every `xsupervise run`, before its X server is even spawned. Subparsers are Parsers too."""

    def _get_formatter(self) -> argparse.HelpFormatter:
        width = terminal_columns() - 2  # every HelpFormatter takes it; typeshed omits it
        return self.formatter_class(prog=self.prog, width=width)  # type: ignore[call-arg]


def terminal_columns() -> int:
    """As shutil.get_terminal_size(): $COLUMNS, else stdout's terminal, else 80."""
    import os
    import sys

    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


EXIT_CODES = """\
exit codes:
  0    success (start: stopped by SIGTERM/SIGINT)
  2    usage error: a flag, XSUPERVISE_* variable or config value is invalid
  3    the X server did not start: it exited, wrote no display number, or did not answer
  4    the X server wrote no display number before the deadline (--timeout)
  5    environment problem: X server (or ffmpeg, to record) missing, runtime directory unusable
  6    no session of ours on that display
  7    the session is FAILED: too many failed starts (see 'status', 'reset')
  126  COMMAND is not executable; 127: COMMAND not found
  with COMMAND, otherwise: COMMAND's exit status, or 128+N if signal N killed it
"""


def add_server_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--server",
        metavar="NAME|CMD",
        help="a server profile: xvfb, xephyr, xvnc, xorg-dummy, xwayland (see 'xsupervise "
        "servers'), or a raw X server command, which gets only -displayfd, -auth and "
        "-nolisten tcp (XSUPERVISE_SERVER; default: xvfb)",
    )
    group.add_argument(
        "--screen",
        metavar="WxHxD",
        help="screen geometry, for a profile (XSUPERVISE_SCREEN; default: 1280x1024x24)",
    )
    group.add_argument(
        "--glx",
        metavar="on|off",
        help="the GLX extension, for OpenGL clients; off starts faster "
        "(XSUPERVISE_GLX; default: on)",
    )
    group.add_argument(
        "--vnc-listen",
        metavar="ADDR[:PORT]",
        help="xvnc: also serve VNC on this TCP address, unauthenticated "
        "(XSUPERVISE_VNC_LISTEN; default: only a private unix socket)",
    )


def _add_display_options(parser: argparse.ArgumentParser, with_name: bool = True) -> None:
    group = parser.add_argument_group(
        "display options (flag > XSUPERVISE_* variable > config file)"
    )
    add_server_options(group)  # --server, --screen, --glx, --vnc-listen
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        dest="displayfd_timeout",
        help="deadline for the server to write its display number and answer "
        "(XSUPERVISE_DISPLAYFD_TIMEOUT; default: 10)",
    )
    group.add_argument(
        "--kill-grace",
        metavar="SECONDS",
        help="time between SIGTERM and SIGKILL when stopping the server, "
        "and COMMAND after a SIGTERM/SIGHUP we passed on to it "
        "(XSUPERVISE_KILL_GRACE; default: 2)",
    )
    group.add_argument(
        "--wm",
        metavar="CMD",
        help="a window manager to run on the display once it is ready, e.g. openbox "
        "(XSUPERVISE_WM; default: none)",
    )
    group.add_argument(
        "--record",
        metavar="PATH",
        help="record a video of the display to PATH (a fragmented MP4, playable even if we "
        "are killed), from ready until it stops; needs ffmpeg (XSUPERVISE_RECORD; default: none)",
    )
    group.add_argument(
        "--record-fps",
        metavar="N",
        help="the recording's highest frame rate: a frame is taken only when the screen "
        "changed (XSUPERVISE_RECORD_FPS; default: 15)",
    )
    restart = parser.add_argument_group(
        "restart policy (flag > XSUPERVISE_* variable > config file)",
        "After a failure the next start waits BACKOFF_INITIAL seconds, doubling up to "
        "BACKOFF_MAX (with jitter); a server up RESET_AFTER seconds resets the count. More "
        "than START_LIMIT_BURST failed starts within START_LIMIT_INTERVAL seconds make the "
        "session FAILED: no more starts until FAILED_COOLDOWN has passed (or 'reset').",
    )
    for flag, default in (
        ("backoff-initial", "1"),
        ("backoff-max", "60"),
        ("reset-after", "60"),
        ("start-limit-burst", "5"),
        ("start-limit-interval", "60"),
        ("failed-cooldown", "300"),
    ):
        env = "XSUPERVISE_" + flag.upper().replace("-", "_")
        restart.add_argument(f"--{flag}", metavar="N", help=f"({env}; default: {default})")
    if not with_name:
        return
    parser.add_argument(
        "--name",
        help="session name: the key of its restart budget, shared by "
        "every start with that name (default: derived from the "
        "display request and server command)",
    )
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="if the session is FAILED, exit 7 at once instead of waiting for the cool-down",
    )


def add_start(commands: Subparsers) -> None:
    start = commands.add_parser(
        "start",
        help="start and supervise one display",
        usage="xsupervise start [:auto|:N] [options] [-- COMMAND ...]",
        description="Start an X server, wait until it really answers, print DISPLAY and "
        "XAUTHORITY, then stay until SIGTERM/SIGINT (or until COMMAND exits).",
        epilog="examples:\n  xsupervise start :auto\n  xsupervise start :99 --screen 1920x1080x24"
        "\n  xsupervise start :auto --json -- xterm\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    start.add_argument(
        "display",
        nargs="?",
        default=":auto",
        help="':auto' (the server picks a free number; default) or ':N'",
    )
    _add_display_options(start)
    start.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object instead of DISPLAY=/XAUTHORITY= lines",
    )
    start.add_argument(
        "--displayfd",
        type=int,
        metavar="FD",
        help="also write the display number and a newline to this inherited fd",
    )
    start.add_argument(
        "--substitute",
        action="store_true",
        help="fill {display}, {display_number} and {xauthority} into COMMAND's "
        "arguments once the display is ready ({{ and }} for literal braces)",
    )
    _add_launcher_options(start)
    start.add_argument(
        "--detach",
        action="store_true",
        help="ask the running 'xsupervise serve' to start and keep the display, "
        "print it, and exit (no COMMAND); see --socket",
    )
    _add_socket_option(start)


def add_run(commands: Subparsers) -> None:
    run = commands.add_parser(
        "run",
        help="run COMMAND on a fresh display, then tear it down",
        usage="xsupervise run [options] -- COMMAND ...",
        description="Same as 'start :auto -- COMMAND ...' but prints nothing of its own.",
        epilog="example:\n  xsupervise run -- pytest -x\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_display_options(run)
    _add_launcher_options(run)
    run.add_argument(
        "--pool",
        metavar="NAME",
        help="lease a display of pool NAME from the running 'xsupervise serve' instead of "
        "starting a server (XSUPERVISE_POOL); no daemon: exit 5",
    )
    _add_socket_option(run)


def _add_launcher_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "when run by a launcher (see 'Embedding in a Jupyter launcher' in the README)"
    )
    group.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop as on SIGTERM when the process that started us exits, even "
        "by SIGKILL (the parent must not start us from a thread that ends "
        "before we do)",
    )
    group.add_argument(
        "--parent-pid",
        type=int,
        metavar="PID",
        help="with --exit-with-parent: the pid our parent has, as it knows it; "
        "if we are not its child any more, it died before we could watch "
        "it, and we start nothing (default: our parent when we started)",
    )
    group.add_argument(
        "--relaunched",
        action="store_true",
        help="we are restarted whenever we exit non-zero (jupyter-server-proxy, "
        "Restart=always): a missing X server and a COMMAND that fails "
        "before RESET_AFTER also count against the restart budget, so "
        "relaunches wait instead of storming",
    )


def add_list(commands: Subparsers) -> None:
    listing = commands.add_parser("list", help="list the running sessions of this user")
    listing.add_argument("--json", action="store_true", help="one JSON array")
    _add_socket_option(listing)


def add_stop(commands: Subparsers) -> None:
    stop = commands.add_parser(
        "stop",
        help="stop a session cleanly",
        description="Ask the supervisor of display :N to stop it.",
    )
    stop.add_argument("display", nargs="?", help=":N")
    stop.add_argument("--all", action="store_true", help="stop every session of this user")
    stop.add_argument(
        "--wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for it to finish (default: 10)",
    )
    _add_socket_option(stop)


def add_status(commands: Subparsers) -> None:
    status = commands.add_parser(
        "status",
        help="state, restarts, last failure and next retry of sessions",
        description="Show running sessions, and sessions held back by their restart budget "
        "(backoff or FAILED) even when no supervisor runs.",
    )
    status.add_argument("target", nargs="?", metavar=":N|NAME", help="one session")
    status.add_argument("--json", action="store_true", help="one JSON array")
    _add_socket_option(status)


def add_reset(commands: Subparsers) -> None:
    reset = commands.add_parser(
        "reset",
        help="clear a session's restart history (e.g. after fixing a FAILED one)",
        description="Forget the failures recorded for NAME, so that its next start is "
        "immediate. A supervisor waiting for the cool-down notices within a second.",
    )
    reset.add_argument("name", metavar="NAME", help="the session name shown by 'status'")
    _add_socket_option(reset)


def add_clean(commands: Subparsers) -> None:
    clean = commands.add_parser(
        "clean",
        help="remove stale X sockets and lock files, safely",
        description="Judge every /tmp/.X11-unix/X<n> and /tmp/.X<n>-lock: live if anything "
        "serves display n (its abstract socket is bound, or a connection is "
        "accepted); a lock is stale only if its pid is gone or not an X server. "
        "Remove the stale ones we may remove (our own; anyone's for root), report "
        "the others' owners, never follow a symlink. Also clear what killed "
        "supervisors of ours left in the runtime directory.",
        epilog="exit codes: 0 nothing stale is left; 1 stale entries remain (another user's, "
        "or removal failed); 5 the shared directory is unsafe to work in",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    clean.add_argument("--dry-run", action="store_true", help="report only; change nothing")
    clean.add_argument("--json", action="store_true", help="one JSON array of entries")


def add_check(commands: Subparsers) -> None:
    from ..launch.check import add_parser

    add_parser(commands)


def add_screenshot(commands: Subparsers) -> None:
    from .screenshot import add_parser

    add_parser(commands)


def add_serve(commands: Subparsers) -> None:
    serve = commands.add_parser(
        "serve",
        help="run as a daemon: the config file's displays, plus a control socket",
        usage="xsupervise serve [--config FILE] [--socket PATH] [options]",
        description="Supervise every display declared in the config file ([session.NAME] "
        "tables) and those requested over the control socket, each with the "
        "restart policy. Under systemd: Type=notify (READY=1 once every configured "
        "display is ready or FAILED), WATCHDOG=1, the journal, socket activation "
        "(xsupervise.socket). SIGHUP re-reads the config; SIGTERM stops everything.",
        epilog="example config (/etc/xsupervise/config.toml, or $XDG_CONFIG_HOME/xsupervise/"
        'config.toml):\n  [session.main]\n  display = ":99"\n  screen = '
        '"1920x1080x24"\n\n  [session.vnc]\n  server = "xvnc"\n'
        "  start_limit_burst = 3\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--config", metavar="FILE", help="config file (XSUPERVISE_CONFIG)")
    _add_socket_option(serve)
    _add_display_options(serve, with_name=False)


def _add_socket_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socket",
        metavar="PATH",
        help="the daemon's control socket (XSUPERVISE_SOCKET; default: "
        "$XDG_RUNTIME_DIR/xsupervise/control.sock, for root "
        "/run/xsupervise/control.sock)",
    )
