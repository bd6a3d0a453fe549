"""A small HTTP app that answers with facts read from its X server by a real X client.

    python -m xsupervise_xinfo.app --port 8000 --display :5

``GET /`` replies with JSON: the display, the server's vendor and release, and the screen's
size and depth, as ``xdpyinfo`` reads them over the X protocol (with $XAUTHORITY's cookie).
A failure of the X client is a 502 carrying its message.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

XDPYINFO_TIMEOUT = 10.0  # seconds; a display that does not answer by then is reported as such


class XClientError(Exception):
    pass


def read_display_facts(display: str) -> dict:
    """Ask the X server about itself through xdpyinfo."""
    try:
        result = subprocess.run(
            ["xdpyinfo", "-display", display],
            capture_output=True,
            text=True,
            timeout=XDPYINFO_TIMEOUT,
        )
    except FileNotFoundError:
        raise XClientError(
            "xdpyinfo is not installed (Debian/Ubuntu: apt install x11-utils)"
        ) from None
    except OSError as error:  # e.g. out of processes: still one clear answer, not a dropped one
        raise XClientError(f"cannot run xdpyinfo: {error}") from None
    except subprocess.TimeoutExpired:
        raise XClientError(
            f"xdpyinfo got no answer from {display} within {XDPYINFO_TIMEOUT:g} s"
        ) from None
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise XClientError(f"xdpyinfo failed on {display}: {last}")
    return parse_xdpyinfo(result.stdout, display)


def parse_xdpyinfo(text: str, display: str) -> dict:
    def field(pattern: str) -> str:
        match = re.search(pattern, text, re.MULTILINE)
        if match is None:
            raise XClientError(f"xdpyinfo's output for {display} has no {pattern!r}")
        return match.group(1)

    width, height = field(r"^\s*dimensions:\s+(\d+x\d+) pixels").split("x")
    return {
        "display": display,
        "vendor": field(r"^vendor string:\s+(.*)$"),
        "vendor_release": int(field(r"^vendor release number:\s+(\d+)")),
        "screens": int(field(r"^number of screens:\s+(\d+)")),
        "width": int(width),
        "height": int(height),
        "depth": int(field(r"^\s*depth of root window:\s+(\d+) planes")),
        "x_client": "xdpyinfo",
    }


def make_handler(display: str):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            try:
                status, body = 200, read_display_facts(display)
            except XClientError as error:
                status, body = 502, {"error": str(error)}
            payload = (json.dumps(body, indent=2) + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base's name)
            pass  # one line per request would drown Jupyter's own log

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument("--display", required=True, help="X display, e.g. :5")
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args.display))
    with server:
        server.serve_forever()


if __name__ == "__main__":
    main()
