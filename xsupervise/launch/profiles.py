"""X server profiles: ``--server NAME`` for the servers we know, or a raw command.

A profile knows its binary (and Debian package), how it spells ``--screen``, and what else it
needs: Xephyr a DISPLAY to nest in, Xvnc a private VNC endpoint (vnc.py), Xorg a dummy
configuration (xorg_conf.py), Xwayland a headless compositor (compositor.py). A raw command
(its first word is not a profile name) gets only ``-displayfd``, ``-auth`` and
``-nolisten tcp``: ``--screen``, ``glx = false`` and ``--vnc-listen`` are refused with it.
docs/servers.md says what each profile adds, needs and guarantees.
"""

from __future__ import annotations

import os

from ..host import errors
from ..host.paths import ensure_private_dir, which

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .compositor import Companion
    from .server import SessionFiles
    from .settings import Settings
    from .vnc_endpoint import VncEndpoint

DEFAULT_SCREEN = "1280x1024x24"


class Profile:
    """One built-in server: its binaries (first found wins), package and one-line summary."""

    __slots__ = ("binaries", "name", "package", "summary")

    def __init__(self, name: str, binaries: tuple[str, ...], package: str, summary: str):
        self.name, self.binaries, self.package, self.summary = name, binaries, package, summary

    def binary(self) -> str | None:
        """The binary's path, or None when it is not installed."""
        for candidate in self.binaries:
            found = which(candidate)
            if found:
                return found
        return None


PROFILES = {
    profile.name: profile
    for profile in (
        Profile("xvfb", ("Xvfb",), "xvfb", "virtual framebuffer (the default)"),
        Profile("xephyr", ("Xephyr",), "xserver-xephyr", "nested in the caller's DISPLAY"),
        Profile(
            "xvnc",
            ("Xvnc", "Xtigervnc"),
            "tigervnc-standalone-server",
            "TigerVNC: VNC on a private unix socket",
        ),
        Profile(
            "xorg-dummy",
            ("/usr/lib/xorg/Xorg", "/usr/libexec/Xorg", "Xorg"),  # the binary, not Xorg.wrap
            "xserver-xorg-core xserver-xorg-video-dummy",
            "Xorg with the dummy driver (real Xorg modules, RandR)",
        ),
        Profile(
            "xwayland",
            ("Xwayland",),
            "xwayland weston",
            "Xwayland on a headless weston",
        ),
    )
}


def split_server(server: tuple[str, ...]) -> tuple[Profile | None, tuple[str, ...]]:
    """(profile, its extra arguments), or (None, the raw command)."""
    profile = PROFILES.get(server[0])
    return (profile, server[1:]) if profile is not None else (None, server)


def parse_screen(screen: str) -> tuple[int, int, int]:
    width, height, depth = (int(part) for part in screen.split("x"))
    return width, height, depth


class LaunchPlan:
    """What launch_steps spawns: the server's argv and environment, a companion started
    before it (Xwayland's compositor), the VNC endpoint to report, the package to name."""

    __slots__ = ("argv", "companion", "env", "package", "vnc")

    def __init__(self, argv: list[str], package: str | None = None):
        self.argv = argv
        self.env: dict[str, str] = {}
        self.companion: Companion | None = None
        self.vnc: VncEndpoint | None = None
        self.package = package


def session_dir(files: SessionFiles) -> str:
    """The session's private directory for a profile's files (removed with the session)."""
    path = files.runtime.session_dir(files.token)
    ensure_private_dir(path)
    return path


def plan_launch(
    settings: Settings, number: int | None, displayfd: int, files: SessionFiles
) -> LaunchPlan:
    """The launch of ``settings.server`` (a profile or a raw command), or a UsageError /
    EnvironmentProblem line before anything is spawned."""
    from .x11 import server_argv

    profile, extra = split_server(settings.server)
    if profile is None:
        _refuse_for_raw(settings)
        return LaunchPlan(server_argv(extra, number, displayfd, files.auth_path))
    binary = profile.binary()
    if binary is None:
        raise errors.ServerNotFound(
            f"server profile {profile.name} needs {profile.binaries[0]}, which is not "
            f"installed; install it (Debian: apt-get install {profile.package}) or name "
            "another with --server (see 'xsupervise servers')."
        )
    if settings.vnc_listen is not None and profile.name != "xvnc":
        raise errors.UsageError(
            f"--vnc-listen applies to the xvnc profile only, not to {profile.name}."
        )
    screen = settings.screen or DEFAULT_SCREEN
    argv = [*server_argv((binary,), number, displayfd, files.auth_path), "-noreset"]
    if not settings.glx:
        argv += ["-extension", "GLX"]
    plan = LaunchPlan(argv, profile.package)
    width, height, depth = parse_screen(screen)
    if profile.name == "xvfb":
        argv += ["-screen", "0", screen]
    elif profile.name == "xephyr":
        _require_display()
        argv += ["-screen", screen]
    elif profile.name == "xvnc":
        from .vnc import vnc_args

        args, plan.vnc = vnc_args(settings.vnc_listen, session_dir(files))
        argv += ["-geometry", f"{width}x{height}", "-depth", str(depth), *args]
    elif profile.name == "xorg-dummy":
        from .xorg_conf import xorg_args

        argv += xorg_args(width, height, depth, session_dir(files))
    else:  # xwayland
        from .compositor import Weston

        if depth != 24:
            raise errors.UsageError(
                f"the xwayland profile cannot honour --screen {screen}: Xwayland's root "
                "window is always 24 bits deep; use depth 24 or another profile."
            )
        weston = Weston(width, height, session_dir(files))
        plan.companion = weston
        plan.env = weston.client_env()
    argv += extra
    return plan


def _refuse_for_raw(settings: Settings) -> None:
    command = " ".join(settings.server)
    program = os.path.basename(settings.server[0])
    # `--server Xvfb` was the way before profiles: name the profile that does what was meant.
    profile = next((p for p in PROFILES.values() if program in p.binaries), None)
    use = f"--server {profile.name}" if profile is not None else "a profile"
    for given, flag in (
        (settings.screen is not None, "--screen"),
        (not settings.glx, "glx = false"),
        (settings.vnc_listen is not None, "--vnc-listen"),
    ):
        if given:
            raise errors.UsageError(
                f"{flag} needs a server profile, not the raw command {command!r} (which gets "
                f"only -displayfd, -auth and -nolisten tcp); use {use}, or put it in the "
                "command (see 'xsupervise servers')."
            )


def _require_display() -> None:
    display = os.environ.get("DISPLAY")
    if not display:
        raise errors.EnvironmentProblem(
            "the xephyr profile opens a window on the caller's display, and DISPLAY is not "
            "set; run it inside an X session (DISPLAY and XAUTHORITY set), or use xvfb."
        )
