"""``xsupervise lease NAME`` and ``xsupervise run --pool NAME``: displays leased from a pool of
the running ``xsupervise serve`` (see docs/pools.md), and the pools' table of list/status.

A lease lasts as long as our connection to the daemon: when we exit, however we exit (even
SIGKILLed), the daemon destroys the display, in the background. ``--pool`` is an explicit
request: with no daemon answering we exit 5 and say so, never start a private server.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..host.errors import EnvironmentProblem, ExitCode, UsageError

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs the CLI time
if TYPE_CHECKING:
    from ..client import Client, Lease
    from .parsers import Subparsers


def add_lease(commands: Subparsers) -> None:
    from .parsers import _add_socket_option

    lease = commands.add_parser(
        "lease",
        help="lease a display of a pool of the running daemon; hold it until stopped",
        description="Print DISPLAY= and XAUTHORITY= of a display leased from pool NAME of "
        "'xsupervise serve', then hold the lease until SIGTERM/SIGINT or until stdin closes; "
        "the daemon then destroys the display.",
        epilog="examples:\n  xsupervise lease default\n  xsupervise lease ci --json --wait 5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lease.add_argument("pool", nargs="?", default="default", help="the pool (default: default)")
    lease.add_argument("--json", action="store_true", help="print the lease as one JSON object")
    lease.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="how long to wait for a spare display when none is ready (default: 30)",
    )
    _add_socket_option(lease)


def _take(socket: str | None, pool: str, wait: float | None) -> tuple[Client, Lease]:
    from ..client import Client, DaemonUnavailable

    client = Client(socket, timeout=None)
    try:
        client.connect()
    except DaemonUnavailable as error:
        # Never a private server instead: the pool was asked for by name.
        raise EnvironmentProblem(f"cannot lease a display of pool {pool}: {error}") from None
    try:
        return client, client.lease(pool, wait)
    except BaseException:
        client.close()
        raise


def lease(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`lease`: print the display, then hold it until a signal or the end of stdin."""
    import select
    import signal

    client, held = _take(args.socket, args.pool, args.wait)

    def stop(_signum: int, _frame: object) -> None:
        raise _Stop

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    try:
        if args.json:
            import json

            print(json.dumps({k: v for k, v in held.items() if k != "ok"}), flush=True)
        else:
            print(f"DISPLAY={held['display']}\nXAUTHORITY={held['xauthority']}", flush=True)
        poller = select.poll()
        daemon = client._connected().fileno()
        poller.register(daemon, select.POLLIN)
        if _open(0):
            poller.register(0, select.POLLIN)
        while True:
            for fd, _event in poller.poll():
                if fd == daemon:
                    ended = held.ended  # the daemon's word on why, or its connection closed
                    if ended is None:
                        continue  # part of a line so far
                    print(f"xsupervise: {_ended_line(held, ended)}", file=sys.stderr)
                    return ExitCode.FAILURE
                if not os.read(0, 65536):  # stdin closed: the script is done with it
                    return ExitCode.OK
    except _Stop:
        return ExitCode.OK
    finally:
        held.release()
        client.close()


class _Stop(Exception):
    pass


def _ended_line(held: Lease, ended: dict[str, object]) -> str:
    """One line: the lease is over without us, and why (the daemon's event says)."""
    if ended.get("reason") == "connection-closed":
        return (
            f"the daemon on {held.client.path} closed the connection; lease {held['lease']} of "
            f"display {held['display']} is over (the daemon stopped or died, its displays with it)."
        )
    return str(ended.get("message"))


def _open(fd: int) -> bool:
    """Whether ``fd`` is a stdin whose end tells something: a pipe, socket or terminal. Not
    /dev/null (a script's background job, a unit), whose end would drop the lease at once."""
    import stat

    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


def run_leased(args: argparse.Namespace, parser: argparse.ArgumentParser, pool: str) -> int:
    """`run --pool NAME -- COMMAND`: COMMAND on a leased display; its exit status."""
    from ..launch.settings import FIELDS

    given = [f for f in FIELDS if getattr(args, f, None) is not None]
    if given or args.exit_with_parent or args.relaunched or args.name or args.no_wait:
        raise UsageError(
            "--pool leases a display of the daemon's pool: its settings are the pool's; "
            "give no display options, --name, --no-wait or launcher options with it."
        )
    import json

    from ..client import lease_ended
    from .pool_run import run_on_lease

    client, held = _take(args.socket, pool, None)
    try:
        # One way to run COMMAND, as the fast path. The lease's end may have come with the
        # reply (its display died at once): the client has read it already.
        ended = lease_ended(client, held["lease"])
        pushed = json.dumps(ended).encode() + b"\n" if ended is not None else b""
        return run_on_lease(args.cmd, held["env"], client._connected().fileno(), pushed)
    finally:
        client.close()  # the daemon destroys the display in the background


def print_pools(pools: list[dict[str, object]]) -> int:
    """The pools' table under `list` and `status` (nothing without pools)."""
    if pools:
        print(f"\n{'POOL':16} {'SIZE':>4} {'READY':>5} {'LEASED':>6} {'REFILLING':>9}  STATE")
    for pool in pools:
        print(
            f"{pool['name']!s:16} {pool['size']:>4} {pool['ready']:>5} {pool['leased']:>6} "
            f"{pool['refilling']:>9}  {pool['state']}"
            + (f" ({pool['last_failure']})" if pool.get("last_failure") else "")
        )
    return ExitCode.OK


def print_json(entries: list[dict[str, object]], pools: list[dict[str, object]]) -> int:
    """`list --json` / `status --json`: the sessions' entries as they were, then one entry per
    pool with ``"kind": "pool"`` (and the keys every entry has: name, display, state)."""
    import json

    shown = [{"kind": "pool", "display": None, **pool} for pool in pools]
    print(json.dumps([*entries, *shown], indent=1))
    return ExitCode.OK
