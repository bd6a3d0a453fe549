"""The ``xsupervise`` command line. ``main(argv) -> exit code``; only __main__ calls sys.exit.

Heavy modules are imported inside the commands: Python start-up is part of every run.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import log
from .errors import UsageError, XSuperviseError

EXIT_CODES = """\
exit codes:
  0    success (start: stopped by SIGTERM/SIGINT)
  2    usage error: a flag, XSUPERVISE_* variable or config value is invalid
  3    the X server did not start: it exited, wrote no display number, or did not answer
  4    the X server wrote no display number before the deadline (--timeout)
  5    environment problem: X server not installed, runtime directory unusable
  6    no session of ours on that display
  8    the X server died while in use
  126  COMMAND is not executable; 127: COMMAND not found
  with COMMAND, otherwise: COMMAND's exit status, or 128+N if signal N killed it
"""

def _setup_logging(verbose: bool) -> None:
    """One plain line per message on stderr: 'xsupervise: ...'."""

    def configure(logging) -> None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("xsupervise: %(message)s"))
        logger = logging.getLogger(log.NAME)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
        logger.propagate = False

    log.configure_on_first_use(configure)


def _add_display_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("display options (flag > XSUPERVISE_* variable > config file)")
    group.add_argument("--server", metavar="CMD",
                       help="X server command, e.g. 'Xephyr' or 'Xvnc -SecurityTypes None' "
                            "(XSUPERVISE_SERVER; default: Xvfb)")
    group.add_argument("--screen", metavar="WxHxD",
                       help="screen geometry (XSUPERVISE_SCREEN; default: 1280x1024x24)")
    group.add_argument("--timeout", metavar="SECONDS", dest="displayfd_timeout",
                       help="deadline for the server to write its display number and answer "
                            "(XSUPERVISE_DISPLAYFD_TIMEOUT; default: 10)")
    group.add_argument("--kill-grace", metavar="SECONDS",
                       help="time between SIGTERM and SIGKILL when stopping the server "
                            "(XSUPERVISE_KILL_GRACE; default: 2)")
    parser.add_argument("--name", help="session name shown by 'list' (default: the display request)")


def _add_start(commands) -> None:
    start = commands.add_parser(
        "start", help="start and supervise one display",
        usage="xsupervise start [:auto|:N] [options] [-- COMMAND ...]",
        description="Start an X server, wait until it really answers, print DISPLAY and "
                    "XAUTHORITY, then stay until SIGTERM/SIGINT (or until COMMAND exits).",
        epilog="examples:\n  xsupervise start :auto\n  xsupervise start :99 --screen 1920x1080x24"
               "\n  xsupervise start :auto --json -- xterm\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    start.add_argument("display", nargs="?", default=":auto",
                       help="':auto' (the server picks a free number; default) or ':N'")
    _add_display_options(start)
    start.add_argument("--json", action="store_true",
                       help="print one JSON object instead of DISPLAY=/XAUTHORITY= lines")
    start.add_argument("--displayfd", type=int, metavar="FD",
                       help="also write the display number and a newline to this inherited fd")


def _add_run(commands) -> None:
    run = commands.add_parser(
        "run", help="run COMMAND on a fresh display, then tear it down",
        usage="xsupervise run [options] -- COMMAND ...",
        description="Same as 'start :auto -- COMMAND ...' but prints nothing of its own.",
        epilog="example:\n  xsupervise run -- pytest -x\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_display_options(run)


def _add_list(commands) -> None:
    listing = commands.add_parser("list", help="list the running sessions of this user")
    listing.add_argument("--json", action="store_true", help="one JSON array")


def _add_stop(commands) -> None:
    stop = commands.add_parser("stop", help="stop a session cleanly",
                               description="Ask the supervisor of display :N to stop it.")
    stop.add_argument("display", nargs="?", help=":N")
    stop.add_argument("--all", action="store_true", help="stop every session of this user")
    stop.add_argument("--wait", type=float, default=10.0, metavar="SECONDS",
                      help="how long to wait for it to finish (default: 10)")


_SUBCOMMANDS = {"start": _add_start, "run": _add_run, "list": _add_list, "stop": _add_stop}


def _build_parser(own_argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xsupervise",
        description="Run headless X servers safely: verified ready, never leaked.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens on stderr")
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    # Building every subcommand's parser costs milliseconds on each run: build only the one
    # named, unless none is (then 'xsupervise --help' lists them all).
    named = next((word for word in own_argv if not word.startswith("-")), None)
    for name, add in _SUBCOMMANDS.items():
        if named not in _SUBCOMMANDS or name == named:
            add(commands)
    return parser


def _split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """Our options, and COMMAND after the first '--' (kept away from argparse, which would
    otherwise take COMMAND's own options for ours)."""
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def main(argv: Sequence[str] | None = None) -> int:
    own, command = _split_command(list(sys.argv[1:] if argv is None else argv))
    parser = _build_parser(own)
    args = parser.parse_args(own)
    args.cmd = command
    if command and args.command not in ("start", "run"):
        parser.error(f"'{args.command}' takes no COMMAND after '--'")
    if args.command == "run" and not command:
        parser.error("give the command to run after '--', e.g. xsupervise run -- xterm")
    _setup_logging(args.verbose)
    try:
        if args.command in ("start", "run"):
            return _start(args)
        if args.command == "list":
            return _list(args)
        if args.command == "stop":
            return _stop(args, parser)
    except XSuperviseError as error:
        if args.verbose:
            log.get().debug("details", exc_info=True)
        print(f"xsupervise: {error}", file=sys.stderr, flush=True)
        return error.exit_code
    raise AssertionError(args.command)


def _start(args: argparse.Namespace) -> int:
    from .config import load_settings
    from .config import parse_display
    from .paths import RuntimeDir
    from .session import ForegroundSession

    is_run = args.command == "run"
    command = args.cmd
    number = None if is_run else parse_display(args.display)
    settings = load_settings({"server": args.server, "screen": args.screen,
                              "displayfd_timeout": args.displayfd_timeout,
                              "kill_grace": args.kill_grace})
    displayfd = None if is_run else args.displayfd
    if displayfd is not None:
        try:
            os.fstat(displayfd)
        except OSError:
            raise UsageError(f"--displayfd {displayfd} is not an open file descriptor.") from None

    def announce(server) -> None:
        if is_run:
            return
        if args.json:
            import json

            facts = server.facts
            print(json.dumps({
                "display": server.display, "number": server.number,
                "xauthority": server.auth_path, "server_pid": server.pid,
                "supervisor_pid": os.getpid(), "name": server.record.name,
                "vendor": facts.vendor, "screen": f"{facts.width}x{facts.height}x{facts.depth}"}),
                flush=True)
        else:
            print(f"DISPLAY={server.display}\nXAUTHORITY={server.auth_path}", flush=True)
        if displayfd is not None:
            os.write(displayfd, f"{server.number}\n".encode())
            os.close(displayfd)

    session = ForegroundSession(settings, RuntimeDir.discover(), number, name=args.name,
                                command=command, announce=announce)
    return session.run()


def _list(args: argparse.Namespace) -> int:
    import json
    import time

    from .paths import RuntimeDir
    from .records import live_records

    records = live_records(RuntimeDir.discover())
    if args.json:
        print(json.dumps([record.as_dict() for record in records], indent=1))
        return 0
    if not records:
        print("no sessions")
        return 0
    print(f"{'DISPLAY':8} {'STATE':9} {'KIND':4} {'SUPERVISOR':>10} {'SERVER':>8} {'UPTIME':>8}  NAME")
    now = time.time()
    for record in records:
        print(f"{record.display or '-':8} {record.state:9} {record.kind:4} "
              f"{record.supervisor_pid:>10} {record.server_pid or '-':>8} "
              f"{int(now - record.started_at):>7}s  {record.name}")
    return 0


def _stop(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .control import stop_sessions
    from .config import parse_display
    from .paths import RuntimeDir

    if args.all == bool(args.display):
        parser.error("give either :N or --all")
    number = None if args.all else parse_display(args.display)
    if number is None and not args.all:
        parser.error("give a display number, e.g. xsupervise stop :5")
    for line in stop_sessions(RuntimeDir.discover(), number, wait=args.wait):
        print(line)
    return 0


def console() -> None:
    """The console-script entry point: main(), then a fast exit.

    Everything of ours is torn down and reaped before main() returns; what would remain is
    the interpreter's own finalisation (~10 ms here, a tenth of a whole `xsupervise run`),
    which we skip after flushing what the user is owed.
    """
    code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    sys.stderr.flush()
    os._exit(code)
