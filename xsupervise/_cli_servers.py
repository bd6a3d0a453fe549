"""`xsupervise servers`: the server profiles, whether each is installed, binary and version;
and the display options that choose a profile (--server, --screen, --glx, --vnc-listen)."""

from __future__ import annotations

import argparse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from argparse import _ArgumentGroup

    from ._cli_parsers import Subparsers

_VERSION_TIMEOUT = 5.0  # seconds a server may take to print its version


def add_server_options(group: _ArgumentGroup) -> None:
    group.add_argument(
        "--server",
        metavar="NAME|CMD",
        help="a server profile: xvfb, xephyr, xvnc, xorg-dummy, xwayland (see 'xsupervise "
        "servers'), or a raw X server command, which gets only -displayfd, -auth and "
        "-nolisten tcp (XSUPERVISE_SERVER; default: xvfb)",
    )
    group.add_argument(
        "--screen",
        metavar="WxHxD",
        help="screen geometry, for a profile (XSUPERVISE_SCREEN; default: 1280x1024x24)",
    )
    group.add_argument(
        "--glx",
        metavar="on|off",
        help="the GLX extension, for OpenGL clients; off starts faster "
        "(XSUPERVISE_GLX; default: on)",
    )
    group.add_argument(
        "--vnc-listen",
        metavar="ADDR[:PORT]",
        help="xvnc: also serve VNC on this TCP address, unauthenticated "
        "(XSUPERVISE_VNC_LISTEN; default: only a private unix socket)",
    )


def add_servers(commands: Subparsers) -> None:
    servers = commands.add_parser(
        "servers",
        help="list the server profiles: installed?, binary, version",
        description="The built-in server profiles (--server NAME): whether each is installed, "
        "its binary and its version.",
    )
    servers.add_argument("--json", action="store_true", help="one JSON array")


def version(binary: str) -> str | None:
    """The server's version line (``X -version`` prints it on stderr), or None."""
    import subprocess

    try:
        done = subprocess.run(
            [binary, "-version"],
            capture_output=True,
            timeout=_VERSION_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in (done.stderr + done.stdout).decode("utf-8", "replace").splitlines():
        if line.startswith("X Protocol"):
            continue
        if any(word in line for word in ("X Server", "Version", "TigerVNC")):
            return line.strip()
    return None


def profile_rows() -> list[dict[str, object]]:
    from ._profiles import PROFILES

    rows: list[dict[str, object]] = []
    for profile in PROFILES.values():
        binary = profile.binary()
        needs = [binary] if binary else []
        if profile.name == "xwayland":
            import shutil

            weston = shutil.which("weston")
            binary = binary if weston else None
        rows.append(
            {
                "profile": profile.name,
                "installed": binary is not None,
                "binary": binary or (needs[0] if needs else profile.binaries[0]),
                "version": version(binary) if binary else None,
                "package": profile.package,
                "summary": profile.summary,
            }
        )
    return rows


def servers(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    rows = profile_rows()
    if args.json:
        import json

        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'PROFILE':11} {'INSTALLED':9} {'BINARY':24} VERSION")
    for row in rows:
        installed = "yes" if row["installed"] else "no"
        version_text = row["version"] or f"(apt-get install {row['package']})"
        print(f"{row['profile']:11} {installed:9} {row['binary']!s:24} {version_text}")
    return 0
