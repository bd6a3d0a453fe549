"""An example Jupyter launcher on a supervised display.

jupyter-server-proxy calls ``setup_xinfo()`` (registered under the
``jupyter_serverproxy_servers`` entry point ``xinfo``) and serves the app at
``<base_url>xinfo/``. xsupervise starts a verified X display first, runs the app on it, and
keeps relaunches within its restart budget.
"""

from __future__ import annotations

import sys

import xsupervise.jupyter


def setup_xinfo() -> dict:
    return xsupervise.jupyter.server_process(
        "xinfo",
        # {port} is filled in by jupyter-server-proxy, {display} by xsupervise once the
        # display answers.
        [
            sys.executable,
            "-m",
            "xsupervise_xinfo.app",
            "--port",
            "{port}",
            "--display",
            "{display}",
        ],
        title="X display facts",
        screen="1024x768x24",
    )
