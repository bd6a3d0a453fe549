"""The displays of a pytest run: mostly one run by an ``xsupervise start --json
--exit-with-parent`` child process.

Why a child and not an in-process ``Display``: the server dies with us either way
(PR_SET_PDEATHSIG), but only a supervisor that outlives us can remove the session's files
(cookie, record, socket) when we are SIGKILLed. The child gets SIGTERM from the kernel when
the thread that started it ends, and tears down as on any SIGTERM. The price is one more
Python start-up per display (see bench/screenshot.py for the figure).
"""

from __future__ import annotations

import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import IO, Any, Protocol

from ..host.errors import EnvironmentProblem, UsageError, XSuperviseError

__all__ = ["ChildDisplay", "Desktop", "Leased", "OwnedDisplay", "Shown"]


class Shown(Protocol):
    """What a screenshot needs of a display."""

    @property
    def display(self) -> str: ...
    @property
    def xauthority(self) -> str: ...


class OwnedDisplay(Shown, Protocol):
    """A display the run holds, and gives back with ``stop()``."""

    @property
    def env(self) -> dict[str, str]: ...
    def stop(self) -> None: ...


# Beyond the server's own --timeout: a start may first wait out a restart backoff (up to
# backoff_max, 60 s by default) when earlier starts of the same display kind failed.
_START_DEADLINE = 120.0
_STOP_DEADLINE = 15.0


class ChildDisplay:
    """``start()`` returns once the child printed its ready display; ``stop()`` ends it.

    Start it from a thread that outlives it (pytest's main thread): the child stops when
    the thread that spawned it ends.
    """

    def __init__(
        self, *, screen: str | None = None, server: str | None = None, timeout: float | None = None
    ) -> None:
        self._argv = [
            sys.executable,
            "-m",
            "xsupervise",
            "start",
            ":auto",
            "--json",
            "--exit-with-parent",
            "--no-wait",
        ]
        for flag, value in (("--screen", screen), ("--server", server), ("--timeout", timeout)):
            if value is not None:
                self._argv += [flag, str(value)]
        self._child: subprocess.Popen[bytes] | None = None
        self._facts: dict[str, Any] = {}

    def __repr__(self) -> str:
        if not self._facts:
            return "<ChildDisplay not started>"
        return (
            f"<ChildDisplay {self.display} served by pid {self.server_pid}, "
            f"supervised by pid {self.supervisor_pid}>"
        )

    def start(self) -> ChildDisplay:
        """Start the child and wait for its JSON line; raise an XSuperviseError on failure:
        EnvironmentProblem (exit 5: no X server, no runtime directory), UsageError (exit 2:
        a bad setting), XSuperviseError otherwise, each with the child's one-line reason."""
        if self._child is not None:
            raise RuntimeError("this ChildDisplay is already started; use a new one")
        # An unnamed file, so that nothing is left behind if we are SIGKILLed; a pipe could
        # fill up with restart messages nobody reads.
        with tempfile.TemporaryFile() as errors:
            try:
                child = subprocess.Popen(
                    self._argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors
                )
            except OSError as exc:
                raise EnvironmentProblem(f"cannot run {self._argv[0]}: {exc}") from exc
            self._child = child
            assert child.stdout is not None
            line = _read_line(child.stdout, _START_DEADLINE)
            if line:
                try:
                    self._facts = json.loads(line)
                    return self
                except ValueError:
                    self._stop_child()
                    raise XSuperviseError(
                        f"xsupervise start printed {line!r}, not its JSON line"
                    ) from None
            timed_out = line is None
            self._stop_child()
            errors.seek(0)
            why = errors.read().decode(errors="replace").strip().splitlines()
        code = child.returncode
        reason = why[-1] if why else f"xsupervise start exited with status {code}"
        reason = reason.removeprefix("xsupervise: ")
        if timed_out:
            reason = f"xsupervise start printed no display within {_START_DEADLINE:.0f} s"
        raise {5: EnvironmentProblem, 2: UsageError}.get(code or 0, XSuperviseError)(reason)

    def stop(self) -> None:
        """SIGTERM the child and wait for its teardown (KILL if it hangs). Idempotent."""
        if self._child is not None and self._child.returncode is None:
            self._stop_child()

    def _stop_child(self) -> None:
        child = self._child
        assert child is not None
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(_STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            # Its server still dies with it (PDEATHSIG); only its files may remain.
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()

    @property
    def display(self) -> str:
        """The DISPLAY value, e.g. ':5'."""
        return str(self._facts["display"])

    @property
    def xauthority(self) -> str:
        return str(self._facts["xauthority"])

    @property
    def env(self) -> dict[str, str]:
        """DISPLAY and XAUTHORITY, to merge into a child's environment."""
        return {"DISPLAY": self.display, "XAUTHORITY": self.xauthority}

    @property
    def server_pid(self) -> int:
        return int(self._facts["server_pid"])

    @property
    def supervisor_pid(self) -> int:
        return int(self._facts["supervisor_pid"])

    @property
    def screen(self) -> str:
        return str(self._facts.get("screen", ""))


def _read_line(stream: IO[bytes], timeout: float) -> bytes | None:
    """One line; b"" at EOF, None after ``timeout``: waits on the pipe, not on a clock."""
    deadline = time.monotonic() + timeout
    chunks = b""
    fd = stream.fileno()
    while not chunks.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return b""
        chunks += chunk
    return chunks


class Desktop:
    """The display pytest was given (--no-xdisplay): DISPLAY and its usual cookie file."""

    display = property(lambda self: os.environ["DISPLAY"])
    xauthority = property(
        lambda self: os.environ.get("XAUTHORITY") or os.path.expanduser("~/.Xauthority")
    )


class Leased:
    """A display leased from a pool of the daemon, held while the connection is open."""

    def __init__(self, client: Any, lease: Mapping[str, Any]) -> None:
        self._client = client
        self._lease = lease  # a client.Lease
        self.display: str = lease["display"]
        self.xauthority: str = lease["xauthority"]
        self.server_pid: int | None = lease.get("server_pid")
        self.env = {"DISPLAY": self.display, "XAUTHORITY": self.xauthority}

    def stop(self) -> None:
        release = getattr(self._lease, "release", None)
        if release is not None:
            release()  # the daemon destroys the display
        self._client.close()


def platform_problem() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"xsupervise runs X servers on Linux only (this is {sys.platform})"
    return None


def server_problem(server: str | None) -> str | None:
    """Whether the X server xsupervise would run is missing: flag > XSUPERVISE_SERVER >
    config file > Xvfb, as xsupervise resolves it. With a config file (which may name the
    server) and neither of the others, it cannot tell: None, and the start will say."""
    command = server or os.environ.get("XSUPERVISE_SERVER")
    if not command:
        home = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
        files = (os.path.join(home, "xsupervise", "config.toml"), "/etc/xsupervise/config.toml")
        if os.environ.get("XSUPERVISE_CONFIG") or any(map(os.path.exists, files)):
            return None
        command = "xvfb"
    try:
        program = shlex.split(command)[0]
    except (ValueError, IndexError):
        return None  # xsupervise names what is wrong with it
    from ..launch.profiles import PROFILES

    if program in PROFILES:  # a profile: its binary (xsupervise names a missing companion)
        if PROFILES[program].binary() is None:
            return f"server profile {program} needs {PROFILES[program].binaries[0]}, not installed"
        return None
    if shutil.which(program) is None:
        return f"X server {program!r} is not installed (not found on PATH nor as a file)"
    return None
