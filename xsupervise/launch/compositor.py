"""The xwayland profile's compositor: a headless weston that Xwayland connects to.

weston (``--backend=headless-backend.so``, the geometry as its output's size, the kiosk shell:
Xwayland's root window fills the output) is started before the server, with the same spawn()
(own process group, death signal), its output in the session's log and a private
XDG_RUNTIME_DIR under the session's directory. It is ready once its Wayland socket accepts a
connection: we wait for the socket to be created (inotify, no polling) and connect to it
(companion.until_listening).
The server then runs with WAYLAND_DISPLAY pointing at it; XServer stops weston after the
server (Xwayland first, then its compositor) and kills it with the server's teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from ..host import errors
from ..host.log import child_environment
from ..host.paths import check_socket_path, ensure_private_dir, remove_file
from .companion import until_listening
from .process import Child, describe_status, spawn

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..host.processes import Steps
    from .server import SessionFiles
    from .settings import Settings

SOCKET = "wayland-0"


class Companion:
    """A process a server needs running first (see launch/compositor.py): ``start_steps`` returns it
    ready; it is stopped after the server (XServer.companion)."""

    def start_steps(self, settings: Settings, files: SessionFiles) -> Steps[Child]:
        raise NotImplementedError


class Weston(Companion):
    def __init__(self, width: int, height: int, directory: str):
        self.width, self.height = width, height
        self.runtime = os.path.join(directory, "wayland")
        check_socket_path(os.path.join(self.runtime, SOCKET), "weston's Wayland socket")

    def argv(self) -> list[str]:
        return [
            "weston",
            "--backend=headless-backend.so",
            f"--width={self.width}",
            f"--height={self.height}",
            "--shell=kiosk-shell.so",
            f"--socket={SOCKET}",
            "--no-config",
            "--idle-time=0",
        ]

    def client_env(self) -> dict[str, str]:
        return {"XDG_RUNTIME_DIR": self.runtime, "WAYLAND_DISPLAY": SOCKET}

    def start_steps(self, settings: Settings, files: SessionFiles) -> Steps[Child]:
        ensure_private_dir(self.runtime)
        path = os.path.join(self.runtime, SOCKET)
        for stale in (path, path + ".lock"):  # a previous weston of this session's, killed
            remove_file(stale)
        weston = self._spawn(files)
        deadline = weston.spawned_at + settings.displayfd_timeout
        try:
            yield from until_listening(weston, path, deadline)
        except (ChildProcessError, TimeoutError) as exc:
            status = yield from weston.stop_steps(settings.kill_grace)
            raise self._error(weston, exc, status, settings, files) from None
        except GeneratorExit:  # closed half-way: no more waiting is possible
            weston.signal(signal.SIGKILL)
            weston.reap_within(settings.kill_grace)
            raise
        except BaseException:
            yield from weston.stop_steps(settings.kill_grace)
            raise
        return weston

    def _spawn(self, files: SessionFiles) -> Child:
        env = child_environment(self.client_env())
        env.pop("WAYLAND_DISPLAY")  # weston's own: it must not nest into the caller's
        env.pop("DISPLAY", None)
        log_fd = os.open(files.log_path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        from .containment import choose

        files.spawns += 1  # weston gets a boundary of its own, as Xwayland does
        try:
            return spawn(
                self.argv(),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                boundary=choose(f"{files.token}-{files.spawns}"),
            )
        except OSError as exc:
            raise errors.ServerNotFound(
                f"the xwayland profile needs weston, which cannot be run ({exc.strerror}); "
                "install it (Debian: apt-get install weston)."
            ) from None
        finally:
            os.close(log_fd)

    def _error(
        self,
        weston: Child,
        exc: Exception,
        status: int,
        settings: Settings,
        files: SessionFiles,
    ) -> errors.StartError:
        from .server import read_output

        reason, tail = read_output(files.log_path)
        if isinstance(exc, TimeoutError):
            what = f"did not listen within {settings.displayfd_timeout:g} s"
            error: type[errors.StartError] = errors.ReadyTimeout
        else:
            what = f"{describe_status(status)} before it listened"
            error = errors.ServerExited
        return error(
            what,
            server="weston (the xwayland profile's compositor)",
            pid=weston.pid,
            elapsed=time.monotonic() - weston.spawned_at,
            server_reason=reason,
            stderr_tail=tail,
            hint="Check weston's output above; it needs headless-backend.so and kiosk-shell.so.",
        )
