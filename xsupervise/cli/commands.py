"""The ``xsupervise`` command line's handlers: one per subcommand (see cli.main.SUBCOMMANDS).

Each takes the parsed arguments and the parser (for usage errors) and returns the exit
code. Heavy modules are imported inside them: Python start-up is part of every run.
"""

from __future__ import annotations

import os

from ..host.errors import ExitCode, UsageError

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs the CLI time
if TYPE_CHECKING:
    import argparse

    from ..client import Client
    from ..session.clock import LaunchedServer

# Our parent as first seen, as early as possible: for --exit-with-parent's check that it did
# not exit before we asked to be told.
PARENT_PID = os.getppid()


def start(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`start`: a foreground supervisor of one display, or (--detach) one in the daemon."""
    if args.detach:
        return _start_detached(args)
    return supervise(args)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`run`: `start :auto -- COMMAND` that prints nothing of its own (--pool: leased)."""
    pool = args.pool or os.environ.get("XSUPERVISE_POOL")
    if pool:
        from .lease import run_leased

        return run_leased(args, parser, pool)
    return supervise(args)


def supervise(args: argparse.Namespace) -> int:
    """`start` in the foreground, or `run` without a pool: supervise one display."""
    from ..host.paths import RuntimeDir
    from ..launch.settings import FIELDS, default_session_name, load_settings, parse_display
    from ..session.foreground import ForegroundSupervisor

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

    def announce(server: LaunchedServer) -> None:
        if is_run:
            return
        facts = server.facts
        assert facts is not None  # announced once verified
        _print_display(
            {
                "display": server.display,
                "number": server.number,
                "xauthority": server.auth_path,
                "server_pid": server.pid,
                "supervisor_pid": os.getpid(),
                "name": name,
                "vendor": facts.vendor,
                "screen": f"{facts.width}x{facts.height}x{facts.depth}",
                "vnc": vnc.to_json() if (vnc := getattr(server, "vnc", None)) else None,  # xvnc
            },
            args.json,
        )
        if displayfd is not None:
            os.write(displayfd, f"{server.number}\n".encode())
            os.close(displayfd)

    name = args.name or default_session_name(number, settings.server)
    session = ForegroundSupervisor(
        settings,
        RuntimeDir.discover(),
        number,
        name=name,
        command=command,
        announce=announce,
        no_wait=args.no_wait,
        substitute=getattr(args, "substitute", False),
        parent_pid=(args.parent_pid or PARENT_PID) if args.exit_with_parent else None,
        relaunched=args.relaunched,
    )
    return session.run()


def _print_display(facts: dict[str, object], as_json: bool) -> None:
    """What `start` prints once the display is ready: shell lines, or one JSON object."""
    if as_json:
        import json

        print(json.dumps(facts), flush=True)
    else:
        # The xvnc profile's endpoint, as VNC clients take it (a bare path, or HOST::PORT).
        from ..launch.vnc_endpoint import VncEndpoint

        vnc = f"\nVNC={VncEndpoint.from_json(facts['vnc'])}" if facts.get("vnc") else ""
        print(f"DISPLAY={facts['display']}\nXAUTHORITY={facts['xauthority']}{vnc}", flush=True)


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


def _start_detached(args: argparse.Namespace) -> int:
    from ..client import Client
    from ..launch.settings import FIELDS, parse_display

    parse_display(args.display)  # a bad request is a usage error here, not in the daemon
    settings = {field: getattr(args, field) for field in FIELDS if getattr(args, field) is not None}
    with Client(args.socket, timeout=None) as daemon:
        reply = daemon.start(args.display, name=args.name, no_wait=args.no_wait, **settings)
    reply.pop("ok", None)
    reply.pop("env", None)
    reply["number"] = int(reply["display"][1:])
    _print_display(reply, args.json)
    return ExitCode.OK


def list_(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import time

    from ..launch.records import SessionRecord
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
    from ..session.ledger import Ledger

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
    from ..host.stale import check_shared_dir, clean, scan
    from ..launch.recovery import reclaim_abandoned

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
