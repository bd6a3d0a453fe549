"""Unix sockets, read from the kernel's tables: who holds a socket (the control socket's
path, a display number), and which display sockets are stale. Never by connecting.

The kernel's answer is ``/proc/net/unix`` (one reader, ``unix_sockets``): the listening
sockets bound to a path, and from ``/proc/PID/fd`` (``socket:[INODE]``) the processes that
hold them, as they are now.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator

from .paths import X11_UNIX_DIR, socket_path

# --- who holds a socket --------------------------------------------------------------------------
# The control socket: connecting to find out would be wrong twice over: when a socket unit
# holds the path, the connection socket-activates the service (bringing its displays back),
# and SO_PEERCRED names whoever called listen(), which for a socket unit is a daemon long dead
# (or its pid recycled). So: the listening sockets bound to the path (flag ``__SO_ACCEPTCON``)
# and the processes holding them. The lock file's holder comes from ``/proc/locks``.
#
# A display number: the processes holding its listening sockets, never by connecting or by
# SO_PEERCRED alone: SO_PEERCRED names whoever called listen(), which for a server that
# listened and then forked (daemonized) is a process long gone, its pid perhaps reused. The
# listening sockets are named ``/tmp/.X11-unix/X<n>`` (or the abstract ``@/tmp/.X11-unix/X<n>``).
# A process we may not look at is said to be one.

_ACCEPTCON = 0x10000  # /proc/net/unix Flags: a listening socket


def unix_sockets(listening_only: bool = True) -> dict[int, str]:
    """inode -> bound path (``@`` first for an abstract one) of the unix sockets of this
    network namespace that have a path, from ``/proc/net/unix``; with ``listening_only``,
    only those listening (flag ``__SO_ACCEPTCON``)."""
    found: dict[int, str] = {}
    with open("/proc/net/unix", "rb") as table:  # OSError: the caller says what it means
        next(table, None)  # the header
        for line in table:
            fields = line.rstrip(b"\n").split(None, 7)
            if len(fields) == 8 and (int(fields[3], 16) & _ACCEPTCON or not listening_only):
                found[int(fields[6])] = os.fsdecode(fields[7])
    return found


def listening_inodes(path: str) -> set[int]:
    """Socket inodes listening on ``path`` in this network namespace."""
    # The table holds the path as bound, which may name the same file through another
    # spelling (a symlinked /var/run -> /run): compare the real directory and the name.
    name, where = os.path.basename(path), _real_directory(path)
    return {
        inode
        for inode, bound in unix_sockets().items()
        if os.path.basename(bound) == name and _real_directory(bound) == where
    }


def _real_directory(path: str) -> str:
    return os.path.realpath(os.path.dirname(os.path.abspath(path)))


def _open_files(pid: int | str) -> Iterator[str]:
    """What the fds of ``pid`` point at (``socket:[INODE]``, a path...), as /proc says; nothing
    for a process that is gone or not ours to look at."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return
    for fd in fds:
        try:
            yield os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue


def holders(inodes: set[int]) -> list[int]:
    """Pids of the processes that have one of these sockets open (those we may look at)."""
    targets = {f"socket:[{inode}]" for inode in inodes}
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and any(link in targets for link in _open_files(entry.name)):
            pids.append(int(entry.name))
    return sorted(pids)


def lock_holder(path: str) -> int | None:
    """The pid holding an flock on the file ``path`` (from /proc/locks), or None."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    key = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        with open("/proc/locks") as table:
            for line in table:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == key:
                    return int(fields[4])
    except (OSError, ValueError):
        pass
    return None


def describe(pids: list[int]) -> str:
    """Who holds a listening socket, for a refusal line: systemd (a socket unit) by name."""
    parts = []
    for pid in pids:
        command = _command(pid)
        if pid == 1:
            parts.append(
                "systemd (PID 1) for a socket unit: see `systemctl status xsupervise.socket`"
            )
        elif os.path.basename(command.split(" ", 1)[0]) == "systemd" and "--user" in command:
            parts.append(
                f"your systemd user manager (pid {pid}) for a socket unit: see "
                "`systemctl --user status xsupervise.socket`"
            )
        else:
            parts.append(f"pid {pid} ({command})")
    if not parts:
        return (
            "a process we may not look at (another user's, or systemd's socket unit: see "
            "`systemctl status xsupervise.socket`)"
        )
    return " and ".join(parts)


_COMMAND_CHARS = 120
_X_PREFIX = socket_path(0)[:-1]  # "/tmp/.X11-unix/X"


def _x_sockets(listening_only: bool = True) -> dict[int, str]:
    """inode -> path of the X sockets (``/tmp/.X11-unix/X<n>``, or the abstract
    ``@/tmp/.X11-unix/X<n>``); none if the table cannot be read."""
    try:
        sockets = unix_sockets(listening_only)
    except OSError:
        return {}
    return {
        inode: path for inode, path in sockets.items() if path.lstrip("@").startswith(_X_PREFIX)
    }


def display_inodes(number: int) -> set[int]:
    """Inodes of the sockets listening as display ``number`` (path or abstract)."""
    names = {f"{_X_PREFIX}{number}", f"@{_X_PREFIX}{number}"}
    return {inode for inode, path in _x_sockets().items() if path in names}


def bound_abstract_displays() -> set[int]:
    """Display numbers whose abstract X socket is bound right now: if it is, display n is
    live, whatever the files say (it vanishes with the process)."""
    prefix = f"@{_X_PREFIX}"
    return {
        int(path[len(prefix) :])
        for path in unix_sockets(listening_only=False).values()
        if path.startswith(prefix) and path[len(prefix) :].isdigit()
    }


def displays_held_by(pids: set[int]) -> set[int]:
    """Display numbers whose socket *file* ``/tmp/.X11-unix/X<n>`` is bound by one of
    ``pids`` (listening, or about to): what a server holds before it has told us its number."""
    numbers = {
        f"socket:[{inode}]": int(path[len(_X_PREFIX) :])
        for inode, path in _x_sockets(listening_only=False).items()
        if path.startswith(_X_PREFIX) and path[len(_X_PREFIX) :].isdigit()
    }
    return {numbers[link] for pid in pids for link in _open_files(pid) if link in numbers}


def _user(pid: int) -> str:
    import pwd

    try:
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return "?"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _command(pid: int) -> str:
    """Its command line, shortened for a one-line message."""
    import psutil

    try:
        process = psutil.Process(pid)
        command = " ".join(process.cmdline()) or process.name()
    except psutil.Error:
        return "?"
    if len(command) > _COMMAND_CHARS:
        command = command[: _COMMAND_CHARS - 3] + "..."
    return command


def started_by(pid: int, ancestor: int) -> bool:
    """``ancestor`` is among ``pid``'s living ancestors (its parent, the parent's parent...)."""
    import psutil

    try:
        return any(parent.pid == ancestor for parent in psutil.Process(pid).parents())
    except psutil.Error:
        return False


def describe_process(pid: int) -> str:
    """'pid 123 (user alice: Xvfb :5 -nolisten tcp)'."""
    return f"pid {pid} (user {_user(pid)}: {_command(pid)})"


def _carries(pid: int, argument: str) -> bool:
    """``argument`` is one of ``pid``'s command-line arguments."""
    import psutil

    try:
        return argument in psutil.Process(pid).cmdline()
    except psutil.Error:
        return False


def who_serves(
    number: int,
    our_server: int | None = None,
    our_cookie: str | None = None,
    in_our_group: Callable[[int], bool] | None = None,
) -> tuple[str, bool]:
    """(who holds display ``number``'s listening sockets, as words; whether one of them is
    an X server ours put in the background: started by ``our_server``, or given our
    session's cookie file ``our_cookie`` (a path nobody else knows; what a launcher that
    exited passed on to the X server it left behind), and not ``in_our_group`` (our server
    itself, or a wrapper's server in its group, serving where we did not look for it)).
    Says so when nobody we may look at holds them."""
    inodes = display_inodes(number)
    if not inodes:
        return "a process that has gone since (nothing listens as that display now)", False
    pids = holders(inodes)
    if not pids:
        return (
            "a process we may not look at (another user's; as root, `ss -xlp` names it)",
            False,
        )
    # Described first: a holder found ours below was alive (and described) a moment before,
    # so the line never names ours with a command line it could not read (it may be exiting).
    described = " and ".join(describe_process(pid) for pid in pids)
    ours = any(
        not (in_our_group is not None and in_our_group(pid))
        and (
            (our_server is not None and started_by(pid, our_server))
            or (our_cookie is not None and _carries(pid, our_cookie))
        )
        for pid in pids
    )
    return described, ours


def stop_holders(number: int, since: int | None, grace: float = 2.0) -> None:
    """Stop (TERM, grace, KILL, each pinned) what serves display ``number`` and started no
    earlier than ``since``: an X server our server put in the background (see who_serves)."""
    from .processes import start_ticks, terminate_all

    found = [
        (pid, ticks)
        for pid in holders(display_inodes(number))
        if (ticks := start_ticks(pid)) is not None and (since is None or ticks >= since)
    ]
    terminate_all(found, grace)


# --- stale display sockets -----------------------------------------------------------------------
# Is a display number served by a live X server? Decided from the kernel, not from files.
#
# On Linux an X server also listens on the abstract socket ``@/tmp/.X11-unix/X<n>``, which
# vanishes with the process: if it is bound, display n is live, whatever the files say.


def remove_dead_socket(
    number: int, inode: int | None, spawned_at_wall: float | None = None
) -> bool:
    """Remove /tmp/.X11-unix/X<number> after *our* server died without removing it (SIGKILL).

    Only a socket file we own (as root: or our server's), that nobody serves, and that is the
    very file our server made:
    the inode we saw when we verified it, or (if it never got that far) one created after we
    spawned the server. Never follows a symlink. Returns True if it removed the file.
    """
    path = socket_path(number)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(info.st_mode):
        return False
    # Ours; or, as root, the very file our server made (the inode we verified): a server that
    # changed its uid (setuid, setpriv) made it as that user.
    if info.st_uid != os.getuid() and not (os.getuid() == 0 and inode is not None):
        return False
    if inode is not None:
        if info.st_ino != inode:
            return False
    elif spawned_at_wall is None or info.st_ctime < spawned_at_wall - 1:
        return False
    if number in bound_abstract_displays():
        return False
    try:
        dir_fd = os.open(X11_UNIX_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return unlink_if_same(dir_fd, os.path.basename(path), info.st_ino, number)
    except OSError:  # gone meanwhile, or not ours to move: not removed, nothing else to do
        return False
    finally:
        os.close(dir_fd)


def unlink_if_same(dir_fd: int, name: str, inode: int, display: int | None = None) -> bool:
    """Unlink ``name`` (in ``dir_fd``) only if it is still the file ``inode`` and, with
    ``display``, no X server serves that display now.

    A stat, then an unlink, would remove a file a new server made in between: a pool's next
    server on a dead one's number lost its socket file that way, and our check of it failed.
    So the name is renamed aside first (rename takes whatever is there at that instant, and
    the decision is about that very file), then judged. A file that is not the one we judged
    goes back at once, by link(), which never replaces a file made in the meantime; for that
    instant its name is missing (a client connecting to the file then retries, or uses the
    abstract socket). The aside name is random: nobody can plant something there first.

    An inode number is no identity on its own: on ext4 a new server's socket file, made
    after the dead one's was unlinked, may get the same number (a pool's refill lost its
    new server's file that way). So, with ``display``, where something serves that display
    now (an X server binds its abstract socket before its file), the file aside is asked
    too: one that accepts a connection is a live server's, and goes back. Raises OSError
    (FileNotFoundError: the name is gone; PermissionError: not ours to move)."""
    aside = f".xsupervise-aside-{os.urandom(8).hex()}"
    os.rename(name, aside, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    try:
        same = os.stat(aside, dir_fd=dir_fd, follow_symlinks=False).st_ino == inode
    except OSError:
        same = False
    if same and display is not None and display in bound_abstract_displays():
        same = not _accepts(f"/proc/self/fd/{dir_fd}/{aside}")
    if not same:
        try:
            os.link(aside, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            pass  # a third file took the name meanwhile: it stays; so does this one, aside
        else:
            os.unlink(aside, dir_fd=dir_fd)
        return False
    os.unlink(aside, dir_fd=dir_fd)
    return True


def _accepts(path: str) -> bool:
    """Whether a listening socket is bound to the socket file ``path`` (a connection is made
    and closed at once; one that would wait counts as listening)."""
    import socket

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        probe.connect(path)
    except BlockingIOError:  # a full listen queue: someone listens
        return True
    except OSError:  # ECONNREFUSED: a dead server's file
        return False
    finally:
        probe.close()
    return True


# -- `xsupervise clean` ----------------------------------------------------------------------

# fmt: off
X_SERVER_NAMES = {"X", "Xorg", "Xvfb", "Xephyr", "Xvnc", "Xtigervnc", "Xwayland", "Xnest",
                  "Xdummy", "Xpra", "xpra"}
# fmt: on
# A socket file this young may belong to a server that is still setting up its listeners.
YOUNG_SECONDS = 2.0


class Entry:
    """One file in /tmp/.X11-unix or /tmp, and what clean decided about it."""

    __slots__ = ("action", "display", "inode", "kind", "owner_uid", "path", "reason", "verdict")

    def __init__(self, path: str, kind: str, display: int, info: os.stat_result):
        self.path, self.kind, self.display = path, kind, display
        self.owner_uid, self.inode = info.st_uid, info.st_ino
        self.verdict = "live"  # live, stale, inaccessible, suspicious
        self.reason = ""
        self.action = "none"  # none, removed, would-remove, failed

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "kind": self.kind,
            "display": self.display,
            "owner": owner_name(self.owner_uid),
            "owner_uid": self.owner_uid,
            "verdict": self.verdict,
            "reason": self.reason,
            "action": self.action,
        }

    def line(self) -> str:
        what = {"removed": "removed", "would-remove": "would remove", "failed": "could not remove"}
        head = what.get(self.action, self.verdict)
        return f"{head:13} {self.path}  ({self.reason}; owner {owner_name(self.owner_uid)})"


def owner_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def check_shared_dir(path: str) -> str | None:
    """Why we refuse to clean in ``path`` (it must be a root-owned sticky directory), or None."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None  # nothing to clean
    if not stat.S_ISDIR(info.st_mode):
        return f"{path} is not a directory (a symlink?)"
    if info.st_uid != 0:
        return (
            f"{path} is owned by {owner_name(info.st_uid)}, not root: someone may have planted it"
        )
    if stat.S_IMODE(info.st_mode) & 0o022 and not info.st_mode & stat.S_ISVTX:
        return f"{path} is writable by others but not sticky: anyone could swap its files"
    return None


def _connect_succeeds(path: str) -> bool:
    import socket

    probe = socket.socket(
        socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    )
    try:
        probe.connect(path)
        return True
    except BlockingIOError:
        return True  # listening, merely busy
    except OSError:
        return False
    finally:
        probe.close()


def _read_lock_pid(dir_fd: int, name: str, expected_inode: int) -> int | None:
    """The pid in a lock file, read without following links, from the very inode we judged."""
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_ino != expected_inode:
            return None
        text = os.read(fd, 64).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    return int(text) if text.isdigit() else None


def _is_x_server(pid: int) -> bool:
    import psutil

    try:
        process = psutil.Process(pid)
        names = {process.name()}
        argv = process.cmdline()
        if argv:
            names.add(os.path.basename(argv[0]))
        return bool(names & X_SERVER_NAMES)
    except psutil.Error:
        return False


def _display_of(name: str, prefix: str, suffix: str = "") -> int | None:
    if not (name.startswith(prefix) and name.endswith(suffix)):
        return None
    digits = name[len(prefix) : len(name) - len(suffix)]
    return int(digits) if digits.isdigit() and len(digits) <= 6 else None


def scan(
    x11_dir: str = X11_UNIX_DIR, lock_dir: str = "/tmp", now: float | None = None
) -> list[Entry]:
    """Judge every X<n> socket file and .X<n>-lock file. Changes nothing."""
    import time

    now = time.time() if now is None else now
    bound = bound_abstract_displays()
    entries: list[Entry] = []
    for directory, prefix, suffix, kind in (
        (x11_dir, "X", "", "socket"),
        (lock_dir, ".X", "-lock", "lock"),
    ):
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            continue
        for name in sorted(names):
            number = _display_of(name, prefix, suffix)
            if number is None:
                continue
            path = os.path.join(directory, name)
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            entry = Entry(path, kind, number, info)
            entries.append(entry)
            _judge(entry, info, bound, now, directory, name)
    return entries


def _judge(
    entry: Entry, info: os.stat_result, bound: set[int], now: float, directory: str, name: str
) -> None:
    number = entry.display
    if stat.S_ISLNK(info.st_mode):
        entry.verdict, entry.reason = "suspicious", "a symlink, never followed; left alone"
        return
    if number in bound:
        entry.reason = f"display :{number} is served (abstract socket bound)"
        return
    if entry.kind == "socket":
        if not stat.S_ISSOCK(info.st_mode):
            entry.verdict, entry.reason = "suspicious", "not a socket; left alone"
            return
        if now - info.st_mtime < YOUNG_SECONDS:
            entry.reason = "created moments ago; a server may still be starting"
            return
        if _connect_succeeds(entry.path):
            entry.reason = "a server accepts connections on it"
            return
        entry.verdict, entry.reason = "stale", "socket with no server behind it"
    else:
        if not stat.S_ISREG(info.st_mode):
            entry.verdict, entry.reason = "suspicious", "not a regular file; left alone"
            return
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            pid = _read_lock_pid(dir_fd, name, info.st_ino)
        finally:
            os.close(dir_fd)
        if pid is not None and _is_x_server(pid):
            entry.reason = f"lock held by X server pid {pid}"
            return
        entry.verdict = "stale"
        entry.reason = (
            f"lock of pid {pid}, which is gone or not an X server"
            if pid is not None
            else "lock file without a readable pid"
        )
    if entry.owner_uid != os.getuid() and os.getuid() != 0:
        entry.verdict = "inaccessible"
        entry.reason += (
            f"; only {owner_name(entry.owner_uid)} or root may remove it: run "
            f"'sudo xsupervise clean' or 'sudo rm {entry.path}'"
        )


def clean(entries: list[Entry], dry_run: bool) -> None:
    """Remove the stale entries we may remove: unlinkat() in the directory itself, and only
    if the name still refers to the inode we judged (a file swapped in meanwhile is spared)."""
    stale = [entry for entry in entries if entry.verdict == "stale"]
    if dry_run:
        for entry in stale:
            entry.action = "would-remove"
        return
    bound = bound_abstract_displays()  # once more, just before acting
    for entry in stale:
        if entry.display in bound:
            entry.verdict, entry.reason = "live", "a server took the display meanwhile"
            continue
        directory, name = os.path.split(entry.path)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if not unlink_if_same(dir_fd, name, entry.inode, entry.display):
                entry.verdict, entry.reason = "live", "replaced by another file meanwhile"
                continue
            entry.action = "removed"
        except FileNotFoundError:
            entry.action = "removed"  # someone else did it
        except OSError as exc:
            entry.action = "failed"
            entry.reason += f"; {exc.strerror}"
        finally:
            os.close(dir_fd)


def clean_own_quietly() -> None:
    """What `start` does first: remove our own stale entries (a SIGKILLed server's socket)."""
    if check_shared_dir(X11_UNIX_DIR) is not None:
        return
    entries = [entry for entry in scan() if entry.owner_uid == os.getuid()]
    clean(entries, dry_run=False)
