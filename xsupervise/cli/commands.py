"""The ``xsupervise`` command line's handlers: one per subcommand (see cli.main.SUBCOMMANDS).

Each takes the parsed arguments and the parser (for usage errors) and returns the exit
code. Heavy modules are imported inside them: Python start-up is part of every run.
"""

from __future__ import annotations

import os

from ..host.errors import ExitCode

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs the CLI time
if TYPE_CHECKING:
    import argparse

    from ..client import Client


def _daemon(args: argparse.Namespace) -> Client | None:
    """A connected client of the running `xsupervise serve`, or None if none answers.

    `list`, `status`, `stop` and `reset` ask the daemon when one answers (it sees what it
    supervises, and also reads every session record of its runtime directory); otherwise
    they read the runtime directory themselves.
    """
    from ..client import running_daemon

    return running_daemon(args.socket)


def serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..daemon.daemon import serve as run_daemon
    from ..host.listener import bind, from_systemd
    from ..host.paths import RuntimeDir, default_path
    from ..launch.settings import FIELDS

    if args.config:
        os.environ["XSUPERVISE_CONFIG"] = args.config
    runtime = RuntimeDir.discover()
    listener = from_systemd() or bind(args.socket or default_path(runtime))
    flags = {field: getattr(args, field) for field in FIELDS}
    return run_daemon(runtime, listener, flags)


def list_(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import time

    from ..launch.server import SessionRecord
    from ..launch.vnc_endpoint import VncEndpoint
    from .lease import print_json, print_pools

    daemon, pools = _daemon(args), []
    if daemon is not None:
        with daemon:
            records = [SessionRecord(**data) for data in daemon.list()]
            pools = daemon.pools()
    else:
        from ..host.paths import RuntimeDir
        from ..session.local_ops import local_records

        records = local_records(RuntimeDir.discover())
    if args.json:
        return print_json([record.as_dict() for record in records], pools)
    if not records:
        print("no sessions")
        return print_pools(pools)
    print(
        f"{'DISPLAY':8} {'STATE':9} {'KIND':6} {'SUPERVISOR':>10} {'SERVER':>8} {'UPTIME':>8}  NAME"
    )
    now = time.time()
    for record in records:
        print(
            f"{record.display or '-':8} {record.state:9} {record.kind:6} "
            f"{record.supervisor_pid:>10} {record.server_pid or '-':>8} "
            f"{int(now - record.started_at):>7}s  {record.name}"
            + (f"  vnc {VncEndpoint.from_json(record.vnc)}" if record.vnc else "")
        )
        if record.abandoned:
            print(f"  {record.display or record.name} abandoned: {record.abandoned}")
    return print_pools(pools)


def stop(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..host.paths import RuntimeDir
    from ..launch.settings import parse_display
    from ..session.local_ops import stop_sessions

    if args.all == bool(args.display):
        parser.error("give either :N or --all")
    number = None if args.all else parse_display(args.display)
    if number is None and not args.all:
        parser.error("give a display number, e.g. xsupervise stop :5")
    daemon = _daemon(args)
    if daemon is not None:
        with daemon:  # it waits for the reply as long as the daemon may take: --wait
            lines = daemon.stop(None if args.all else f":{number}", all=args.all, wait=args.wait)
    else:
        lines = stop_sessions(RuntimeDir.discover(), number, wait=args.wait)
    for line in lines:
        print(line)
    return ExitCode.OK


def status(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import time

    from ..host.paths import RuntimeDir
    from ..launch.settings import load_settings
    from ..session.local_ops import format_status, session_status
    from .lease import print_json, print_pools

    now = time.time()
    daemon, pools = _daemon(args), []
    if daemon is not None:
        with daemon:
            entries = daemon.status(args.target)
            pools = [] if args.target else daemon.pools()
    else:
        entries = session_status(RuntimeDir.discover(), args.target, load_settings().policy(), now)
    if args.json:
        return print_json(list(entries), pools)  # type: ignore[arg-type]
    if not entries:
        print("no sessions")
    for entry in entries:
        print(format_status(entry, now))
    return print_pools(pools)


def reset(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..host.paths import RuntimeDir
    from ..session.session import Ledger

    daemon = _daemon(args)
    if daemon is not None:
        with daemon:
            existed = daemon.reset(args.name)
    else:
        existed = Ledger(RuntimeDir.discover(), args.name).reset()
    print(
        f"{args.name}: restart history cleared"
        if existed
        else f"{args.name}: had no restart history"
    )
    return ExitCode.OK


def check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..launch.check import run

    return run(args)


def screenshot(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .screenshot import run

    return run(args)


def clean(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import json

    from ..host.errors import EnvironmentProblem
    from ..host.paths import X11_UNIX_DIR, RuntimeDir
    from ..host.sockets import check_shared_dir, clean, scan
    from ..launch.server import reclaim_abandoned

    if not args.dry_run:
        for record in reclaim_abandoned(RuntimeDir.discover()):
            if not args.json:
                print(
                    f"reclaimed     session {record.name} of dead supervisor pid "
                    f"{record.supervisor_pid}"
                )
    problem = check_shared_dir(X11_UNIX_DIR)
    if problem:
        raise EnvironmentProblem(
            f"refusing to clean: {problem}. Inspect it (ls -ld "
            f"{X11_UNIX_DIR}); it should be root's, mode 1777."
        )
    entries = scan()
    clean(entries, args.dry_run)
    if args.json:
        print(json.dumps([entry.as_dict() for entry in entries], indent=1))
    else:
        for entry in entries:
            if entry.verdict != "live":
                print(entry.line())
        live = sum(entry.verdict == "live" for entry in entries)
        print(
            f"{len(entries)} entries: {live} live, "
            f"{sum(e.action in ('removed', 'would-remove') for e in entries)} "
            f"{'would be ' if args.dry_run else ''}removed"
        )
    left = [e for e in entries if e.verdict == "inaccessible" or e.action == "failed"]
    return ExitCode.FAILURE if left else ExitCode.OK
