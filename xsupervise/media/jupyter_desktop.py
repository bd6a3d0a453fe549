"""The Jupyter desktop: an xvnc session behind jupyter-server-proxy, and noVNC behind Jupyter.

Three parts (``xsupervise.jupyter.setup_desktop`` builds the entry point's dict):

- the launch: ``xsupervise start :auto --server xvnc ... -- python -m
  xsupervise.media.jupyter_desktop {unix_socket} [XSTARTUP...]`` through ``server_process``: the
  same budget, containment and clean ends as every launcher of ours;
- the COMMAND run once the display is ready (``main`` here): it links the proxy's
  ``{unix_socket}`` to the session's own 0600 VNC socket (found in its record, by DISPLAY),
  then runs the xstartup-like command (``XSUPERVISE_DESKTOP_XSTARTUP``, e.g.
  ``xfce4-session``), or waits for the end of the session when there is none. When the
  xstartup command exits, the session ends with its status, as TigerVNC's vncserver does;
- a Jupyter server extension (``load``): noVNC's files at ``<base_url>xsupervise-desktop-page/``
  behind Jupyter's own login (``@web.authenticated``), its page pointed at the proxy's
  WebSocket, ``<base_url>xsupervise-desktop/`` (a ``raw_socket_proxy``: bytes to the socket).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys

NAME = "xsupervise-desktop"
PAGE_PATH = "xsupervise-desktop-page/"
XSTARTUP_ENV = "XSUPERVISE_DESKTOP_XSTARTUP"
WINDOW_MANAGERS = ("openbox", "xfwm4", "fluxbox", "icewm", "twm")  # the first installed


def _session_vnc_socket(display: str) -> str:
    from ..host.paths import RuntimeDir
    from ..launch.server import live_records
    from .vnc_attach import vnc_socket_path

    for record in live_records(RuntimeDir.discover()):
        if record.display == display and (path := vnc_socket_path(record.vnc)):
            return path
    raise SystemExit(f"xsupervise: no xvnc session of ours runs {display}; nothing to link.")


def link(target: str, path: str) -> None:
    """Make ``path`` a symlink to ``target``, atomically; only a link or a socket of ours is
    replaced there (the proxy's own private directory), never a regular file."""
    import stat

    try:
        existing = os.lstat(path)
        if not (stat.S_ISLNK(existing.st_mode) or stat.S_ISSOCK(existing.st_mode)):
            raise SystemExit(f"xsupervise: {path} exists and is not a socket; not replacing it.")
    except FileNotFoundError:
        pass
    temporary = f"{path}.{os.getpid()}"
    os.symlink(target, temporary)
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    """``{unix_socket} [XSTARTUP...]``, run by ``xsupervise start`` on the ready display."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        raise SystemExit("usage: python -m xsupervise.media.jupyter_desktop SOCKET [XSTARTUP...]")
    path, command = args[0], args[1:]
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # the session's end
        signal.signal(signum, lambda *_: sys.exit(0))  # (so that the link goes too)
    link(_session_vnc_socket(os.environ["DISPLAY"]), path)
    try:
        if command:
            return subprocess.call(command)
        while True:
            signal.pause()
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def xstartup() -> list[str]:
    return shlex.split(os.environ.get(XSTARTUP_ENV, ""))


def window_manager() -> str | None:
    """A window manager to run when no xstartup command is given (a desktop session brings
    its own): the first one installed."""
    import shutil

    return None if xstartup() else next(filter(shutil.which, WINDOW_MANAGERS), None)


def load(serverapp: object) -> None:
    """The server extension: noVNC's page behind Jupyter's login."""
    from jupyter_server.base.handlers import JupyterHandler
    from jupyter_server.utils import url_path_join
    from tornado import web

    from ..host.errors import EnvironmentProblem
    from .view_web import PAGE, find_novnc, page_query

    web_app = serverapp.web_app  # type: ignore[attr-defined]
    base_url = web_app.settings["base_url"]
    try:
        novnc = find_novnc()
    except EnvironmentProblem as problem:
        serverapp.log.warning("xsupervise desktop: %s", problem)  # type: ignore[attr-defined]
        return

    class Page(JupyterHandler):
        @web.authenticated
        def get(self) -> None:
            websocket = url_path_join(base_url, NAME) + "/"
            self.redirect(f"{PAGE}?{page_query(websocket.lstrip('/'), False)}")

    # Not Jupyter's AuthenticatedFileHandler: it sandboxes what it serves (CSP "sandbox"),
    # which gives the page an opaque origin, and Jupyter then refuses its WebSocket.
    class Files(JupyterHandler, web.StaticFileHandler):
        @web.authenticated
        async def get(self, path: str, include_body: bool = True) -> None:  # type: ignore[override]
            await web.StaticFileHandler.get(self, path, include_body)

    prefix = url_path_join(base_url, PAGE_PATH)
    web_app.add_handlers(
        ".*$",
        [
            (prefix + "?", Page),
            (prefix + "(.+)", Files, {"path": novnc}),
        ],
    )


if __name__ == "__main__":
    sys.exit(main())
