"""The ``xsupervise`` command line. ``main(argv) -> exit code``; only __main__ calls sys.exit.

Heavy modules are imported inside the commands: Python start-up is part of every run.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import _log as log
from ._errors import UsageError, XSuperviseError

EXIT_CODES = """\
exit codes:
  0    success (start: stopped by SIGTERM/SIGINT)
  2    usage error: a flag, XSUPERVISE_* variable or config value is invalid
  3    the X server did not start: it exited, wrote no display number, or did not answer
  4    the X server wrote no display number before the deadline (--timeout)
  5    environment problem: X server not installed, runtime directory unusable
  6    no session of ours on that display
  7    the session is FAILED: too many failed starts (see 'status', 'reset')
  126  COMMAND is not executable; 127: COMMAND not found
  with COMMAND, otherwise: COMMAND's exit status, or 128+N if signal N killed it
"""

def _add_display_options(parser: argparse.ArgumentParser, with_name: bool = True) -> None:
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
                       help="time between SIGTERM and SIGKILL when stopping the server, "
                            "and COMMAND after a SIGTERM/SIGHUP we passed on to it "
                            "(XSUPERVISE_KILL_GRACE; default: 2)")
    restart = parser.add_argument_group(
        "restart policy (flag > XSUPERVISE_* variable > config file)",
        "After a failure the next start waits BACKOFF_INITIAL seconds, doubling up to "
        "BACKOFF_MAX (with jitter); a server up RESET_AFTER seconds resets the count. More "
        "than START_LIMIT_BURST failed starts within START_LIMIT_INTERVAL seconds make the "
        "session FAILED: no more starts until FAILED_COOLDOWN has passed (or 'reset').")
    for flag, default in (("backoff-initial", "1"), ("backoff-max", "60"), ("reset-after", "60"),
                          ("start-limit-burst", "5"), ("start-limit-interval", "60"),
                          ("failed-cooldown", "300")):
        env = "XSUPERVISE_" + flag.upper().replace("-", "_")
        restart.add_argument(f"--{flag}", metavar="N", help=f"({env}; default: {default})")
    if not with_name:
        return
    parser.add_argument("--name", help="session name: the key of its restart budget, shared by "
                                       "every start with that name (default: derived from the "
                                       "display request and server command)")
    parser.add_argument("--no-wait", action="store_true",
                        help="if the session is FAILED, exit 7 at once instead of waiting for "
                             "the cool-down")


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
    start.add_argument("--substitute", action="store_true",
                       help="fill {display}, {display_number} and {xauthority} into COMMAND's "
                            "arguments once the display is ready ({{ and }} for literal braces)")
    _add_launcher_options(start)
    start.add_argument("--detach", action="store_true",
                       help="ask the running 'xsupervise serve' to start and keep the display, "
                            "print it, and exit (no COMMAND); see --socket")
    _add_socket_option(start)


def _add_run(commands) -> None:
    run = commands.add_parser(
        "run", help="run COMMAND on a fresh display, then tear it down",
        usage="xsupervise run [options] -- COMMAND ...",
        description="Same as 'start :auto -- COMMAND ...' but prints nothing of its own.",
        epilog="example:\n  xsupervise run -- pytest -x\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_display_options(run)
    _add_launcher_options(run)


def _add_launcher_options(parser) -> None:
    group = parser.add_argument_group(
        "when run by a launcher (see 'Embedding in a Jupyter launcher' in the README)")
    group.add_argument("--exit-with-parent", action="store_true",
                       help="stop as on SIGTERM when the process that started us exits, even "
                            "by SIGKILL (the parent must not start us from a thread that ends "
                            "before we do)")
    group.add_argument("--parent-pid", type=int, metavar="PID",
                       help="with --exit-with-parent: the pid our parent has, as it knows it; "
                            "if we are not its child any more, it died before we could watch "
                            "it, and we start nothing (default: our parent when we started)")
    group.add_argument("--relaunched", action="store_true",
                       help="we are restarted whenever we exit non-zero (jupyter-server-proxy, "
                            "Restart=always): a missing X server and a COMMAND that fails "
                            "before RESET_AFTER also count against the restart budget, so "
                            "relaunches wait instead of storming")


def _add_list(commands) -> None:
    listing = commands.add_parser("list", help="list the running sessions of this user")
    listing.add_argument("--json", action="store_true", help="one JSON array")
    _add_socket_option(listing)


def _add_stop(commands) -> None:
    stop = commands.add_parser("stop", help="stop a session cleanly",
                               description="Ask the supervisor of display :N to stop it.")
    stop.add_argument("display", nargs="?", help=":N")
    stop.add_argument("--all", action="store_true", help="stop every session of this user")
    stop.add_argument("--wait", type=float, default=10.0, metavar="SECONDS",
                      help="how long to wait for it to finish (default: 10)")
    _add_socket_option(stop)


def _add_status(commands) -> None:
    status = commands.add_parser(
        "status", help="state, restarts, last failure and next retry of sessions",
        description="Show running sessions, and sessions held back by their restart budget "
                    "(backoff or FAILED) even when no supervisor runs.")
    status.add_argument("target", nargs="?", metavar=":N|NAME", help="one session")
    status.add_argument("--json", action="store_true", help="one JSON array")
    _add_socket_option(status)


def _add_reset(commands) -> None:
    reset = commands.add_parser(
        "reset", help="clear a session's restart history (e.g. after fixing a FAILED one)",
        description="Forget the failures recorded for NAME, so that its next start is "
                    "immediate. A supervisor waiting for the cool-down notices within a second.")
    reset.add_argument("name", metavar="NAME", help="the session name shown by 'status'")
    _add_socket_option(reset)


def _add_clean(commands) -> None:
    clean = commands.add_parser(
        "clean", help="remove stale X sockets and lock files, safely",
        description="Judge every /tmp/.X11-unix/X<n> and /tmp/.X<n>-lock: live if anything "
                    "serves display n (its abstract socket is bound, or a connection is "
                    "accepted); a lock is stale only if its pid is gone or not an X server. "
                    "Remove the stale ones we may remove (our own; anyone's for root), report "
                    "the others' owners, never follow a symlink. Also clear what killed "
                    "supervisors of ours left in the runtime directory.",
        epilog="exit codes: 0 nothing stale is left; 1 stale entries remain (another user's, "
               "or removal failed); 5 the shared directory is unsafe to work in",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    clean.add_argument("--dry-run", action="store_true", help="report only; change nothing")
    clean.add_argument("--json", action="store_true", help="one JSON array of entries")


def _add_serve(commands) -> None:
    serve = commands.add_parser(
        "serve", help="run as a daemon: the config file's displays, plus a control socket",
        usage="xsupervise serve [--config FILE] [--socket PATH] [options]",
        description="Supervise every display declared in the config file ([session.NAME] "
                    "tables) and those requested over the control socket, each with the "
                    "restart policy. Under systemd: Type=notify (READY=1 once every configured "
                    "display is ready or FAILED), WATCHDOG=1, the journal, socket activation "
                    "(xsupervise.socket). SIGHUP re-reads the config; SIGTERM stops everything.",
        epilog="example config (/etc/xsupervise/config.toml, or $XDG_CONFIG_HOME/xsupervise/"
               "config.toml):\n  [session.main]\n  display = \":99\"\n  screen = "
               "\"1920x1080x24\"\n\n  [session.vnc]\n  server = \"Xvnc -SecurityTypes None\"\n"
               "  start_limit_burst = 3\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--config", metavar="FILE", help="config file (XSUPERVISE_CONFIG)")
    _add_socket_option(serve)
    _add_display_options(serve, with_name=False)


def _add_socket_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", metavar="PATH",
                        help="the daemon's control socket (XSUPERVISE_SOCKET; default: "
                             "$XDG_RUNTIME_DIR/xsupervise/control.sock, for root "
                             "/run/xsupervise/control.sock)")


_SUBCOMMANDS = {"start": _add_start, "serve": _add_serve, "run": _add_run, "list": _add_list, "stop": _add_stop,
                "status": _add_status, "reset": _add_reset, "clean": _add_clean}


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


# Our parent as first seen, as early as possible: for --exit-with-parent's check that it did
# not exit before we asked to be told.
PARENT_PID = os.getppid()


def main(argv: Sequence[str] | None = None) -> int:
    own, command = _split_command(list(sys.argv[1:] if argv is None else argv))
    parser = _build_parser(own)
    args = parser.parse_args(own)
    args.cmd = command
    if command and args.command not in ("start", "run"):
        parser.error(f"'{args.command}' takes no COMMAND after '--'")
    if args.command == "run" and not command:
        parser.error("give the command to run after '--', e.g. xsupervise run -- xterm")
    if getattr(args, "parent_pid", None) is not None and not args.exit_with_parent:
        parser.error("--parent-pid goes with --exit-with-parent")
    if getattr(args, "detach", False) and command:
        parser.error("--detach starts a display in the daemon; it takes no COMMAND")
    log.setup("DEBUG" if args.verbose else "INFO" if args.command == "serve" else "WARNING")
    try:
        if args.command == "start" and args.detach:
            return _start_detached(args)
        if args.command in ("start", "run"):
            return _start(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "list":
            return _list(args)
        if args.command == "stop":
            return _stop(args, parser)
        if args.command == "status":
            return _status(args)
        if args.command == "reset":
            return _reset(args)
        if args.command == "clean":
            return _clean(args)
    except XSuperviseError as error:
        if args.verbose:
            log.get().debug("details", exc_info=True)
        print(f"xsupervise: {error}", file=sys.stderr, flush=True)
        return error.exit_code
    raise AssertionError(args.command)


def _start(args: argparse.Namespace) -> int:
    from ._settings import FIELDS, default_session_name, load_settings, parse_display
    from ._paths import RuntimeDir
    from ._foreground import ForegroundSupervisor

    is_run = args.command == "run"
    command = args.cmd
    number = None if is_run else parse_display(args.display)
    settings = load_settings({field: getattr(args, field) for field in FIELDS})
    displayfd = None if is_run else args.displayfd
    if displayfd is not None:
        try:
            os.fstat(displayfd)
        except OSError:
            raise UsageError(f"--displayfd {displayfd} is not an open file descriptor.") from None

    def announce(server) -> None:
        if is_run:
            return
        facts = server.facts
        _print_display({
            "display": server.display, "number": server.number,
            "xauthority": server.auth_path, "server_pid": server.pid,
            "supervisor_pid": os.getpid(), "name": server.record.name,
            "vendor": facts.vendor, "screen": f"{facts.width}x{facts.height}x{facts.depth}"},
            args.json)
        if displayfd is not None:
            os.write(displayfd, f"{server.number}\n".encode())
            os.close(displayfd)

    name = args.name or default_session_name(number, settings.server)
    session = ForegroundSupervisor(settings, RuntimeDir.discover(), number, name=name,
                                command=command, announce=announce, no_wait=args.no_wait,
                                substitute=getattr(args, "substitute", False),
                                parent_pid=(args.parent_pid or PARENT_PID)
                                if args.exit_with_parent else None,
                                relaunched=args.relaunched)
    return session.run()


def _print_display(facts: dict, as_json: bool) -> None:
    """What `start` prints once the display is ready: shell lines, or one JSON object."""
    if as_json:
        import json

        print(json.dumps(facts), flush=True)
    else:
        print(f"DISPLAY={facts['display']}\nXAUTHORITY={facts['xauthority']}", flush=True)


def _daemon(args: argparse.Namespace, timeout: float = 60.0):
    """A connected client of the running `xsupervise serve`, or None if none answers.

    `list`, `status`, `stop` and `reset` ask the daemon when one answers (it sees what it
    supervises, and also reads every session record of its runtime directory); otherwise
    they read the runtime directory themselves.
    """
    from .client import running_daemon

    return running_daemon(args.socket, timeout)


def _serve(args: argparse.Namespace) -> int:
    from ._settings import FIELDS
    from ._listener import bind, default_path, from_systemd
    from ._daemon import serve
    from ._paths import RuntimeDir

    if args.config:
        os.environ["XSUPERVISE_CONFIG"] = args.config
    runtime = RuntimeDir.discover()
    listener = from_systemd() or bind(args.socket or default_path(runtime))
    flags = {field: getattr(args, field) for field in FIELDS}
    return serve(runtime, listener, flags)


def _start_detached(args: argparse.Namespace) -> int:
    from .client import Client
    from ._settings import FIELDS, parse_display

    parse_display(args.display)  # a bad request is a usage error here, not in the daemon
    options = {field: getattr(args, field) for field in FIELDS if getattr(args, field) is not None}
    if args.name:
        options["name"] = args.name
    with Client(args.socket, timeout=None) as daemon:
        reply = daemon.start(args.display, no_wait=args.no_wait, **options)
    reply.pop("ok", None)
    reply.pop("env", None)
    reply["number"] = int(reply["display"][1:])
    _print_display(reply, args.json)
    return 0


def _list(args: argparse.Namespace) -> int:
    import json
    import time

    from ._records import SessionRecord

    daemon = _daemon(args)
    if daemon is not None:
        with daemon:
            records = [SessionRecord(**data) for data in daemon.list()]
    else:
        from ._paths import RuntimeDir
        from ._records import live_records

        records = live_records(RuntimeDir.discover())
    if args.json:
        print(json.dumps([record.as_dict() for record in records], indent=1))
        return 0
    if not records:
        print("no sessions")
        return 0
    print(f"{'DISPLAY':8} {'STATE':9} {'KIND':6} {'SUPERVISOR':>10} {'SERVER':>8} {'UPTIME':>8}  NAME")
    now = time.time()
    for record in records:
        print(f"{record.display or '-':8} {record.state:9} {record.kind:6} "
              f"{record.supervisor_pid:>10} {record.server_pid or '-':>8} "
              f"{int(now - record.started_at):>7}s  {record.name}")
    return 0


def _stop(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ._local_ops import stop_sessions
    from ._settings import parse_display
    from ._paths import RuntimeDir

    if args.all == bool(args.display):
        parser.error("give either :N or --all")
    number = None if args.all else parse_display(args.display)
    if number is None and not args.all:
        parser.error("give a display number, e.g. xsupervise stop :5")
    daemon = _daemon(args)
    if daemon is not None:
        with daemon:  # it waits for the reply as long as the daemon may take: --wait
            lines = daemon.stop(None if args.all else f":{number}", all=args.all,
                                wait=args.wait)
    else:
        lines = stop_sessions(RuntimeDir.discover(), number, wait=args.wait)
    for line in lines:
        print(line)
    return 0


def _status(args: argparse.Namespace) -> int:
    import json
    import time

    from ._settings import load_settings
    from ._local_ops import format_status, session_status
    from ._paths import RuntimeDir

    now = time.time()
    daemon = _daemon(args)
    if daemon is not None:
        with daemon:
            entries = daemon.status(args.target)
    else:
        entries = session_status(RuntimeDir.discover(), args.target, load_settings().policy(),
                                 now)
    if args.json:
        print(json.dumps(entries, indent=1))
    elif not entries:
        print("no sessions")
    for entry in [] if args.json else entries:
        print(format_status(entry, now))
    return 0


def _reset(args: argparse.Namespace) -> int:
    from ._ledger import Ledger
    from ._paths import RuntimeDir

    daemon = _daemon(args)
    if daemon is not None:
        with daemon:
            existed = daemon.reset(args.name)
    else:
        existed = Ledger(RuntimeDir.discover(), args.name).reset()
    print(f"{args.name}: restart history cleared" if existed
          else f"{args.name}: had no restart history")
    return 0


def _clean(args: argparse.Namespace) -> int:
    import json

    from ._errors import EnvironmentProblem
    from ._paths import RuntimeDir
    from ._recovery import reclaim_abandoned
    from ._stale import X11_UNIX_DIR, check_shared_dir, clean, scan

    if not args.dry_run:
        for record in reclaim_abandoned(RuntimeDir.discover()):
            if not args.json:
                print(f"reclaimed     session {record.name} of dead supervisor pid "
                      f"{record.supervisor_pid}")
    problem = check_shared_dir(X11_UNIX_DIR)
    if problem:
        raise EnvironmentProblem(f"refusing to clean: {problem}. Inspect it (ls -ld "
                                 f"{X11_UNIX_DIR}); it should be root's, mode 1777.")
    entries = scan()
    clean(entries, args.dry_run)
    if args.json:
        print(json.dumps([entry.as_dict() for entry in entries], indent=1))
    else:
        for entry in entries:
            if entry.verdict != "live":
                print(entry.line())
        live = sum(entry.verdict == "live" for entry in entries)
        print(f"{len(entries)} entries: {live} live, "
              f"{sum(e.action in ('removed', 'would-remove') for e in entries)} "
              f"{'would be ' if args.dry_run else ''}removed")
    left = [e for e in entries if e.verdict == "inaccessible" or e.action == "failed"]
    return 1 if left else 0


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
