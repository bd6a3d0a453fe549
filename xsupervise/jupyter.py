"""Build jupyter-server-proxy server-process dicts that run a launcher on a supervised display.

jupyter-server-proxy relaunches a failing process at once and without limit, and on its
readiness timeout SIGKILLs only its direct child. Wrapped in ``xsupervise start :auto
--name NAME --substitute -- COMMAND``, that child is an xsupervise supervisor:

- the X server is verified before COMMAND runs, and dies with the supervisor (PDEATHSIG),
  as does COMMAND: a SIGKILL leaks nothing;
- the supervisor stops cleanly when Jupyter exits, however it exits (``--exit-with-parent``);
- every launch under one NAME (stable per user and launcher) spends one restart budget, so
  relaunches wait out the backoff instead of spawning X servers: no storm. With
  ``--relaunched`` a missing X server, and an app that fails before it has run
  ``reset_after`` seconds, count too;
- ``{display}``, ``{display_number}`` and ``{xauthority}`` in COMMAND are filled in by
  xsupervise once the display is ready; ``{port}``, ``{unix_socket}`` and ``{base_url}`` are
  left for jupyter-server-proxy.

    def setup_desktop():           # registered under jupyter_serverproxy_servers
        return xsupervise.jupyter.server_process(
            "desktop", ["websockify", "--web", WEB, "{port}", "--", "x11vnc", "-display",
                        "{display}"], title="Desktop")
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence

from .launch.settings import Settings, load_settings

__all__ = ["server_process", "session_name", "proxy_timeout", "APP_START_SECONDS", "setup_desktop"]

# Substituted by jupyter-server-proxy (with str.format) before the command runs.
_PROXY_FIELDS = ("port", "unix_socket", "base_url")
APP_START_SECONDS = 30.0  # default allowance for the launcher's own app to start listening


# In a command or environment value, as the launcher author writes it: '{{' and '}}' (kept
# literal to the end), a field jupyter-server-proxy fills (with an optional conversion or
# format spec), or a lone brace (our own fields are made of those).
_TOKEN = re.compile(
    r"\{\{|\}\}|\{(?:" + "|".join(_PROXY_FIELDS) + r")(?:![rsa])?(?::[^{}]*)?\}|[{}]"
)


def _escape(arg: str) -> str:
    """Write ``arg`` so that jupyter-server-proxy's ``str.format`` fills only its own fields
    and hands every other brace on to ``start --substitute``, which fills ours and turns
    '{{' and '}}' into single braces."""
    # A proxy field ({port}, {port:d}, ...) stays as it is; a brace, single or doubled, is
    # doubled, so that the proxy's format gives back exactly what --substitute expects.
    return _TOKEN.sub(lambda match: match.group() * (2 if len(match.group()) <= 2 else 1), arg)


def session_name(launcher: str, user: str | None = None) -> str:
    """The restart-budget key: stable per user and launcher, e.g. 'jupyter-alice-desktop'."""
    if user is None:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # a container's uid with no passwd entry and no $USER
            user = f"uid{os.getuid()}"
    return f"jupyter-{user}-{launcher}"


def proxy_timeout(settings: Settings | None = None, app_start: float = APP_START_SECONDS) -> float:
    """How long jupyter-server-proxy should wait for the app: a start may first wait out the
    longest backoff, then the X server's deadline, then the app's own start."""
    settings = settings or load_settings()
    return settings.backoff_max + settings.displayfd_timeout + app_start


def server_process(
    launcher: str,
    command: Sequence[str],
    *,
    title: str | None = None,
    screen: str | None = None,
    server: str | Sequence[str] | None = None,
    environment: Mapping[str, str] | None = None,
    unix_socket: bool = False,
    app_start: float = APP_START_SECONDS,
    xsupervise: Sequence[str] | None = None,
    **extra: object,
) -> dict[str, object]:
    """The dict a ``jupyter_serverproxy_servers`` entry point returns for ``launcher``.

    ``command`` is the launcher's own command; ``extra`` goes into the dict unchanged (e.g.
    ``absolute_url``, ``new_browser_tab``). ``xsupervise``: how to run xsupervise (default: this
    Python's ``-m xsupervise``).
    """
    wrapper = list(xsupervise or (sys.executable, "-m", "xsupervise"))
    wrapper += [
        "start",
        ":auto",
        "--name",
        session_name(launcher),
        "--substitute",
        "--relaunched",
        "--exit-with-parent",
    ]
    if xsupervise is None:
        # jupyter-server-proxy calls us in the Jupyter server process, which will be the parent.
        wrapper += ["--parent-pid", str(os.getpid())]
    if screen:
        wrapper += ["--screen", screen]
    if server:
        wrapper += ["--server", server if isinstance(server, str) else shlex.join(server)]
    spec: dict[str, object] = {
        "command": [*(_escape(arg) for arg in wrapper), "--", *(_escape(arg) for arg in command)],
        "timeout": proxy_timeout(load_settings({"screen": screen, "server": server}), app_start),
        # jupyter-server-proxy str.formats the environment too.
        "environment": {_escape(key): _escape(value) for key, value in (environment or {}).items()},
        "launcher_entry": {"enabled": True, "title": title or launcher},
        **extra,
    }
    if unix_socket:
        spec["unix_socket"] = True
    return spec


def setup_desktop() -> dict[str, object]:
    """The ``xsupervise-desktop`` entry point (launcher title "Desktop"): a supervised xvnc
    session whose VNC socket jupyter-server-proxy bridges to a WebSocket (``raw_socket_proxy``,
    jupyter-server-proxy >= 4.3), viewed with noVNC at ``<base_url>xsupervise-desktop-page/``
    behind Jupyter's login (the server extension below). ``XSUPERVISE_DESKTOP_XSTARTUP``: the
    command run on the display (e.g. ``xfce4-session``); without one, the first window manager
    installed. See docs/jupyter.md."""
    from .media import jupyter_desktop as desktop

    environment = {}
    wm = desktop.window_manager()
    if wm is not None:
        environment["XSUPERVISE_WM"] = wm
    return server_process(
        desktop.NAME,
        [sys.executable, "-m", desktop.__name__, "{unix_socket}", *desktop.xstartup()],
        title="Desktop",
        server="xvnc",
        environment=environment,
        unix_socket=True,
        raw_socket_proxy=True,
        app_start=10.0,
        launcher_entry={"enabled": True, "title": "Desktop", "path_info": desktop.PAGE_PATH},
    )


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """Jupyter's hook (enabled by jupyter_server_config.d/xsupervise.json): the desktop's page."""
    return [{"module": "xsupervise.jupyter"}]


def _load_jupyter_server_extension(serverapp: object) -> None:
    from .media.jupyter_desktop import load

    load(serverapp)
