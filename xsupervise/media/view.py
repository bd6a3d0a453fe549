"""``xsupervise view [:N|NAME]``: a live view of a session of ours, in the browser.

The session is found in our runtime directory (so it is ours: same uid), by display or name.
Its VNC endpoint is the xvnc profile's own unix socket, or a companion VNC server attached to
the display (vnc_attach.py); a web server (view_web.py) on 127.0.0.1 and a free port serves
noVNC and bridges its WebSocket to that socket. One URL is printed, with a random token in
its path: without it, page and WebSocket get 403. The view ends on SIGINT/SIGTERM, and when
the session's X server exits (its pidfd, pinned by start time) or the companion does; the
companion and our private directory go with it.
"""

from __future__ import annotations

import argparse
import sys

from ..host import errors, log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..host.paths import RuntimeDir
    from ..launch.server import SessionRecord

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "view",
        help="a live view of a display of ours in the browser (noVNC)",
        description="Serve noVNC and a WebSocket bridge to the display's VNC endpoint (the "
        "xvnc profile's own socket, or a VNC server attached to the display) on 127.0.0.1; "
        "print one URL with a random token, and stay until SIGINT/SIGTERM or the end of the "
        "session.",
        epilog="exit codes: 0 stopped by a signal, or the session ended; 2 usage; 3/4 the "
        "attached VNC server did not start; 5 tornado, noVNC or x0vncserver missing; 6 no "
        "such session",
    )
    parser.add_argument(
        "target",
        nargs="?",
        metavar=":N|NAME",
        help="a display or session name of ours (default: the only session running)",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="the port to listen on (default: a free one)"
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1",
        metavar="ADDR",
        help="the address to listen on (default: 127.0.0.1; another one is warned about)",
    )
    parser.add_argument(
        "--view-only",
        action="store_true",
        help="forward no input: an attached VNC server that ignores keys, pointer and resizes",
    )


def find_session(target: str | None, runtime: RuntimeDir) -> SessionRecord:
    """The live, ready session of ours named by ``target`` (':N' or a name; None: the only one)."""
    from ..launch.server import live_records

    records = [record for record in live_records(runtime) if record.display]
    if target is None:
        if len(records) != 1:
            raise errors.UsageError(
                f"{len(records)} displays of ours run here: give the display (:N) or session "
                "name to view ('xsupervise list' shows them)."
            )
        return records[0]
    chosen = [record for record in records if target in (record.display, record.name)]
    if not chosen:
        raise errors.NoSuchSession(
            f"no session of ours with display or name {target} is running (runtime directory "
            f"{runtime.path}); 'xsupervise list' shows what runs."
        )
    return chosen[0]


def handle(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import shutil

    from ..host.paths import RuntimeDir
    from ..host.processes import Pinned
    from .view_web import find_novnc, require_tornado
    from .vnc_attach import AttachedVnc, vnc_socket_path

    if not 0 <= args.port < 65536:
        raise errors.UsageError(f"--port {args.port} is not a port number (0: a free one).")
    runtime = RuntimeDir.discover()
    record = find_session(args.target, runtime)
    require_tornado()
    novnc = find_novnc()
    server = Pinned.pin(record.server_pid, record.server_ticks)
    if server is None:
        raise errors.NoSuchSession(f"display {record.display}'s X server has just exited.")
    private = _private_dir(runtime)
    companion = None
    try:
        vnc_path = None if args.view_only else vnc_socket_path(record.vnc)
        watched = [server.pidfd]
        if vnc_path is None:
            number = int(str(record.display)[1:])
            companion = AttachedVnc(number, record.xauthority, private, args.view_only)
            watched.append(companion.start().pidfd)
            vnc_path = companion.path
        import asyncio

        ended = asyncio.run(_serve(args, vnc_path, novnc, watched, str(record.display)))
    finally:
        server.close()
        if companion is not None:
            companion.stop()
        shutil.rmtree(private, ignore_errors=True)
    if ended:
        print(f"xsupervise: {ended}; the view stopped.", file=sys.stderr, flush=True)
    return errors.ExitCode.OK


def _private_dir(runtime: RuntimeDir) -> str:
    """A 0700 directory for the attached VNC server's socket and log, named after this
    process (pid and start ticks); those of views that were killed are removed first."""
    import os
    import shutil
    import tempfile

    from ..host.processes import same_process
    from ..launch.server import own_identity

    for entry in os.scandir(runtime.path):
        word, owner, started, *_ = [*entry.name.split("-"), "", "", ""]
        if (
            word == "view"
            and owner.isdigit()
            and started.isdigit()
            and entry.is_dir(follow_symlinks=False)
            and not same_process(int(owner), int(started))
        ):
            shutil.rmtree(entry.path, ignore_errors=True)
    pid, ticks = own_identity()
    return tempfile.mkdtemp(prefix=f"view-{pid}-{ticks}-", dir=runtime.path)


async def _serve(
    args: argparse.Namespace, vnc_path: str, novnc: str, watched: list[int], display: str
) -> str:
    """Serve until a signal ('' returned) or a watched pidfd ends (what ended, returned)."""
    import asyncio
    import secrets
    import signal

    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    from .view_web import PAGE, make_app, page_query

    token = secrets.token_urlsafe(24)
    try:
        sockets = bind_sockets(args.port, address=args.listen)
    except OSError as exc:
        raise errors.EnvironmentProblem(
            f"cannot listen on {args.listen}:{args.port} ({exc.strerror}); choose another "
            "--port, or leave it out to take a free one."
        ) from None
    http = HTTPServer(make_app(vnc_path, novnc, token))
    http.add_sockets(sockets)
    host, port = sockets[0].getsockname()[:2]
    if args.listen not in _LOOPBACK:
        log.get().warning(
            "the view of %s listens on %s:%d, beyond this machine: anyone who can reach it "
            "and learns the URL can %s the display.",
            display,
            args.listen,
            port,
            "see" if args.view_only else "see and control",
        )
    if args.listen in ("0.0.0.0", "::", ""):  # every address: print one others can use
        import socket

        host = socket.gethostname()
    shown = f"[{host}]" if ":" in host else host
    query = page_query(f"{token}/websockify", args.view_only)
    print(f"http://{shown}:{port}/{token}/{PAGE}?{query}", flush=True)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[str] = loop.create_future()

    def finish(why: str) -> None:
        if not done.done():
            done.set_result(why)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, finish, "")
    whats = ["its X server exited", "the attached VNC server exited"]
    for fd, what in zip(watched, whats, strict=False):
        loop.add_reader(fd, finish, f"display {display} ended ({what})")
    try:
        return await done
    finally:
        for fd in watched:
            loop.remove_reader(fd)
        http.stop()
        await http.close_all_connections()
