"""Where our files live: one object for the private runtime directory.

``$XDG_RUNTIME_DIR/xsupervise/`` when that variable names a usable directory (absolute,
a real directory, owned by us, mode 0700: pyxdg returns the variable unchecked, so we check).
Otherwise, and for root instead of logind's ``/run/user/0``: ``/run/xsupervise`` (the system
service's directory); for other users ``$XDG_CACHE_HOME/xsupervise/run-<host>`` with a
warning: a path under the user's own home, which no other user can create first, unlike any
name in the shared /tmp.

Inside it: ``sessions/<token>.json`` (a running session's record), ``<token>.xauth`` (its
cookie), ``<token>.log`` (its X server's output) and, for some server profiles, a directory
``<token>.d`` (see launch/profiles.py). Files are created 0600 with O_EXCL and
O_NOFOLLOW so that nothing planted there can be followed or reused.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable, Iterator, Mapping

from .errors import EnvironmentProblem, RuntimeDirError

SYSTEM_RUNTIME_DIR = "/run/xsupervise"
# pam_systemd gives a root login shell XDG_RUNTIME_DIR=/run/user/0: a directory logind removes
# at logout, and not the one the system service and the xsupervise@ units use. Root's displays
# are the system's, so root uses /run/xsupervise there too (and `list`, `reset` see them).
# Units of root's own user manager (INVOCATION_ID set) keep /run/user/0, their %t.
ROOT_LOGIN_RUNTIME_DIR = "/run/user/0"


def _warn(message: str) -> None:
    print(f"xsupervise: warning: {message}", file=sys.stderr, flush=True)


def _unfit_reason(path: str) -> str | None:
    """Why ``path`` cannot serve as XDG_RUNTIME_DIR, or None when it can."""
    if not os.path.isabs(path):
        return "is not an absolute path"
    try:
        info = os.lstat(path)
    except OSError as exc:
        return f"cannot be examined ({exc.strerror})"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory (or is a symlink)"
    if info.st_uid != os.getuid():
        return f"is owned by uid {info.st_uid}, not by us (uid {os.getuid()})"
    if stat.S_IMODE(info.st_mode) & 0o077:
        return f"has mode {stat.S_IMODE(info.st_mode):04o}, not 0700"
    return None


def ensure_private_dir(path: str) -> None:
    """Create ``path`` (0700) if needed and insist it is a real directory that only we use."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise RuntimeDirError(
            f"cannot create runtime directory {path}: {exc.strerror}; "
            "set XDG_RUNTIME_DIR to a private directory you own."
        ) from exc
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise RuntimeDirError(
            f"runtime directory {path} is not a directory (or is a symlink); "
            "remove it or set XDG_RUNTIME_DIR elsewhere."
        )
    if info.st_uid != os.getuid():
        raise RuntimeDirError(
            f"runtime directory {path} belongs to uid {info.st_uid}, not to us "
            f"(uid {os.getuid()}); remove it or set XDG_RUNTIME_DIR elsewhere."
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)  # ours, merely too open (e.g. an old umask): tighten it


class RuntimeDir:
    """The private directory of one user's xsupervise state. Tests point it at a temp dir."""

    def __init__(self, path: str):
        self.path = path
        self.sessions = os.path.join(path, "sessions")

    def __repr__(self) -> str:
        return f"RuntimeDir({self.path!r})"

    @classmethod
    def discover(
        cls, environ: Mapping[str, str] = os.environ, warn: Callable[[str], None] = _warn
    ) -> RuntimeDir:
        from xdg.BaseDirectory import get_runtime_dir, xdg_cache_home

        base: str | None
        try:
            base = environ["XDG_RUNTIME_DIR"] if environ is not os.environ else get_runtime_dir()
        except KeyError:
            base = None
        if (
            base
            and os.getuid() == 0
            and os.path.normpath(base) == ROOT_LOGIN_RUNTIME_DIR
            and "INVOCATION_ID" not in environ
        ):
            return cls.create(SYSTEM_RUNTIME_DIR)
        if base:
            reason = _unfit_reason(base)
            if reason is None:
                return cls.create(os.path.join(base, "xsupervise"))
            why = f"XDG_RUNTIME_DIR={base} {reason}"
        else:
            why = "XDG_RUNTIME_DIR is not set"
        if os.getuid() == 0:
            if base:
                warn(f"{why}; using {SYSTEM_RUNTIME_DIR}.")
            return cls.create(SYSTEM_RUNTIME_DIR)
        cache = environ.get("XDG_CACHE_HOME") or xdg_cache_home
        fallback = os.path.join(cache, "xsupervise", f"run-{os.uname().nodename}")
        warn(
            f"{why}; using {fallback}. Set XDG_RUNTIME_DIR to a private 0700 directory "
            "(systemd-logind does) to silence this."
        )
        try:
            os.makedirs(os.path.dirname(fallback), mode=0o700, exist_ok=True)
        except OSError as exc:
            raise RuntimeDirError(
                f"{why}, and the fallback {fallback} cannot be created "
                f"({exc.strerror}); set XDG_RUNTIME_DIR to a private 0700 "
                "directory you own."
            ) from None
        return cls.create(fallback)

    @classmethod
    def create(cls, path: str) -> RuntimeDir:
        ensure_private_dir(path)
        runtime = cls(path)
        ensure_private_dir(runtime.sessions)
        return runtime

    # -- per-session files -------------------------------------------------------------
    def record_path(self, token: str) -> str:
        return os.path.join(self.sessions, f"{token}.json")

    def auth_path(self, token: str) -> str:
        return os.path.join(self.sessions, f"{token}.xauth")

    def log_path(self, token: str) -> str:
        return os.path.join(self.sessions, f"{token}.log")

    def session_dir(self, token: str) -> str:
        """A server profile's files (xorg.conf, Xorg's log, the VNC socket, Wayland's runtime
        directory): see launch/profiles.py."""
        return os.path.join(self.sessions, f"{token}.d")

    def remove_session(self, token: str) -> None:
        """Remove every file of one session: record, cookie, log (whichever exist)."""
        for path in (self.record_path(token), self.auth_path(token), self.log_path(token)):
            remove_file(path)
        extra = self.session_dir(token)
        if os.path.isdir(extra) and not os.path.islink(extra):
            import shutil  # only sessions of a profile with files of its own have one

            shutil.rmtree(extra, ignore_errors=True)  # never follows a symlink inside

    def tokens(self) -> set[str]:
        """The tokens of every session file here (records, cookies, logs)."""
        try:
            names = os.listdir(self.sessions)
        except FileNotFoundError:
            return set()
        return {
            name.rsplit(".", 1)[0]
            for name in names
            if name.endswith((".json", ".xauth", ".log", ".d"))
        }

    def record_paths(self) -> Iterator[str]:
        try:
            names = os.listdir(self.sessions)
        except FileNotFoundError:
            return
        for name in sorted(names):
            if name.endswith(".json"):
                yield os.path.join(self.sessions, name)


SOCKET_NAME = "control.sock"  # the daemon's control socket, in the runtime directory
ENV_SOCKET = "XSUPERVISE_SOCKET"


def default_path(runtime: RuntimeDir, environ: Mapping[str, str] = os.environ) -> str:
    """The daemon's control socket: $XSUPERVISE_SOCKET, else control.sock in ``runtime``."""
    return environ.get(ENV_SOCKET) or os.path.join(runtime.path, SOCKET_NAME)


def new_token() -> str:
    """A fresh name for one session's files: our pid and start time (so that crash recovery
    can tell whether the process that made them is gone, even before it wrote a record) and
    32 random bits."""
    from .processes import start_ticks

    pid = os.getpid()
    return f"{pid}.{start_ticks(pid)}-{os.urandom(4).hex()}"


def token_owner(token: str) -> tuple[int, int] | None:
    """(pid, start ticks) of the process that made ``token``, or None if it is not ours."""
    owner, _, _ = token.partition("-")
    pid, _, ticks = owner.partition(".")
    return (int(pid), int(ticks)) if pid.isdigit() and ticks.isdigit() else None


def create_private_file(path: str, data: bytes = b"") -> int:
    """Create a new 0600 file (never an existing one, never through a symlink); return its fd."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if data:
            os.write(fd, data)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private_file(path: str, data: bytes) -> None:
    """Atomically replace ``path`` with ``data`` (write a fresh 0600 file, then rename)."""
    temporary = f"{path}.{os.getpid()}.tmp"
    remove_file(temporary)
    fd = create_private_file(temporary, data)
    os.close(fd)
    os.rename(temporary, path)


def remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


_SUN_PATH_MAX = 107  # bytes of a unix socket's path (sun_path is 108, with its NUL)


def check_socket_path(path: str, what: str) -> None:
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise EnvironmentProblem(
            f"{what} would be {path}, longer than a unix socket's path may be "
            f"({_SUN_PATH_MAX} bytes); point XDG_RUNTIME_DIR at a shorter directory."
        )


# -- where an X server's files live (not ours: every X server on this machine shares them) --
X11_UNIX_DIR = "/tmp/.X11-unix"


def which(program: str) -> str | None:
    """As shutil.which: the path of ``program`` (an executable file) on $PATH, or itself if
    it has a slash. Not shutil's, on the start path: importing shutil imports its compression
    modules, 2 ms of every `xsupervise run`."""
    if "/" in program:
        candidates = [program]
    else:
        path = os.environ.get("PATH")
        if path is None:
            path = os.confstr("CS_PATH") or os.defpath
        candidates = [os.path.join(folder, program) for folder in path.split(os.pathsep) if path]
    for candidate in candidates:
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def socket_path(number: int) -> str:
    """Display ``number``'s socket file (its abstract twin is ``@`` this path)."""
    return f"{X11_UNIX_DIR}/X{number}"


def lock_path(number: int) -> str:
    return f"/tmp/.X{number}-lock"


def lock_file(path: str, wait: bool = True) -> int:
    """Open ``path`` (made 0600 if absent, never through a symlink) and flock it; its fd,
    which holds the lock until closed (the kernel releases it when the holder dies, so a
    SIGKILL cannot wedge it). A holder may remove the lock file when it is done with it
    (the ledger of a clean history, a daemon's clean stop): if the inode we locked is no longer
    the file, we retry. ``wait=False``: BlockingIOError while another process holds it.
    OSError if it cannot be opened."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:
                current: int | None = os.lstat(path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
