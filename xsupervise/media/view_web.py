"""The view's web side: noVNC's page and a WebSocket bridge to a VNC unix socket.

Built on tornado (the ``view`` extra; Jupyter's own web server): its StaticFileHandler
serves noVNC's files (Debian's ``novnc`` package, found at run time: we ship none of it) and
its WebSocketHandler carries the VNC stream, byte for byte, to the unix socket. Every path
starts with a random token: ``/TOKEN/vnc_lite.html`` and ``/TOKEN/websockify``, so that the
page's own relative requests carry it too; any request without it gets 403, the WebSocket
upgrade included (checked before the upgrade). Responses say ``Referrer-Policy:
no-referrer`` and ``Cache-Control: no-store``: the token must not leak through either.
"""

from __future__ import annotations

import asyncio
import hmac
import os
from collections.abc import Mapping

from ..host import errors

NOVNC_DIRS = ("/usr/share/novnc", "/usr/share/webapps/novnc", "/usr/local/share/novnc")
PAGE = "vnc_lite.html"  # noVNC's minimal client: connects at once, reads path/view_only/scale
_CHUNK = 256 * 1024


def find_novnc(environ: Mapping[str, str] = os.environ) -> str:
    """The directory of noVNC's web files (``XSUPERVISE_NOVNC``, else the usual places)."""
    explicit = environ.get("XSUPERVISE_NOVNC")
    for directory in [explicit] if explicit else NOVNC_DIRS:
        if os.path.isfile(os.path.join(directory, PAGE)):
            return directory
    where = f"XSUPERVISE_NOVNC={explicit}" if explicit else ", ".join(NOVNC_DIRS)
    raise errors.EnvironmentProblem(
        f"noVNC's web files ({PAGE}) are not in {where}; install them (Debian: apt-get "
        "install novnc), or point XSUPERVISE_NOVNC at a noVNC directory."
    )


def require_tornado() -> None:
    try:
        import tornado  # noqa: F401
    except ImportError:
        raise errors.EnvironmentProblem(
            "xsupervise view needs tornado, which is not installed; install the extra: "
            "pip install 'xsupervise[view]'."
        ) from None


def page_query(path: str, view_only: bool) -> str:
    """noVNC's query for ``PAGE``: where its WebSocket is, scaled to the window."""
    from urllib.parse import quote

    return f"path={quote(path, safe='/')}&scale=true" + ("&view_only=true" if view_only else "")


def make_app(vnc_path: str, novnc: str, token: str) -> object:
    """The tornado Application: ``/TOKEN/websockify`` (the bridge), ``/TOKEN/...`` (noVNC)."""
    from tornado import web, websocket

    def token_ok(given: str) -> bool:
        return hmac.compare_digest(given.encode(), token.encode())

    class Private(web.RequestHandler):
        def set_default_headers(self) -> None:
            self.set_header("Cache-Control", "no-store")
            self.set_header("Referrer-Policy", "no-referrer")

    class Forbidden(Private):
        def prepare(self) -> None:
            raise web.HTTPError(403)

    class Files(web.StaticFileHandler, Private):
        def prepare(self) -> None:
            if not token_ok(self.path_args[0]):
                raise web.HTTPError(403)

        def get(self, _token: str, path: str, include_body: bool = True) -> object:  # type: ignore[override]
            return super().get(path, include_body)

        def head(self, _token: str, path: str) -> object:  # type: ignore[override]
            return super().get(path, include_body=False)

        def compute_etag(self) -> None:
            return None

    class Bridge(websocket.WebSocketHandler, Private):
        """One browser connection <-> one connection to the VNC server's unix socket."""

        writer: asyncio.StreamWriter | None = None
        pump: asyncio.Task[None] | None = None

        def prepare(self) -> None:
            if not token_ok(self.path_args[0]):
                raise web.HTTPError(403)

        def select_subprotocol(self, subprotocols: list[str]) -> str | None:
            return "binary" if "binary" in subprotocols else None  # websockify's name

        async def open(self, *_args: str) -> None:
            try:
                reader, self.writer = await asyncio.open_unix_connection(vnc_path)
            except OSError as exc:
                self.close(1011, f"VNC server unreachable: {exc.strerror}")
                return
            self.set_nodelay(True)
            self.pump = asyncio.ensure_future(self._to_browser(reader))

        async def _to_browser(self, reader: asyncio.StreamReader) -> None:
            try:
                while chunk := await reader.read(_CHUNK):
                    await self.write_message(chunk, binary=True)  # waits: back-pressure
            except (websocket.WebSocketClosedError, OSError):
                pass
            self.close()

        def on_message(self, message: str | bytes) -> None:
            if self.writer is not None and not self.writer.is_closing():
                self.writer.write(message.encode() if isinstance(message, str) else message)

        def on_close(self) -> None:
            if self.writer is not None:
                self.writer.close()
            if self.pump is not None:
                self.pump.cancel()

    return web.Application(
        [
            (r"/([^/]*)/websockify", Bridge),
            (r"/([^/]*)/(.*)", Files, {"path": novnc, "default_filename": PAGE}),
        ],
        default_handler_class=Forbidden,
        websocket_max_message_size=_CHUNK,
        log_function=lambda _handler: None,  # no access log: the paths carry the token
    )
