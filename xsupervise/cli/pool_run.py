"""``xsupervise run --pool NAME -- COMMAND``: the fast path, and COMMAND on a leased display.

``xsupervise run --pool NAME -- COMMAND`` (or ``XSUPERVISE_POOL``) is meant to cost far less
than starting an X server, so the Python start-up is most of it: the fast path below skips
argparse, the client and the settings (about 10 ms of imports), and talks the control
protocol with the C socket module and ``json``. It takes only the plain form, ``run [--pool
NAME] [--socket PATH] -- COMMAND...``, under no sign of systemd; for anything else, and
whenever it cannot lease (no daemon, a connection dropped for room), it steps aside before
running COMMAND and the full CLI (``cli.main.main``) does the job, with its own messages. What
the two paths do once they hold a lease is the same: COMMAND with the lease's DISPLAY and
XAUTHORITY, inherited descriptors closed and SIGPIPE/SIGXFSZ restored (as ``subprocess``
does), SIGTERM/SIGINT/SIGHUP forwarded to it, its exit status (128+N when killed by signal
N), and the lease held until it exits (the daemon destroys the display after, in the
background). tests/test_pool_cli.py checks that both paths behave alike.
"""

from __future__ import annotations

import os
import sys

from ..host.errors import ExitCode  # imported with the package already

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs the CLI time
if TYPE_CHECKING:
    import _socket

_SYSTEMD_SIGNS = ("NOTIFY_SOCKET", "LISTEN_FDS", "JOURNAL_STREAM")


def run_pool_fast(argv: list[str]) -> int | None:
    """COMMAND's exit status on a leased display; None to leave it all to the full CLI."""
    plain = _plain_run_pool(argv)
    if plain is None or any(os.environ.get(sign) for sign in _SYSTEMD_SIGNS):
        return None
    pool, socket_path, command = plain
    path = socket_path or _default_socket()
    if path is None:
        return None
    import _socket  # the C module: `socket` would add its enums and selectors (~4 ms)
    import json

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        try:
            sock.connect(path)
            sock.sendall(json.dumps({"op": "lease", "pool": pool}).encode() + b"\n")
            reply, after = _read_line(sock)
        except OSError:
            reply, after = b"", b""  # (not JSON: handled below)
        try:
            answer = json.loads(reply)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            # No daemon, dropped for room unread, or not our daemon: the full CLI says so
            # (or asks again). Nothing is leased.
            return None
        if not answer.get("ok"):
            code = answer.get("exit_code")
            print(f"xsupervise: {answer.get('error')}", file=sys.stderr)
            valid = isinstance(code, int) and not isinstance(code, bool)
            return code if valid else ExitCode.FAILURE
        return run_on_lease(command, answer["env"], sock.fileno(), after)
    finally:
        sock.close()  # the lease ends with the connection: the daemon destroys the display


def _plain_run_pool(argv: list[str]) -> tuple[str, str | None, list[str]] | None:
    """(pool, socket or None, COMMAND) of `run [--pool NAME] [--socket PATH] -- COMMAND...`."""
    if len(argv) < 3 or argv[0] != "run" or "--" not in argv:
        return None
    cut = argv.index("--")
    options, command = argv[1:cut], argv[cut + 1 :]
    given: dict[str, str] = {}
    while options:
        option, equals, value = options.pop(0).partition("=")
        if option not in ("--pool", "--socket"):
            return None
        if not equals:
            if not options:
                return None
            value = options.pop(0)
        if not value or value.startswith("-"):
            return None  # argparse's business (an error, or a private server for --pool "")
        given[option] = value
    pool = given.get("--pool") or os.environ.get("XSUPERVISE_POOL")
    return (pool, given.get("--socket"), command) if pool and command else None


def _default_socket() -> str | None:
    """``client.default_socket_path()``; None when it would warn (the full CLI warns once)."""
    from ..host.errors import XSuperviseError
    from ..host.paths import RuntimeDir, default_path

    def warned(_message: str) -> None:
        raise _Unusual

    try:
        return os.environ.get("XSUPERVISE_SOCKET") or default_path(RuntimeDir.discover(warn=warned))
    except (_Unusual, XSuperviseError):
        return None


class _Unusual(Exception):
    pass


def _read_line(sock: _socket.socket) -> tuple[bytes, bytes]:
    """One reply line (b"" if the connection closed first), and what came after it in the
    same read: the lease's end, if its display died at once."""
    data = b""
    while b"\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return b"", b""
        data += chunk
    line, _, after = data.partition(b"\n")
    return line, after


def run_on_lease(
    command: list[str], display_env: dict[str, str], lease_fd: int, pushed: bytes = b""
) -> int:
    """Run COMMAND on a leased display (both CLI paths do); its exit status, as shells give it.
    ``lease_fd``: the lease's connection, watched meanwhile (see ``_wait``); ``pushed``: what
    the daemon pushed on it that was read with the reply."""
    import signal

    from ..host.processes import RESTORED_SIGNALS, close_inherited

    try:
        pid = os.posix_spawnp(
            command[0],
            command,
            {**os.environ, **display_env},
            file_actions=close_inherited(),
            setsigdef=RESTORED_SIGNALS,
        )
    except FileNotFoundError:
        print(f"xsupervise: command {command[0]!r} was not found.", file=sys.stderr)
        return ExitCode.COMMAND_NOT_FOUND
    except PermissionError:
        print(f"xsupervise: command {command[0]!r} is not executable.", file=sys.stderr)
        return ExitCode.COMMAND_NOT_RUNNABLE
    except OSError as exc:  # not a program it can run (ENOEXEC)...
        print(f"xsupervise: command {command[0]!r} cannot run: {exc.strerror}.", file=sys.stderr)
        return ExitCode.COMMAND_NOT_RUNNABLE

    def forward(signum: int, _frame: object) -> None:
        os.kill(pid, signum)  # not reaped yet: its pid cannot be reused

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    _wait(pid, lease_fd, display_env["DISPLAY"], pushed)
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return ExitCode.signalled(-status) if status < 0 else status


def _wait(pid: int, lease_fd: int, display: str, pushed: bytes) -> None:
    """Return when COMMAND has ended (not reaped). If its lease ends first (the display
    died, or was revoked: the daemon pushes one line, then closes), say so at once, in one
    line; COMMAND runs on, and its status stands."""
    import select

    if b"\n" in pushed:  # it came with the reply
        print(f"xsupervise: {_ended_line(pushed, display)}", file=sys.stderr, flush=True)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # a kernel before 5.3: COMMAND's status only, as before
        return
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if b"\n" not in pushed:
            poller.register(lease_fd, select.POLLIN)
        while not any(fd == pidfd for fd, _event in poller.poll()):
            try:
                chunk = os.read(lease_fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            pushed += chunk
            if chunk and b"\n" not in pushed:
                continue
            poller.unregister(lease_fd)
            print(f"xsupervise: {_ended_line(pushed, display)}", file=sys.stderr, flush=True)
    finally:
        os.close(pidfd)


def _ended_line(pushed: bytes, display: str) -> str:
    import json

    try:
        message = json.loads(pushed.partition(b"\n")[0]).get("message")
    except (ValueError, AttributeError):
        message = None
    if isinstance(message, str):
        return f"{message} (under COMMAND, which runs on)"
    return (
        f"the daemon closed the connection while COMMAND ran: display {display} is gone "
        "with it (the daemon stopped or died)."
    )
