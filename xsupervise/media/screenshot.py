"""A PNG of a display, or of one window on it, over a connection authenticated by its cookie.

``capture(":5", "/run/.../5.xauth", "shot.png")`` grabs the root window with mss and
writes it with mss's PNG writer: no image encoding of ours. mss's default backend (XCB
ShmGetImage/GetImage) refuses some servers' visuals (TigerVNC's Xvnc: "drawable's visual
not found in screen's supported visuals"); its xlib backend takes them, so a capture tries
the default, then xlib.
A window is captured as it shows on the screen: the part of the root window it covers
(what a user would see, overlapping windows included), clipped to the screen.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from typing import TYPE_CHECKING

from ..host.errors import ScreenshotError

if TYPE_CHECKING:
    from mss import MSS

__all__ = ["ScreenshotError", "capture"]

# libxcb reads the cookie file's name from the XAUTHORITY variable while it connects, and
# nothing else lets us hand mss the cookie: the variable is set only around the connect,
# under this lock, and restored at once, so concurrent captures cannot mix their cookies.
_ENVIRON_LOCK = threading.Lock()
# The default first (XCB, MIT-SHM: the fastest), then xlib for the visuals XCB's refuses.
_BACKENDS = ("default", "xlib")
_LOCAL_DISPLAY = re.compile(r"^(?:unix)?:(\d+)(?:\.(\d+))?$")


def capture(
    display: str, xauthority: str, path: str | os.PathLike[str], window: int | None = None
) -> tuple[int, int]:
    """Write a PNG of ``display`` (or of the window ``window`` on it) to ``path``.

    Returns the image's (width, height). Raises ``ScreenshotError`` with one line: no such
    window, display not answering, cookie refused, mss not installed, file not writable.
    """
    if window is not None and not 0 < window < 1 << 32:
        raise ScreenshotError(f"{window} is not an X window id")
    try:
        import mss.tools
        from mss.exception import ScreenShotError
    except ImportError as exc:
        raise ScreenshotError(
            f"screenshots need the mss package ({exc}); install it with pip install mss"
        ) from exc
    _check_cookie(xauthority)
    failures: list[str] = []
    region: dict[str, int] | None = None
    for backend in _BACKENDS:
        try:
            with _connect(display, xauthority, backend) as grabber:
                if region is None:
                    screen = dict(grabber.monitors[0])
                    region = screen
                    if window is not None:
                        region = _window_region(display, xauthority, window, screen)
                image = grabber.grab(region)
                break
        except ScreenShotError as exc:
            failures.append(f"mss's {backend} backend: {exc}")
            refused = _why_refused(display, xauthority)  # the next backend would be, too
            if refused is not None:
                raise ScreenshotError(refused) from exc
    else:
        said = "; ".join(failures)
        if _answers(display):
            raise ScreenshotError(
                f"display {display} accepts our cookie but mss could not capture it ({said})"
            )
        raise ScreenshotError(f"cannot capture display {display}: {said}")
    try:
        # Level 1: a screenshot of a test is read once; speed matters more than bytes.
        mss.tools.to_png(image.rgb, image.size, level=1, output=os.fspath(path))
    except OSError as exc:
        raise ScreenshotError(
            f"cannot write the screenshot to {os.fspath(path)}: {exc.strerror or exc}"
        ) from exc
    return image.width, image.height


def _connect(display: str, xauthority: str, backend: str) -> MSS:
    from mss import MSS

    with _ENVIRON_LOCK:
        saved = os.environ.get("XAUTHORITY")
        os.environ["XAUTHORITY"] = xauthority
        try:
            return MSS(display=display, backend=backend)
        except Exception as exc:
            _close_half_built(exc)
            raise
        finally:
            if saved is None:
                del os.environ["XAUTHORITY"]
            else:
                os.environ["XAUTHORITY"] = saved


def _close_half_built(exc: BaseException) -> None:
    """Close the connection of a backend whose constructor failed after connecting (mss 10.2's
    XCB backend checks the root window's visual only then, and drops the open connection:
    a leaked socket per capture of an Xvnc display). The half-built backend is the ``self``
    of a frame of the traceback; a subclass's close() may need what was never built (its
    shared memory), so each class's own close() is tried, most derived first, until one
    succeeds."""
    from mss.base import MSSImplementation
    from mss.exception import ScreenShotError

    trace = exc.__traceback__
    while trace is not None:
        half_built = trace.tb_frame.f_locals.get("self")
        trace = trace.tb_next
        if not isinstance(half_built, MSSImplementation):
            continue
        for cls in type(half_built).__mro__:
            close = cls.__dict__.get("close")
            try:
                if close is not None:
                    close(half_built)
                    break
            except (AttributeError, ScreenShotError):  # of a part never built
                continue
        return


def _check_cookie(xauthority: str) -> None:
    try:
        with open(xauthority, "rb") as cookie:
            cookie.read(1)
    except OSError as exc:
        raise ScreenshotError(
            f"cannot read the cookie file {xauthority}: {exc.strerror or exc}"
        ) from exc


def _answers(display: str) -> bool | None:
    """Whether a local display's socket accepts a connection (None: not a local display)."""
    match = _LOCAL_DISPLAY.match(display)
    if match is None:
        return None
    for address in (f"\0/tmp/.X11-unix/X{match[1]}", f"/tmp/.X11-unix/X{match[1]}"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(2.0)
            try:
                probe.connect(address)
                return True
            except OSError:
                continue
    return False


def _why_refused(display: str, xauthority: str) -> str | None:
    """Why a local display refuses us, checked: nothing listens, or its answer to an X11
    connection setup with our cookie was a refusal (mss says "cannot connect" for every
    cause). None when it accepts us, or is not a local display we can ask."""
    answers = _answers(display)
    if answers is False:
        return f"display {display} is not answering: no X server listens on it"
    if not answers:
        return None
    from ..launch.check import Refusal, handshake, parse_display, read_cookie

    try:
        number = parse_display(display)
        handshake(number, read_cookie(xauthority, number), time.monotonic() + 5)
    except Refusal as refusal:
        said = str(refusal).rstrip(".")
        if "refused our X11 connection" in said:
            return (
                f"display {display} refused our connection with the cookie in {xauthority}: "
                f"{said.partition('connection: ')[2]}"
            )
        return f"cannot capture display {display}: {said}"
    return None


def _window_region(
    display: str, xauthority: str, window: int, screen: dict[str, int]
) -> dict[str, int]:
    """The window's on-screen rectangle, clipped to the screen, from xwininfo."""
    xwininfo = shutil.which("xwininfo")
    if xwininfo is None:
        raise ScreenshotError(
            "window screenshots need xwininfo, which is not installed "
            "(Debian: apt-get install x11-utils)"
        )
    env = {**os.environ, "DISPLAY": display, "XAUTHORITY": xauthority}
    try:
        done = subprocess.run(
            [xwininfo, "-id", str(window)],
            env=env,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ScreenshotError(
            f"display {display} did not say where window {window:#x} is within 10 s"
        ) from exc
    facts = dict(line.strip().split(":", 1) for line in done.stdout.splitlines() if ":" in line)
    if done.returncode != 0 or "Width" not in facts:
        if (
            "No such window" in done.stderr
            or "BadWindow" in done.stderr
            or "Bad Drawable" in done.stderr
        ):
            raise ScreenshotError(f"no window {window:#x} on display {display}")
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ScreenshotError(
            f"xwininfo could not find window {window:#x} on display {display}: {last}"
        )
    if facts.get("Map State", "").strip() != "IsViewable":
        raise ScreenshotError(
            f"window {window:#x} on display {display} is not visible "
            f"(map state {facts.get('Map State', '?').strip()})"
        )
    left = max(int(facts["Absolute upper-left X"]), screen["left"])
    top = max(int(facts["Absolute upper-left Y"]), screen["top"])
    right = min(
        int(facts["Absolute upper-left X"]) + int(facts["Width"]), screen["left"] + screen["width"]
    )
    bottom = min(
        int(facts["Absolute upper-left Y"]) + int(facts["Height"]), screen["top"] + screen["height"]
    )
    if right <= left or bottom <= top:
        raise ScreenshotError(f"window {window:#x} on display {display} is off the screen")
    return {"left": left, "top": top, "width": right - left, "height": bottom - top}
