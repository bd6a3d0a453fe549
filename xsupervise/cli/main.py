"""The ``xsupervise`` command line. ``main(argv) -> exit code``; only __main__ calls sys.exit.

Every subcommand is one row of ``SUBCOMMANDS``: its parser builder (cli.parsers) beside its
handler (cli.foreground for `start` and `run`, cli.commands for the others). A module is
imported only when its command runs: Python start-up is part of every run.

``console()`` is the console script's entry point: `run --pool`'s fast path (cli.pool_run)
where a pool is named, else ``main()``; then a fast exit.
"""

from __future__ import annotations

import os
import sys

from ..host import log
from ..host.errors import XSuperviseError
from ..host.log import require_systemd_python

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs the CLI time
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence

    Handler = Callable[[argparse.Namespace, argparse.ArgumentParser], int]

    from .parsers import Subparsers

# Our parent as first seen, as early as possible: for --exit-with-parent's check that it did
# not exit before we asked to be told (cli.foreground; passed on as args.parent_pid).
PARENT_PID = os.getppid()

# What a subcommand does with a COMMAND after '--'.
NO_COMMAND, OPTIONAL_COMMAND, REQUIRED_COMMAND = "none", "optional", "required"


class Subcommand:
    """One subcommand: how its parser is built (a builder of cli.parsers, by name: that module
    and argparse are imported only to parse), what handles it, whether it takes COMMAND."""

    __slots__ = ("builder", "command", "handle")

    def __init__(
        self,
        builder: str | Callable[[Subparsers], None],
        handle: Callable[[argparse.Namespace, argparse.ArgumentParser], int],
        command: str = NO_COMMAND,
    ):
        self.builder = builder
        self.handle = handle
        self.command = command

    def add_parser(self, subparsers: Subparsers) -> None:
        if callable(self.builder):
            self.builder(subparsers)
        else:
            from . import parsers

            getattr(parsers, self.builder)(subparsers)

    def __repr__(self) -> str:
        return f"<Subcommand {self.handle.__name__}>"


def _in_commands(name: str) -> Handler:
    """The handler ``cli.commands.<name>``, that module imported only when it is called:
    `run` and `start` (cli.foreground) have no use for it."""

    def handle(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
        from . import commands

        handler: Handler = getattr(commands, name)
        return handler(args, parser)

    handle.__name__ = name
    return handle


def _in_foreground(name: str) -> Handler:
    """The handler ``cli.foreground.<name>``, imported when called: the session, the launch
    path and the host's process calls are for `start` and `run` only."""

    def handle(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
        from . import foreground

        handler: Handler = getattr(foreground, name)
        return handler(args, parser)

    handle.__name__ = name
    return handle


# In the order `xsupervise --help` lists them.
SUBCOMMANDS: dict[str, Subcommand] = {
    "start": Subcommand("add_start", _in_foreground("start"), OPTIONAL_COMMAND),
    "serve": Subcommand("add_serve", _in_commands("serve")),
    "run": Subcommand("add_run", _in_foreground("run"), REQUIRED_COMMAND),
    "list": Subcommand("add_list", _in_commands("list_")),
    "stop": Subcommand("add_stop", _in_commands("stop")),
    "status": Subcommand("add_status", _in_commands("status")),
    "reset": Subcommand("add_reset", _in_commands("reset")),
    "clean": Subcommand("add_clean", _in_commands("clean")),
    "check": Subcommand("add_check", _in_commands("check")),
    "screenshot": Subcommand("add_screenshot", _in_commands("screenshot")),
    "view": Subcommand(lambda c: _add("view", c), lambda a, p: _handle("view", a, p)),
    "record": Subcommand(lambda c: _add("record", c), lambda a, p: _handle("record", a, p)),
    "lease": Subcommand(lambda c: _add("lease", c), lambda a, p: _handle("lease", a, p)),
    "servers": Subcommand(lambda c: _add("servers", c), lambda a, p: _handle("servers", a, p)),
}


def _rare(name: str) -> tuple[Callable[[Subparsers], None], Handler]:
    """The parser builder and handler of a subcommand whose module is imported only when it
    is named (or for --help): `run` and `start` have no use for them."""
    if name == "view":
        from ..media import view

        return view.add_parser, view.handle
    if name == "record":
        from . import record

        return record.add_parser, record.record
    if name == "lease":
        from . import lease

        return lease.add_lease, lease.lease
    from . import servers

    return servers.add_servers, servers.servers


def _add(name: str, commands: Subparsers) -> None:
    _rare(name)[0](commands)


def _handle(name: str, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    return _rare(name)[1](args, parser)


def _build_parser(own_argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    import argparse

    from . import parsers

    parser = parsers.Parser(
        prog="xsupervise",
        description="Run headless X servers safely: verified ready, never leaked.",
        epilog=parsers.EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens on stderr")
    subparsers = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    # Building every subcommand's parser costs milliseconds on each run: build only the one
    # named, unless none is (then 'xsupervise --help' lists them all).
    named = next((word for word in own_argv if not word.startswith("-")), None)
    for name, subcommand in SUBCOMMANDS.items():
        if named not in SUBCOMMANDS or name == named:
            subcommand.add_parser(subparsers)
    return parser


def _split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """Our options, and COMMAND after the first '--' (kept away from argparse, which would
    otherwise take COMMAND's own options for ours)."""
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def _check(
    args: argparse.Namespace, subcommand: Subcommand, parser: argparse.ArgumentParser
) -> None:
    """Usage errors argparse cannot see: COMMAND where none goes, or options that clash."""
    if args.cmd and subcommand.command == NO_COMMAND:
        parser.error(f"'{args.command}' takes no COMMAND after '--'")
    if not args.cmd and subcommand.command == REQUIRED_COMMAND:
        parser.error("give the command to run after '--', e.g. xsupervise run -- xterm")
    if getattr(args, "parent_pid", None) is not None and not args.exit_with_parent:
        parser.error("--parent-pid goes with --exit-with-parent")
    if getattr(args, "detach", False) and args.cmd:
        parser.error("--detach starts a display in the daemon; it takes no COMMAND")


def _plain_run(own: list[str], command: list[str]) -> argparse.Namespace | None:
    """`run -- COMMAND` with no option of ours, the commonest line: its arguments are every
    option's default, so the parser is not needed (importing argparse and building it cost
    ~4 ms of every run). test_cli checks that these are what the parser gives."""
    if own != ["run"] or not command or os.environ.get("XSUPERVISE_POOL"):
        return None  # XSUPERVISE_POOL: a lease, whose errors may need the parser
    from types import SimpleNamespace

    from ..launch.settings import FIELDS

    unset = dict.fromkeys((*FIELDS, "name", "parent_pid", "pool", "socket"))
    off = dict.fromkeys(("verbose", "no_wait", "exit_with_parent", "relaunched"), False)
    return SimpleNamespace(command="run", cmd=command, **unset, **off)  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    own, command = _split_command(list(sys.argv[1:] if argv is None else argv))
    args = _plain_run(own, command)
    parser = subcommand = None
    if args is None:
        parser = _build_parser(own)
        args = parser.parse_args(own)
        args.cmd = command
        subcommand = SUBCOMMANDS[args.command]
        _check(args, subcommand, parser)
    if getattr(args, "exit_with_parent", False) and args.parent_pid is None:
        args.parent_pid = PARENT_PID
    log.setup("DEBUG" if args.verbose else "INFO" if args.command == "serve" else "WARNING")
    try:
        require_systemd_python()
        if parser is None or subcommand is None:
            from .foreground import supervise

            return supervise(args)  # `run -- COMMAND`, without a pool
        return subcommand.handle(args, parser)
    except XSuperviseError as error:
        if args.verbose:
            log.get().debug("details", exc_info=True)
        log.report(error)  # the journal under systemd (PRIORITY, SESSION...); else stderr
        return error.exit_code


def _may_lease(argv: list[str]) -> bool:
    """Whether ``run_pool_fast`` could take ``argv``: `run [--pool NAME ...] -- COMMAND` with a
    pool named (by --pool or XSUPERVISE_POOL). Anything else needs no lease module."""
    if argv[:1] != ["run"] or "--" not in argv:
        return False
    own = argv[1 : argv.index("--")]
    return bool(os.environ.get("XSUPERVISE_POOL")) or any(
        word == "--pool" or word.startswith("--pool=") for word in own
    )


def console() -> None:
    """The console-script entry point: the fast path or ``cli.main.main()``, then a fast exit.

    Everything of ours is torn down and reaped before we get here; what would remain is the
    interpreter's own finalisation (~10 ms, a tenth of a whole `xsupervise run`), which we
    skip after flushing what the user is owed."""
    code = None
    if _may_lease(sys.argv[1:]):
        from .pool_run import run_pool_fast

        code = run_pool_fast(sys.argv[1:])
    if code is None:
        code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    sys.stderr.flush()
    os._exit(code)
