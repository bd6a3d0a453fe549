"""`xsupervise servers`: the server profiles, whether each is installed, binary and version.
(The display options that choose a profile are cli.parsers.add_server_options.)"""

from __future__ import annotations

import argparse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .parsers import Subparsers

_VERSION_TIMEOUT = 5.0  # seconds a server may take to print its version


def add_servers(commands: Subparsers) -> None:
    servers = commands.add_parser(
        "servers",
        help="list the server profiles: installed?, binary, version",
        description="The built-in server profiles (--server NAME): whether each is installed, "
        "its binary and its version.",
    )
    servers.add_argument("--json", action="store_true", help="one JSON array")


def _output(argv: list[str]) -> str:
    import subprocess

    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            timeout=_VERSION_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stderr + done.stdout).decode("utf-8", "replace")


def version(binary: str) -> str | None:
    """The server's version line (``X -version``, on stderr); Xvfb and Xephyr have no
    -version: then the version of the package that installed it (dpkg, else rpm)."""
    for line in _output([binary, "-version"]).splitlines():
        if line.startswith("X Protocol"):
            continue
        if any(word in line for word in ("X Server", "Version", "TigerVNC")):
            return line.strip()
    import os

    path = os.path.realpath(binary)
    owner = _output(["dpkg-query", "-S", path]).partition(":")[0].strip()
    if owner and " " not in owner:
        found = _output(["dpkg-query", "-W", "-f=${Version}", owner]).strip()
        if found:
            return f"{owner} {found} (package)"
    found = _output(["rpm", "-qf", path]).strip()
    return f"{found} (package)" if found and " " not in found else None


def profile_rows() -> list[dict[str, object]]:
    from ..launch.profiles import PROFILES

    rows: list[dict[str, object]] = []
    for profile in PROFILES.values():
        binary = profile.binary()
        installed = binary is not None
        if profile.name == "xwayland":  # and its compositor
            import shutil

            installed = installed and shutil.which("weston") is not None
        rows.append(
            {
                "profile": profile.name,
                "installed": installed,
                "binary": binary or profile.binaries[0],
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
