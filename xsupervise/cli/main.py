"""The ``xsupervise`` command line. ``main(argv) -> exit code``; only __main__ calls sys.exit.

Every subcommand is one row of ``SUBCOMMANDS``: its parser builder (cli.parsers) beside its
handler (cli.foreground for `start` and `run`, cli.commands for most others), each named
"module:function" and imported only when used: Python start-up is part of every run.

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

    from .parsers import Subparsers

# Our parent as first seen, as early as possible: for --exit-with-parent's check that it did
# not exit before we asked to be told (cli.foreground; passed on as args.parent_pid).
PARENT_PID = os.getppid()

# What a subcommand does with a COMMAND after '--'.
NO_COMMAND, OPTIONAL_COMMAND, REQUIRED_COMMAND = "none", "optional", "required"


def _named(spec: str) -> Callable[..., object]:
    """``"module:function"`` (a module of the package, e.g. ``"cli.parsers:add_start"``),
    imported now: each subcommand's modules are imported only when it is parsed or run.
    (tests/test_imports.py cannot see these imports; cli is the top layer and nothing imports
    this module but __main__, so they can make neither a cycle nor an upward import.)"""
    module, _, function = spec.partition(":")
    found: Callable[..., object] = getattr(
        __import__(f"xsupervise.{module}", fromlist=[function]), function
    )
    return found


class Subcommand:
    """One subcommand: its parser builder and its handler, each as ``"module:function"``
    (imported only when used: argparse only to parse, and `run` loads no other command's
    module), and whether it takes COMMAND."""

    __slots__ = ("builder", "command", "handler")

    def __init__(self, builder: str, handler: str, command: str = NO_COMMAND):
        self.builder = builder
        self.handler = handler
        self.command = command

    def add_parser(self, subparsers: Subparsers) -> None:
        _named(self.builder)(subparsers)

    def handle(self, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
        code = _named(self.handler)(args, parser)
        assert isinstance(code, int)
        return code

    def __repr__(self) -> str:
        return f"<Subcommand {self.handler}>"


# In the order `xsupervise --help` lists them.
SUBCOMMANDS: dict[str, Subcommand] = {
    "start": Subcommand("cli.parsers:add_start", "cli.foreground:start", OPTIONAL_COMMAND),
    "serve": Subcommand("cli.parsers:add_serve", "cli.commands:serve"),
    "run": Subcommand("cli.parsers:add_run", "cli.foreground:run", REQUIRED_COMMAND),
    "list": Subcommand("cli.parsers:add_list", "cli.commands:list_"),
    "stop": Subcommand("cli.parsers:add_stop", "cli.commands:stop"),
    "status": Subcommand("cli.parsers:add_status", "cli.commands:status"),
    "reset": Subcommand("cli.parsers:add_reset", "cli.commands:reset"),
    "clean": Subcommand("cli.parsers:add_clean", "cli.commands:clean"),
    "check": Subcommand("cli.parsers:add_check", "cli.commands:check"),
    "screenshot": Subcommand("cli.parsers:add_screenshot", "cli.commands:screenshot"),
    "view": Subcommand("media.view:add_parser", "media.view:handle"),
    "record": Subcommand("cli.record:add_parser", "cli.record:record"),
    "lease": Subcommand("cli.lease:add_lease", "cli.lease:lease"),
    "servers": Subcommand("cli.servers:add_servers", "cli.servers:servers"),
}


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
